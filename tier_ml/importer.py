"""Import a retailer's export (their columns, their formats) as canonical order events.

Why: exports from shop systems, tills and marketplaces name their columns as they
like, write dates as ``03.02.2025`` or ``2/3/2025 4:05 PM`` and amounts as
``$1,234.50`` or ``1.234,50 €``, often have no event ids, no event types and no
currency, and mark returns with negative totals or a type column. This module
maps such a file onto the nine canonical fields of TIER_RULES.md:

- ``mapping`` names the source column of each canonical field; fields whose name
  already is a source column are taken as they are;
- times: ISO 8601 and date-only values, ``YYYY/MM/DD``, ``DD.MM.YYYY``,
  ``MM/DD/YYYY`` (or ``DD/MM/YYYY`` with ``day_first``), ``DD-MM-YYYY``, month
  names (``5 Jan 2025``, ``Jan 5, 2025``), each with an optional time (24 h or
  AM/PM), and epoch seconds or milliseconds; or exactly one ``date_format``
  (``strptime`` codes, or ``iso`` for canonical ISO 8601 only). Times without an
  offset are in ``timezone`` (UTC by default);
- amounts: currency symbols and codes, thousands separators (``,`` or, with
  ``decimal_comma``, ``.``; spaces and apostrophes always), minus signs in front,
  behind or as parentheses. A symbol gives the currency when the export has no
  currency column and no default is set;
- defaults for currency, channel and region when the export has none;
- rows without ``event_id`` get a stable generated id: a hash of the row's
  canonical content and its occurrence number among identical rows, so importing
  the same file again gives the same ids; rows without ``event_type`` are
  ``placed`` orders, and rows without ``order_id`` are orders of their own;
- returns: with ``returns="negative"`` a negative amount is a refund of its
  absolute value; with ``return_column``/``return_values`` rows whose column holds
  one of the values are refunds;
- order lines: with ``quantity`` the amount column holds unit prices (amount =
  price x quantity), and with ``lines`` the lines of one order are summed into one
  event (``_order_lines``), since most shop exports have a row per line, not per order
  (a rejected line is left out of its order's sum).

Rows that cannot be converted are rejected with a reason (the codes of
:class:`tier_ml.events.RejectReason`) and a detail, never dropped silently; every
other row comes out. A row with text beyond the header's last column (an unquoted
separator shifted its values) is ``malformed_row``; empty fields there are ignored.
Cross-row checks (replays, duplicate orders, refunds of unknown orders) stay with
:func:`tier_ml.events.validate`, as for any events file.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from tier_ml.events import AMOUNT_PATTERN, EVENT_FIELDS, TIME_PATTERN, RejectReason, extended_time
from tier_ml.policy import Policy
from tier_ml.simulate import write_events, write_parquet

REQUIRED_MAPPINGS = ("customer_id", "occurred_at")
CURRENCY_SYMBOLS = {"$": "USD", "US$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "CHF": "CHF"}
EVENT_TYPE_WORDS = {
    "placed": "placed",
    "order": "placed",
    "sale": "placed",
    "purchase": "placed",
    "refunded": "refunded",
    "refund": "refunded",
    "return": "refunded",
    "returned": "refunded",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "cancel": "cancelled",
    "cancellation": "cancelled",
    "void": "cancelled",
}
REJECT_COLUMNS = ("row", "reason", "detail")


class ExportError(ValueError):
    """An export that cannot be imported at all: unreadable, or a mapping that does not fit."""


@dataclass(frozen=True)
class ImportOptions:
    """How to read one export. ``mapping``: canonical field → source column."""

    mapping: dict[str, str] = field(default_factory=dict)
    currency: str | None = None
    channel: str | None = None
    region: str | None = None
    date_format: str | None = None
    day_first: bool = False
    timezone: str = "UTC"
    decimal_comma: bool = False
    returns: Literal["none", "negative"] = "none"
    return_column: str | None = None
    return_values: tuple[str, ...] = ("return", "refund", "returned")
    quantity: str | None = None  # source column of quantities: the amount column is a unit price
    lines: bool = False  # rows are order lines: summed into one event per order (see _order_lines)
    #: (column, value) pairs: rows whose column holds the value (any case) are left out and
    #: counted, e.g. ("Financial Status", "voided") for orders that never counted as spend.
    skip: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ImportResult:
    """Canonical events (source order) and rejects (``row`` is the 1-based data row)."""

    events: pd.DataFrame
    rejects: pd.DataFrame
    rows: int
    #: What the import decided on its own that the user should know (dates read day first).
    notes: list[str] = field(default_factory=list)
    #: Rows left out by ``ImportOptions.skip`` (neither events nor rejects).
    skipped: int = 0

    def rejects_by_reason(self) -> dict[str, int]:
        return {
            str(k): int(v) for k, v in self.rejects["reason"].value_counts().sort_index().items()
        }


# --- reading ---------------------------------------------------------------------------------


def read_export(path: str | Path, encoding: str = "utf-8") -> pd.DataFrame:
    """A CSV (read as text in ``encoding``, so nothing is reinterpreted) or Parquet export.

    A byte order mark is skipped whatever the ``encoding``. Exports saved by Excel on
    Windows are often ``cp1252``: the error for text that is not UTF-8 says so.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    encoding = _codec_or_error(encoding)
    suffix = path.suffix.lower()
    try:
        if suffix in {".csv", ".txt", ".tsv"}:
            return _read_delimited(path, encoding)
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        hint = ""
        if encoding == "utf-8-sig":
            with path.open("rb") as handle:
                utf16 = handle.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
            hint = " (try --encoding utf-16)" if utf16 else " (saved by Excel on Windows? try --encoding cp1252)"
        raise ExportError(f"{path}: cannot read the export: it is not {exc.encoding} text{hint}") from None
    except Exception as exc:  # the parsers raise many types; the user needs one message
        raise ExportError(f"{path}: cannot read the export: {exc}") from None
    raise ExportError(f"{path}: unknown export format {suffix!r}; use .csv or .parquet")


#: The column of ``read_export``'s frame holding what a row has beyond the header's last
#: column (a NUL in the name: no export has such a column). ``convert`` rejects such rows
#: as ``malformed_row``, as the engines do with ``tier_ml.events.BEYOND_HEADER``.
BEYOND_COLUMN = "\0beyond_header"


def _read_delimited(path: Path, encoding: str) -> pd.DataFrame:
    """A text export with every field as text, and ``BEYOND_COLUMN``: the fields a row has
    after the header's last column, joined by the separator ("" for nearly every row).

    The columns are named, so a row with more fields than the header is read, not an
    error for the whole file; and an export that ends every line with a separator is
    not taken for one with an index column first (pandas' guess), which shifted every value.
    """
    separator, before = _separator(path, encoding)
    options = {"dtype": str, "keep_default_na": False, "sep": separator, "encoding": encoding}
    header = [str(name) for name in pd.read_csv(path, nrows=0, skiprows=before, **options).columns]
    while header and re.fullmatch(r"Unnamed: \d+", header[-1]):  # the header ends with a separator
        header.pop()
    extra = 1
    while True:
        names = [*header, *(f"{BEYOND_COLUMN}{n}" for n in range(extra))]
        try:
            frame = pd.read_csv(path, header=None, skiprows=before + 1, names=names, **options)
            break
        except pd.errors.ParserError as exc:  # a row with even more fields: name as many
            saw = re.search(r"Expected \d+ fields in line \d+, saw (\d+)", str(exc))
            if saw is None or int(saw.group(1)) <= len(names):
                raise
            extra = int(saw.group(1)) - len(header)
    beyond = frame[names[len(header):]].fillna("")
    text = beyond.iloc[:, 0].str.strip(" ")
    for column in beyond.columns[1:]:
        more = beyond[column].str.strip(" ")
        text = text.where(more == "", text + options["sep"] + more)
    return frame[header].assign(**{BEYOND_COLUMN: text})


def _codec_or_error(encoding: str) -> str:
    """Python's name for the text ``encoding``; UTF-8 as ``utf-8-sig`` (a byte order mark is skipped)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ExportError(f"unknown --encoding {encoding!r} (e.g. utf-8, cp1252, latin-1)") from None
    return "utf-8-sig" if name == "utf-8" else name


def _separator(path: Path, encoding: str) -> tuple[str, int]:
    """The delimiter of a text export and the lines before its header: the most frequent of
    , ; tab | in the header line, or the one a first line ``sep=;`` names (Excel writes it)."""
    with path.open(encoding=encoding, errors="replace") as handle:
        header = handle.readline().lstrip("\ufeff")
        if (named := re.fullmatch(r"sep=(.)\s*", header)) is not None:
            return named.group(1), 1
    return max([",", ";", "\t", "|"], key=header.count), 0


#: Fields found only under their exact name: a POS export's ``Event Type`` (Payment,
#: Refund) is not the canonical event type, and would reject every sale.
EXACT_NAMES = frozenset({"event_type"})


def _field_name(column: str) -> str:
    """A column name as a canonical field would spell it: ``Order ID`` -> ``order_id``."""
    return re.sub(r"[\s\-]+", "_", column.strip()).lower()


def _no_such_column(option: str, columns: Iterable[object]) -> ExportError:
    """The error for an option naming a column the export does not have (listing those it has)."""
    return ExportError(f"{option}: no such column; the export has {[str(c) for c in columns]}")


def resolve_mapping(columns: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """Check a mapping against the export's columns; add fields named like a column (in any
    case, with spaces or dashes for underscores, when one column alone is named so; the
    event type by its exact name only)."""
    unknown = sorted(set(mapping) - set(EVENT_FIELDS))
    if unknown:
        raise ExportError(f"--map names unknown fields {unknown}; fields are {list(EVENT_FIELDS)}")
    missing = {name: column for name, column in mapping.items() if column not in columns}
    if missing:
        pairs = ", ".join(f"{name}={column}" for name, column in missing.items())
        raise _no_such_column(f"--map {pairs}", columns)
    resolved = dict(mapping)
    taken = set(mapping.values())
    for name in EVENT_FIELDS:
        if name in resolved:
            continue
        if name in columns:
            resolved[name] = name
            continue
        alike = [c for c in columns if c not in taken and _field_name(c) == name]
        if len(alike) == 1 and name not in EXACT_NAMES:  # "Currency", "Order ID", "customer-id"
            resolved[name] = alike[0]
    absent = [name for name in (*REQUIRED_MAPPINGS, "amount") if name not in resolved]
    if absent:
        raise ExportError(
            f"no column for {absent}: map them with --map FIELD=COLUMN; the export has {columns}"
        )
    return resolved


# --- values ------------------------------------------------------------------------------------


def _text(values: pd.Series) -> pd.Series:
    """Any column as trimmed text, '' for missing; integral floats without '.0'."""
    if isinstance(values.dtype, pd.StringDtype):
        return values.fillna("").str.strip()
    if pd.api.types.is_float_dtype(values.dtype):
        finite = values.dropna()
        if len(finite) and (finite == np.floor(finite)).all() and finite.abs().max() < 2**53:
            values = values.astype("Int64")
    text = values.astype(object).where(values.notna(), "")
    return text.astype(str).str.strip()


_FRACTION = r"(?:[.,]\d{1,9})?"
_CLOCK = rf"(?:[ T]\d{{1,2}}:\d{{2}}(?::\d{{2}}{_FRACTION})?(?: ?[AaPp][Mm])?)?"
_CLOCK_FORMATS = ("", " %H:%M", " %H:%M:%S", " %H:%M:%S.%f", " %I:%M %p", " %I:%M:%S %p")


def _time_formats(day_first: bool) -> list[tuple[str, list[str]]]:
    """Text patterns and the strptime formats tried for them, most specific first."""
    slash = "%d/%m" if day_first else "%m/%d"
    dash = "%d-%m" if day_first else "%m-%d"
    month_names = ["%d %b %Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y", "%b %d %Y", "%B %d %Y", "%d-%b-%Y", "%d-%b-%y"]

    def with_clock(dates: list[str]) -> list[str]:
        return [date + clock for date in dates for clock in _CLOCK_FORMATS]

    return [
        (rf"\d{{4}}/\d{{1,2}}/\d{{1,2}}{_CLOCK}", with_clock(["%Y/%m/%d"])),
        (rf"\d{{1,2}}\.\d{{1,2}}\.\d{{4}}{_CLOCK}", with_clock(["%d.%m.%Y"])),
        (rf"\d{{1,2}}/\d{{1,2}}/\d{{2,4}}{_CLOCK}", with_clock([f"{slash}/%Y", f"{slash}/%y"])),
        (rf"\d{{1,2}}-\d{{1,2}}-\d{{4}}{_CLOCK}", with_clock([f"{dash}-%Y"])),
        (
            rf"(?:\d{{1,2}}[ -])?[A-Za-z]{{3,9}}[ -]\d{{1,2}}?,? ?\d{{2,4}}{_CLOCK}",
            with_clock(month_names),
        ),
    ]


def _localize(parsed: pd.Series, timezone: str) -> pd.Series:
    """Naive times are in ``timezone``; the result is UTC.

    A wall time that daylight saving time shows twice (the hour the clocks go back) or
    skips (the hour they go forward) is read as Python reads it (PEP 495, ``fold=0``):
    the first of the two, and a skipped time with the offset before the change.
    """
    if parsed.dt.tz is not None:
        return parsed.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    local = parsed.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    out = local.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    changes = local.isna() & parsed.notna()
    if changes.any():  # rare rows: one at a time
        zone = ZoneInfo(timezone)
        moments = [t.to_pydatetime().replace(tzinfo=zone).astimezone(UTC) for t in parsed[changes]]
        out[changes] = pd.Series(moments, index=parsed.index[changes], dtype="datetime64[us, UTC]")
    return out


def _parse_iso(text: pd.Series, timezone: str) -> pd.Series:
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    with_offset = text.str.contains(
        r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$", regex=True
    ) & text.str.contains(r"[T ]\d", regex=True)
    for offset, part in ((True, text[with_offset]), (False, text[~with_offset])):
        if part.empty:
            continue
        parsed = pd.to_datetime(part, format="ISO8601", errors="coerce", utc=offset)
        out[part.index] = _localize(parsed, timezone)
    return out


#: ISO 8601 dates and times with the offset after a space (``2025-03-01 08:00:00 -0500``, as
#: Shopify exports them) or a ``UTC``/``GMT`` suffix: the offset joined to the time.
_SPACED_OFFSET = re.compile(r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?) ([+-]\d{2}:?\d{2})$")
_ZONE_WORD = re.compile(r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?) ?(?:UTC|GMT)$")


def _other_iso_forms(text: pd.Series) -> pd.Series:
    """The values of ``text`` in ISO 8601's other forms, rewritten to the extended one
    (``tier_ml.events.extended_time``, as every engine reads them); the rest left out."""
    joined = text.str.replace(_SPACED_OFFSET, r"\1\2", regex=True).str.replace(_ZONE_WORD, r"\1Z", regex=True)
    rewritten = joined.map(extended_time)
    return rewritten[rewritten.str.fullmatch(TIME_PATTERN).astype(bool)]


#: The share of a column's dates that must show a day over 12 first before it is read day
#: first without ``--day-first``: one mistyped row in a month-first file must not flip it.
DAY_FIRST_SHARE = 0.05


def _reads_day_first(text: pd.Series) -> bool:
    """Whether dates like ``13/12/2010`` show the day first: no second number is over 12,
    and at least ``DAY_FIRST_SHARE`` of the first numbers are (four-digit years only:
    ``25/02/07`` may be a year first)."""
    parts = text.str.extract(r"^(\d{1,2})[/-](\d{1,2})[/-]\d{4}(?:[ T]|$)").dropna()
    if parts.empty:
        return False
    first, second = parts[0].astype(int), parts[1].astype(int)
    return bool((first > 12).mean() >= DAY_FIRST_SHARE and not (second > 12).any())


def parse_times(values: pd.Series, options: ImportOptions, notes: list[str] | None = None) -> pd.Series:
    """Instants (datetime64[us, UTC]) of a column; NaT where a value cannot be read. A column
    read day first without ``day_first`` (``_reads_day_first``) is said in ``notes``."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _localize(pd.Series(values), options.timezone)
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return _epoch(pd.to_numeric(values, errors="coerce"))
    text = _text(values)
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    left = text != ""
    if options.date_format is not None and options.date_format.lower() != "iso":
        parsed = pd.to_datetime(text[left], format=options.date_format, errors="coerce")
        out[left] = _localize(parsed, options.timezone)
        return out
    iso = left & text.str.fullmatch(TIME_PATTERN)
    other_iso = _other_iso_forms(text[left & ~iso])  # basic format, decimal comma
    text = text.copy()
    text[other_iso.index] = other_iso
    iso[other_iso.index] = True
    out[iso] = _parse_iso(text[iso], options.timezone)
    if options.date_format is not None:  # iso only
        return out
    left &= ~iso
    epoch = left & text.str.fullmatch(r"\d{9,13}(?:\.\d+)?")
    out[epoch] = _epoch(pd.to_numeric(text[epoch]))
    left &= ~epoch
    day_first = options.day_first or _reads_day_first(text[left])
    if day_first and not options.day_first and notes is not None:
        notes.append("dates read day first: some show a day over 12 first and none a month over 12 "
                     "(--day-first says so; without it such a column is still read day first)")
    for pattern, formats in _time_formats(day_first):
        bucket = left & text.str.fullmatch(pattern)
        for form in formats:
            if not bucket.any():
                break
            parsed = pd.to_datetime(text[bucket], format=form, errors="coerce")
            good = parsed.notna()
            if good.any():
                out[good[good].index] = _localize(parsed[good], options.timezone)
            bucket &= ~good.reindex(bucket.index, fill_value=False)
        left &= ~text.str.fullmatch(pattern)
    return out


def _epoch(numbers: pd.Series) -> pd.Series:
    """Epoch seconds, or milliseconds when the value is too large for seconds (> 1e11)."""
    seconds = numbers.where(numbers.abs() < 1e11, numbers / 1000)
    micros = (seconds * 1e6).round()
    valid = micros.notna() & (micros.abs() < 2**62)
    out = pd.Series(pd.NaT, index=numbers.index, dtype="datetime64[us, UTC]")
    out[valid] = pd.to_datetime(micros[valid].astype(np.int64), unit="us", utc=True)
    return out


_SYMBOLS = "|".join(re.escape(s) for s in sorted(CURRENCY_SYMBOLS, key=len, reverse=True))
_MONEY_NOISE = re.compile(rf"{_SYMBOLS}|[A-Z]{{3}}|[\s\u00a0\u202f'’]")
_UNSIGNED = re.compile(AMOUNT_PATTERN.replace("[+-]?", ""))
#: Thousands separators must group by three, left of the decimal mark: ``1,234.50`` with a
#: decimal point, ``1.234,50`` with a decimal comma. A text that breaks that (``89,90`` or
#: ``1.234,50`` read with a point) has the other mark and is rejected, not misread by 100.
_GROUPED_POINT = r"(?:\d{1,3}(?:,\d{3})+|\d*)(?:\.\d*)?(?:[eE][+-]?\d+)?"
_GROUPED_COMMA = r"(?:\d{1,3}(?:\.\d{3})+|\d*)(?:,\d*)?"


def parse_amounts(values: pd.Series, decimal_comma: bool) -> tuple[pd.Series, pd.Series]:
    """Signed amounts (NaN where unreadable) and the currency their text names ('' if none)."""
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        numbers = pd.to_numeric(values, errors="coerce").astype(float)
        numbers = numbers.where(np.isfinite(numbers))
        return numbers, pd.Series("", index=values.index)
    text = _text(values)
    numbers = pd.Series(np.nan, index=text.index)
    currency = pd.Series("", index=text.index, dtype=object)
    plain = text.str.fullmatch(AMOUNT_PATTERN)
    if decimal_comma:
        plain &= ~text.str.contains(".", regex=False)
    numbers[plain] = pd.to_numeric(text[plain], errors="coerce")
    rest = text[~plain & (text != "")]
    if len(rest):
        numbers[rest.index], currency[rest.index] = _parse_money(rest, decimal_comma)
    return numbers.where(np.isfinite(numbers)), currency


def _parse_money(text: pd.Series, decimal_comma: bool) -> tuple[pd.Series, pd.Series]:
    """Amount texts with symbols, codes, separators and signs: number and named currency."""
    code = text.str.extract(rf"({_SYMBOLS}|(?<![A-Za-z])[A-Z]{{3}}(?![A-Za-z]))", expand=False).fillna("")
    currency = code.map(lambda c: CURRENCY_SYMBOLS.get(c, c)).astype(object)
    bare = text.str.replace(_MONEY_NOISE, "", regex=True)
    negative = bare.str.startswith("-") | bare.str.endswith("-") | bare.str.startswith("−")
    negative |= bare.str.startswith("(") & bare.str.endswith(")")
    bare = bare.str.strip("()-−+")
    grouped = bare.str.fullmatch(_GROUPED_COMMA if decimal_comma else _GROUPED_POINT)
    if decimal_comma:
        bare = bare.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    else:
        bare = bare.str.replace(",", "", regex=False)
    readable = grouped & bare.str.fullmatch(_UNSIGNED.pattern)
    numbers = pd.to_numeric(bare.where(readable), errors="coerce").astype(float)
    return numbers.where(~negative, -numbers), currency


# --- conversion --------------------------------------------------------------------------------


class _Rejects:
    """The first reason found for each row (later checks do not overwrite it)."""

    def __init__(self, index: pd.Index) -> None:
        self.reason = pd.Series(None, index=index, dtype=object)
        self.detail = pd.Series(None, index=index, dtype=object)

    def add(
        self, mask: pd.Series, reason: RejectReason, detail: str, values: pd.Series | None = None
    ) -> None:
        """Reject ``mask`` rows not yet rejected; with ``values``, the detail quotes them:
        ``"<value>" + detail`` (built for the rejected rows only)."""
        new = mask & self.reason.isna()
        if not new.any():
            return
        self.reason[new] = str(reason)
        if values is None:
            self.detail[new] = detail
        else:
            self.detail[new] = values[new].map(repr) + " " + detail

    @property
    def ok(self) -> pd.Series:
        return self.reason.isna()


def _column(frame: pd.DataFrame, mapping: dict[str, str], name: str) -> pd.Series | None:
    return frame[mapping[name]] if name in mapping else None


def _event_types(frame: pd.DataFrame, mapping: dict[str, str], rejects: _Rejects) -> pd.Series:
    source = _column(frame, mapping, "event_type")
    if source is None:
        return pd.Series("placed", index=frame.index, dtype=object)
    text = _text(source)
    kinds = text.str.lower().map(EVENT_TYPE_WORDS)
    rejects.add(text == "", RejectReason.MISSING_FIELD, "event_type is missing")
    detail = "is not an event type (placed, refunded or cancelled)"
    rejects.add(kinds.isna(), RejectReason.UNKNOWN_EVENT_TYPE, detail, text)
    return kinds


def _returns(frame: pd.DataFrame, options: ImportOptions) -> pd.Series:
    """Rows the export marks as returns through a flag column."""
    if options.return_column is None:
        return pd.Series(False, index=frame.index)
    if options.return_column not in frame.columns:
        raise _no_such_column(f"--return-column {options.return_column}", frame.columns)
    wanted = {value.strip().lower() for value in options.return_values}
    return _text(frame[options.return_column]).str.lower().isin(wanted)


def _currencies(
    frame: pd.DataFrame,
    mapping: dict[str, str],
    options: ImportOptions,
    named: pd.Series,
) -> pd.Series:
    """Column value, else the currency the amount's text names (``€20``), else the default."""
    source = _column(frame, mapping, "currency")
    text = _text(source) if source is not None else pd.Series("", index=frame.index)
    text = text.where(text != "", named)
    return text.where(text != "", options.currency or "").str.upper()


def _fill(
    frame: pd.DataFrame, mapping: dict[str, str], name: str, default: str | None
) -> pd.Series:
    source = _column(frame, mapping, name)
    text = _text(source) if source is not None else pd.Series("", index=frame.index)
    return text.where(text != "", default or "")


def _generated_ids(frame: pd.DataFrame) -> pd.Series:
    """Stable ids from a source row's content + its occurrence number among identical rows.

    The source row (all columns, by name), not the converted one: importing the same
    export again, even with other options, gives the same ids, so the engine sees a
    replay (or a conflicting replay), never a second copy of the same order.
    """
    text = pd.DataFrame({str(c): _text(frame[c]) for c in sorted(frame.columns, key=str)})
    content = pd.util.hash_pandas_object(text, index=False)
    occurrence = content.groupby(content).cumcount()
    combined = pd.util.hash_pandas_object(
        pd.DataFrame({"content": content.to_numpy(), "occurrence": occurrence.to_numpy()}),
        index=False,
    )
    return pd.Series(_hex(combined.to_numpy()), index=frame.index)


def _hex(values: np.ndarray) -> np.ndarray:
    """uint64 values as 16 lowercase hex digits, vectorized."""
    table = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), dtype=np.uint16)
    pairs = table[values.astype(">u8").view(np.uint8).reshape(-1, 8)]
    return np.ascontiguousarray(pairs).view("S16").ravel().astype(str)


def _check_date_format(date_format: str | None) -> None:
    """A --date-format strptime cannot use fails the import up front, instead of rejecting
    every row as unparseable_time."""
    if date_format is None or date_format.lower() == "iso":
        return
    if "%" not in date_format:
        raise ExportError(
            f"--date-format {date_format!r} has no strptime directive (e.g. '%d.%m.%Y %H:%M')"
        )
    try:
        pd.to_datetime(pd.Series(["2000-01-01"]), format=date_format, errors="coerce")
    except ValueError as exc:
        raise ExportError(f"--date-format {date_format!r} is not a strptime format: {exc}") from None


def convert(
    frame: pd.DataFrame, options: ImportOptions, policy: Policy | None = None
) -> ImportResult:
    """Convert an export frame to canonical events and rejects (see the module docstring)."""
    frame = frame.reset_index(drop=True)
    beyond = frame.pop(BEYOND_COLUMN) if BEYOND_COLUMN in frame.columns else None
    mapping = resolve_mapping([str(c) for c in frame.columns], options.mapping)
    try:
        ZoneInfo(options.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ExportError(f"--timezone {options.timezone!r} is not an IANA time zone") from None
    _check_date_format(options.date_format)
    if options.currency is not None and not re.fullmatch(r"[A-Za-z]{3}", options.currency.strip()):
        raise ExportError(f"--currency {options.currency!r} is not a currency code (three letters, e.g. EUR)")
    if options.lines and "order_id" not in mapping:
        raise ExportError("--lines needs the column of order ids: map it with --map order_id=COLUMN")
    if options.quantity is not None and options.quantity not in frame.columns:
        raise _no_such_column(f"--quantity {options.quantity}", frame.columns)
    skipped = _skipped(frame, options.skip)
    source = frame  # as read, for the rejects file
    if options.lines:
        frame = _fill_order_fields(frame, mapping)
    rejects = _Rejects(frame.index)
    if beyond is not None:  # its values may sit in the wrong columns: nothing else is checked
        detail = "is beyond the header's last column: the row has more fields (an unquoted separator?)"
        rejects.add(beyond != "", RejectReason.MALFORMED_ROW, detail, beyond)

    customer = _text(frame[mapping["customer_id"]])
    rejects.add(customer == "", RejectReason.MISSING_FIELD, "customer_id is missing")
    kinds = _event_types(frame, mapping, rejects)

    time_source = frame[mapping["occurred_at"]]
    notes: list[str] = []
    occurred = parse_times(time_source, options, notes)
    time_text = _text(time_source)
    rejects.add(time_text == "", RejectReason.MISSING_FIELD, "occurred_at is missing")
    detail = "is not a date/time in a known format (occurred_at)"
    rejects.add(occurred.isna(), RejectReason.UNPARSEABLE_TIME, detail, time_text)

    amount_source = frame[mapping["amount"]]
    amount, named_currency = parse_amounts(amount_source, options.decimal_comma)
    amount_text = _text(amount_source)
    needs_amount = kinds != "cancelled"
    rejects.add(needs_amount & (amount_text == ""), RejectReason.MISSING_FIELD, "amount is missing")
    unread = amount.isna() & (amount_text != "")  # read again with the other mark: for the hint
    other_mark = pd.Series(False, index=amount.index)
    if unread.any():
        other_mark[unread] = parse_amounts(amount_text[unread], not options.decimal_comma)[0].notna()
    detail = (
        "is not a number with a decimal point (amount): a decimal comma? add --decimal-comma"
        if not options.decimal_comma
        else "is not a number with a decimal comma (amount): leave out --decimal-comma?"
    )
    rejects.add(needs_amount & other_mark, RejectReason.UNPARSEABLE_AMOUNT, detail, amount_text)
    detail = "is not a number (amount)"
    rejects.add(needs_amount & amount.isna(), RejectReason.UNPARSEABLE_AMOUNT, detail, amount_text)
    if options.quantity is not None:
        quantity = _quantities(frame[options.quantity], options, needs_amount, rejects)
        detail = "is a negative unit price with a negative quantity (a return is one or the other)"
        rejects.add(needs_amount & (amount < 0) & (quantity < 0), RejectReason.NON_POSITIVE_AMOUNT, detail, amount_text)
        amount = amount * quantity
    returned = _returns(frame, options)
    if options.returns == "negative":
        returned |= amount < 0
    kinds = kinds.where(~(returned & (kinds == "placed")), "refunded")
    amount = amount.abs().where(returned, amount)
    detail = "is not a positive amount (negative ones are refunds only with --returns negative)"
    rejects.add(needs_amount & ~(amount > 0), RejectReason.NON_POSITIVE_AMOUNT, detail, amount_text)

    currency = _currencies(frame, mapping, options, named_currency)
    rejects.add(needs_amount & (currency == ""), RejectReason.MISSING_FIELD, "currency is missing")
    known = currency.str.fullmatch(r"[A-Z]{3}")
    detail = "is not a currency code (three letters, e.g. EUR)"
    if policy is not None:
        known &= currency.map(lambda c: policy.rate(c) is not None)
        detail = "is not a currency with an fx rate in the policy"
    rejects.add(needs_amount & ~known, RejectReason.UNKNOWN_CURRENCY, detail, currency)

    canonical = pd.DataFrame(
        {
            "event_type": kinds,
            "customer_id": customer,
            "occurred_at": occurred,
            "amount": amount.where(needs_amount).round(9),
            "currency": currency.where(needs_amount | (currency != ""), ""),
            "channel": _fill(frame, mapping, "channel", options.channel).str.lower(),
            "region": _fill(frame, mapping, "region", options.region),
        }
    )
    _identify(frame, mapping, canonical, rejects)
    rejects.reason[skipped] = None  # left out on purpose: not a reject
    good = rejects.ok & ~skipped
    events = canonical[good].reset_index(drop=True)[list(EVENT_FIELDS)]
    if options.lines:
        events = _order_lines(events)
    events["currency"] = events["currency"].replace("", None)
    return ImportResult(events, _rejects_frame(source, rejects), len(frame), notes, int(skipped.sum()))


def _skipped(frame: pd.DataFrame, skip: tuple[tuple[str, str], ...]) -> pd.Series:
    """Rows whose column holds a ``skip`` value (trimmed, any case)."""
    out = pd.Series(False, index=frame.index)
    for column, value in skip:
        if column not in frame.columns:
            raise _no_such_column(f"--skip {column}={value}", frame.columns)
        out |= _text(frame[column]).str.casefold() == value.strip().casefold()
    return out


def _quantities(
    source: pd.Series, options: ImportOptions, needs_amount: pd.Series, rejects: _Rejects
) -> pd.Series:
    """The quantity of each row (``--quantity``); the amount column then holds unit prices.

    A negative quantity makes a negative amount, which ``--returns negative`` takes as a return.
    """
    quantity, _ = parse_amounts(source, options.decimal_comma)
    text = _text(source)
    rejects.add(needs_amount & (text == ""), RejectReason.MISSING_FIELD, "quantity is missing")
    detail = "is not a number (quantity)"
    rejects.add(needs_amount & quantity.isna(), RejectReason.UNPARSEABLE_AMOUNT, detail, text)
    rejects.add(needs_amount & (quantity == 0), RejectReason.NON_POSITIVE_AMOUNT, "is not a positive quantity", text)
    if options.returns != "negative":
        detail = "is a negative quantity (returns are refunds only with --returns negative)"
        rejects.add(needs_amount & (quantity < 0), RejectReason.NON_POSITIVE_AMOUNT, detail, text)
    return quantity


#: Fields of a whole order that exports may write on its first line only (Shopify leaves
#: ``Currency`` blank on an order's other lines): with ``--lines`` they are filled in.
ORDER_FIELDS = ("customer_id", "occurred_at", "currency", "channel", "region")


def _fill_order_fields(frame: pd.DataFrame, mapping: dict[str, str]) -> pd.DataFrame:
    """The export with each line's blank ``ORDER_FIELDS`` taken from the first line of its
    order that has them, so no line is left out of its order's sum for a blank currency."""
    order = _text(frame[mapping["order_id"]])
    filled = frame.copy()
    for name in ORDER_FIELDS:
        column = mapping.get(name)
        if column is None:
            continue
        blank = _text(frame[column]) == ""
        if not blank.any() or blank.all():
            continue
        first = frame[column].where(~blank).groupby(order).transform("first")
        filled[column] = frame[column].where(~blank | (order == "") | first.isna(), first)
    return filled


#: What the lines of one order share; lines that differ in any of these stay separate events
#: (two placements of one order are then the engine's ``duplicate_order``, reported).
LINE_KEYS = ("order_id", "event_type", "customer_id", "occurred_at", "currency")


def _order_lines(events: pd.DataFrame) -> pd.DataFrame:
    """One event per order from an export of order lines (``--lines``), in first-line order.

    The lines of an order that share ``LINE_KEYS`` are summed (channel and region are the
    first line's). The event id is generated from the order's content, so importing the
    same export again gives the same ids, and an export where an order's lines changed gives
    a conflicting replay, not a second order.
    """
    keyed = events.assign(currency=events["currency"].fillna(""))
    groups = keyed.groupby(list(LINE_KEYS), sort=False, dropna=False)
    orders = groups[["channel", "region"]].first()
    orders["amount"] = groups["amount"].sum(min_count=1).round(9)  # a cancel has no amount
    orders = orders.reset_index()
    content = orders[[*LINE_KEYS, "amount"]].astype(str)
    orders["event_id"] = "L" + _hex(pd.util.hash_pandas_object(content, index=False).to_numpy())
    return orders[list(EVENT_FIELDS)]


def _identify(
    frame: pd.DataFrame, mapping: dict[str, str], canonical: pd.DataFrame, rejects: _Rejects
) -> None:
    """Fill ``event_id`` and ``order_id`` in place: from the export, or generated."""
    event_id = _fill(frame, mapping, "event_id", None)
    order_id = _fill(frame, mapping, "order_id", None)
    unnamed = order_id == ""
    generated = _generated_ids(frame) if "event_id" not in mapping or unnamed.any() else None
    if "event_id" in mapping:
        rejects.add(event_id == "", RejectReason.MISSING_FIELD, "event_id is missing")
    else:
        event_id = "I" + generated
    follow_up = canonical["event_type"] != "placed"
    detail = "order_id is missing: a refund or cancel needs the order it belongs to"
    rejects.add(follow_up & unnamed, RejectReason.MISSING_FIELD, detail)
    canonical["event_id"] = event_id
    if generated is not None:
        order_id = order_id.where(~unnamed, "O" + generated)
    canonical["order_id"] = order_id


def _rejects_frame(frame: pd.DataFrame, rejects: _Rejects) -> pd.DataFrame:
    bad = ~rejects.ok
    out = pd.DataFrame(
        {
            "row": (frame.index[bad] + 1).to_numpy(),
            "reason": rejects.reason[bad].to_numpy(),
            "detail": rejects.detail[bad].to_numpy(),
        }
    )
    source = frame[bad].reset_index(drop=True)
    for column in source.columns:
        name = str(column)
        out[name if name not in REJECT_COLUMNS else f"source_{name}"] = _text(source[column])
    return out


# --- the use case ------------------------------------------------------------------------------


def import_export(
    source_path: str | Path,
    mapping: dict[str, str] | None = None,
    *,
    currency: str | None = None,
    channel: str | None = None,
    region: str | None = None,
    date_format: str | None = None,
    day_first: bool = False,
    timezone: str = "UTC",
    decimal_comma: bool = False,
    returns: Literal["none", "negative"] = "none",
    return_column: str | None = None,
    return_values: tuple[str, ...] | None = None,
    policy: Policy | None = None,
    encoding: str = "utf-8",
    quantity: str | None = None,
    lines: bool = False,
    skip: tuple[tuple[str, str], ...] = (),
) -> ImportResult:
    """Read an export and convert it (``policy``: also reject currencies without fx rate)."""
    options = ImportOptions(
        mapping=dict(mapping or {}),
        currency=currency,
        channel=channel,
        region=region,
        date_format=date_format,
        day_first=day_first,
        timezone=timezone,
        decimal_comma=decimal_comma,
        returns=returns,
        return_column=return_column,
        return_values=tuple(return_values) if return_values else ImportOptions.return_values,
        quantity=quantity,
        lines=lines,
        skip=tuple(skip),
    )
    return convert(read_export(source_path, encoding), options, policy)


def write_import(
    result: ImportResult, out_path: str | Path, rejects_path: str | Path | None = None
) -> None:
    """Write the events (CSV or Parquet by suffix) and, if asked, the rejects (CSV or Parquet)."""
    write_events(result.events, out_path)
    if rejects_path is None:
        return
    path = Path(rejects_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in {".parquet", ".pq"}:
        write_parquet(result.rejects, path)
    else:
        result.rejects.to_csv(path, index=False)
