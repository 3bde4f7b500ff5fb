"""The canonical order event, its readers, and validation that splits good events from rejects.

Every channel (web shop, POS, marketplace, app, a retailer's export) ends up as
rows of the nine fields below. Validation never drops a row silently and never
stops a batch: each bad row becomes a :class:`Reject` with a reason, and every
good row goes on to the rules engine.

The syntax accepted for times and amounts is defined here once, as regular
expressions, so the Python path and the SQL batch path (``tier_ml.batch``)
accept exactly the same strings.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tier_ml.money import MAX_AMOUNT, MAX_AMOUNT_TEXT, instant_to_micros, to_micros
from tier_ml.policy import Policy

if TYPE_CHECKING:
    import pandas as pd

EVENT_FIELDS = (
    "event_id",
    "event_type",
    "order_id",
    "customer_id",
    "occurred_at",
    "amount",
    "currency",
    "channel",
    "region",
)
REQUIRED_FIELDS = ("event_id", "event_type", "order_id", "customer_id", "occurred_at")
#: The text a CSV row holds after the header's last column (the CSV readers add it to
#: every row, None when there is none): such a row's fields cannot be trusted to be in
#: their columns, so it is a ``malformed_row`` reject.
BEYOND_HEADER = "beyond_header"

# ISO 8601 as tier-ml accepts it: a date, optionally a time, optionally an offset.
# A time without an offset is UTC.
TIME_PATTERN = (  # no lookarounds: DuckDB (RE2) matches the same pattern on the batch path
    r"([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-[0-9]{2}-[0-9]{2}"  # year 0001-9999
    r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,9})?)?"
    r"(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?)?"  # an offset under 24 hours
)
#: Other forms of the same instants, rewritten to the one ``TIME_PATTERN`` matches: ISO 8601's
#: basic format (``20250101T103000Z``, ``20250101``) and decimal comma (``10:30:00,5``), which
#: Python's ``datetime.fromisoformat`` reads too, and RFC 3339's lower-case ``t`` and ``z``.
#: Only a text the pattern does not match is rewritten (each replacement of its first match,
#: then every comma to a point) and matched again. They are plain regular expressions, so
#: DuckDB (RE2) applies the very same ones on the batch path (``tier_ml.batch.source``).
#: Mixed forms (``2025-01-01T103000``) are read, as Python reads them.
TIME_REWRITES = (
    (r"^([0-9]{4})([0-9]{2})([0-9]{2})", r"\1-\2-\3"),  # the date: YYYYMMDD
    (r"^([0-9]{4}-[0-9]{2}-[0-9]{2})t", r"\1T"),  # a lower-case t (RFC 3339 allows it, as z)
    (r"([T ][0-9]{2})([0-9]{2})", r"\1:\2"),  # hours and minutes: HHMM
    (r"([T ][0-9]{2}:[0-9]{2})([0-9]{2})", r"\1:\2"),  # and seconds: HH:MMSS
    (r"z$", "Z"),  # a lower-case z
)
AMOUNT_PATTERN = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
_TIME_RE = re.compile(TIME_PATTERN)
_TIME_REWRITES = tuple((re.compile(pattern), replacement) for pattern, replacement in TIME_REWRITES)
_AMOUNT_RE = re.compile(AMOUNT_PATTERN)


class EventType(StrEnum):
    PLACED = "placed"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"


class RejectReason(StrEnum):
    """Why an event was rejected. The codes are stable: scripts count them."""

    MALFORMED_ROW = "malformed_row"
    MISSING_FIELD = "missing_field"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNPARSEABLE_TIME = "unparseable_time"
    UNPARSEABLE_AMOUNT = "unparseable_amount"
    NON_POSITIVE_AMOUNT = "non_positive_amount"
    UNKNOWN_CURRENCY = "unknown_currency"
    CONFLICTING_REPLAY = "conflicting_replay"
    DUPLICATE_ORDER = "duplicate_order"
    UNKNOWN_ORDER = "unknown_order"
    CUSTOMER_MISMATCH = "customer_mismatch"


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """A canonical, validated order event with money and time in engine units.

    ``amount_us`` is the amount in micro-units of the policy's base currency
    (0 for a cancel, whose amount is ignored); ``at_us`` is the instant in
    microseconds since the epoch, UTC.
    """

    event_id: str
    event_type: EventType
    order_id: str
    customer_id: str
    at_us: int
    amount_us: int
    channel: str = ""
    region: str = ""
    currency: str = ""
    amount: float | None = None

    @property
    def occurred_at(self) -> datetime:
        from tier_ml.money import micros_to_instant

        return micros_to_instant(self.at_us)

    def sort_key(self) -> tuple[int, str]:
        """Events of one instant are applied in event_id order: deterministic, file-order free."""
        return (self.at_us, self.event_id)


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that could not be used, with the reason and the row as it came in."""

    row: int | None
    event_id: str | None
    reason: RejectReason
    detail: str
    raw: Mapping[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "row": self.row,
            "reason": str(self.reason),
            "detail": self.detail,
        }
        for name in EVENT_FIELDS:
            value = self.raw.get(name)
            record[name] = None if _is_missing(value) else str(value)
        return record


@dataclass
class Validation:
    """The outcome of validating a batch: good events, rejects, and how many replays were ignored."""

    events: list[OrderEvent]
    rejects: list[Reject]
    replays: int = 0


class EventReadError(ValueError):
    """An events file that cannot be read at all (as opposed to bad rows inside it)."""


# --- parsing single values -------------------------------------------------------------


def _pandas() -> Any:
    """pandas if something imported it, else None.

    A pandas value (a frame, ``NaT``, a ``Timestamp``) can only exist once pandas is
    imported, so checking for one never needs to import it: the command-line batch path
    never does (that would add a quarter of a second to every run).
    """
    return sys.modules.get("pandas")


def is_frame(value: Any) -> bool:
    """Whether ``value`` is a pandas DataFrame."""
    pandas = _pandas()
    return pandas is not None and isinstance(value, pandas.DataFrame)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    pandas = _pandas()
    if pandas is not None and value is pandas.NaT:
        return True
    return isinstance(value, str) and value.strip(" ") == ""


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value).strip(" ")


def parse_instant(value: Any) -> int | None:
    """An instant as epoch microseconds, or None when it is not ISO 8601 as accepted here."""
    pandas = _pandas()
    if pandas is not None and isinstance(value, pandas.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        return instant_to_micros(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, date):
        return instant_to_micros(datetime(value.year, value.month, value.day, tzinfo=UTC))
    text = _text(value)
    if not _TIME_RE.fullmatch(text):
        text = extended_time(text)
        if not _TIME_RE.fullmatch(text):
            return None
    text = re.sub(
        r"(\.[0-9]{6})[0-9]+", r"\1", text
    )  # beyond microseconds: truncate, as SQL engines do
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return instant_to_micros(parsed)


def extended_time(text: str) -> str:
    """``text`` with ISO 8601's basic format and decimal comma rewritten by ``TIME_REWRITES``."""
    for pattern, replacement in _TIME_REWRITES:
        text = pattern.sub(replacement, text, count=1)
    return text.replace(",", ".")


def parse_amount(value: Any) -> float | None:
    """A finite decimal amount, or None when it is not a plain number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    text = _text(value)
    if not _AMOUNT_RE.fullmatch(text):
        return None
    amount = float(text)
    return amount if math.isfinite(amount) else None


# --- validation --------------------------------------------------------------------------


def too_large(amount_text: str, policy: Policy) -> str:
    """The detail of an amount at or over ``MAX_AMOUNT`` in the base currency."""
    return f"amount '{amount_text}' is too large ({MAX_AMOUNT_TEXT} {policy.base_currency} or more)"


def check_row(raw: Mapping[str, Any], policy: Policy) -> OrderEvent | tuple[RejectReason, str]:
    """Validate one row on its own (no other rows needed): the event, or a reason and detail."""
    if not _is_missing(extra := raw.get(BEYOND_HEADER)):
        return RejectReason.MALFORMED_ROW, malformed_detail(_text(extra))
    for name in REQUIRED_FIELDS:
        if _is_missing(raw.get(name)):
            return RejectReason.MISSING_FIELD, f"{name} is missing"
    kind = _text(raw.get("event_type")).lower()
    if kind not in EventType.__members__.values():
        detail = f"event_type '{_text(raw.get('event_type'))}' is not placed, refunded or cancelled"
        return RejectReason.UNKNOWN_EVENT_TYPE, detail
    at_us = parse_instant(raw.get("occurred_at"))
    if at_us is None:
        return (
            RejectReason.UNPARSEABLE_TIME,
            f"occurred_at '{_text(raw.get('occurred_at'))}' is not an ISO 8601 time",
        )
    currency = _text(raw.get("currency")).upper()
    amount: float | None = None
    amount_us = 0
    if kind != EventType.CANCELLED:
        for name in ("amount", "currency"):
            if _is_missing(raw.get(name)):
                return RejectReason.MISSING_FIELD, f"{name} is missing"
        amount = parse_amount(raw.get("amount"))
        if amount is None:
            return (
                RejectReason.UNPARSEABLE_AMOUNT,
                f"amount '{_text(raw.get('amount'))}' is not a number",
            )
        if not amount > 0:
            return (
                RejectReason.NON_POSITIVE_AMOUNT,
                f"amount '{_text(raw.get('amount'))}' must be positive",
            )
        rate = policy.rate(currency)
        if rate is None:
            return (
                RejectReason.UNKNOWN_CURRENCY,
                f"currency '{currency}' has no fx rate in the policy",
            )
        if amount * rate >= MAX_AMOUNT:
            return RejectReason.UNPARSEABLE_AMOUNT, too_large(_text(raw.get("amount")), policy)
        amount_us = to_micros(amount, rate)
    return OrderEvent(
        event_id=_text(raw.get("event_id")),
        event_type=EventType(kind),
        order_id=_text(raw.get("order_id")),
        customer_id=_text(raw.get("customer_id")),
        at_us=at_us,
        amount_us=amount_us,
        channel=_text(raw.get("channel")),
        region=_text(raw.get("region")),
        currency=currency,
        amount=amount,
    )


def malformed_detail(extra: str) -> str:
    """The detail of a ``malformed_row`` reject (the SQL path writes the same text)."""
    return f"the row has more fields than the header ('{extra}' after the last column; an unquoted comma?)"


def content(event: OrderEvent) -> tuple[Any, ...]:
    """What makes two deliveries of one ``event_id`` the same event; the copy with the
    smallest content is the one kept (the batch path and the store use the same order)."""
    return (
        event.at_us,
        str(event.event_type),
        event.order_id,
        event.customer_id,
        event.amount_us,
        event.currency,
        event.channel,
        event.region,
    )


def validate(
    rows: Iterable[Mapping[str, Any]], policy: Policy, as_of_us: int | None = None
) -> Validation:
    """Split rows into good events and rejects; rows after ``as_of_us`` are invisible.

    Cross-row rules, in this order:
    1. a repeated ``event_id`` is a replay: the copy with the smallest content is
       kept (independent of file order); identical copies are ignored, differing
       copies are rejected as ``conflicting_replay``;
    2. the first ``placed`` event of an order (by time, then event_id) places it;
       a later one is ``duplicate_order``;
    3. a refund or cancel needs its order placed at or before it (``unknown_order``)
       by the same customer (``customer_mismatch``).
    """
    rejects: list[Reject] = []
    by_id: dict[str, list[tuple[int, OrderEvent, Mapping[str, Any]]]] = {}
    for row_number, raw in enumerate(rows, start=1):
        checked = check_row(raw, policy)
        if isinstance(checked, OrderEvent):
            if as_of_us is not None and checked.at_us > as_of_us:
                continue
            by_id.setdefault(checked.event_id, []).append((row_number, checked, raw))
        else:
            reason, detail = checked
            if (
                reason == RejectReason.UNPARSEABLE_TIME
                or as_of_us is None
                or _before(raw, as_of_us)
            ):
                rejects.append(
                    Reject(row_number, _text(raw.get("event_id")) or None, reason, detail, raw)
                )

    unique: list[OrderEvent] = []
    replays = 0
    for copies in by_id.values():
        copies.sort(key=lambda item: (content(item[1]), item[0]))
        kept = copies[0][1]
        unique.append(kept)
        for row_number, event, raw in copies[1:]:
            if content(event) == content(kept):
                replays += 1
            else:
                detail = f"event_id {event.event_id} was already used for different content"
                rejects.append(
                    Reject(row_number, event.event_id, RejectReason.CONFLICTING_REPLAY, detail, raw)
                )
    rows_of = {id(copies[0][1]): copies[0] for copies in by_id.values()}

    unique.sort(key=lambda e: (e.event_type != EventType.PLACED, e.at_us, e.event_id))
    placed: dict[str, OrderEvent] = {}
    good: list[OrderEvent] = []
    for event in unique:
        row_number, _, raw = rows_of[id(event)]
        if event.event_type == EventType.PLACED:
            first = placed.get(event.order_id)
            if first is None:
                placed[event.order_id] = event
                good.append(event)
            else:
                detail = f"order {event.order_id} was already placed by event {first.event_id}"
                rejects.append(
                    Reject(row_number, event.event_id, RejectReason.DUPLICATE_ORDER, detail, raw)
                )
            continue
        order = placed.get(event.order_id)
        if order is None or order.at_us > event.at_us:
            detail = (
                f"{event.event_type} event for order {event.order_id}, not placed at or before it"
            )
            rejects.append(
                Reject(row_number, event.event_id, RejectReason.UNKNOWN_ORDER, detail, raw)
            )
        elif order.customer_id != event.customer_id:
            detail = f"order {event.order_id} belongs to customer {order.customer_id}, not {event.customer_id}"
            rejects.append(
                Reject(row_number, event.event_id, RejectReason.CUSTOMER_MISMATCH, detail, raw)
            )
        else:
            good.append(event)
    rejects.sort(key=lambda r: (r.row or 0, str(r.reason)))
    good.sort(key=OrderEvent.sort_key)
    return Validation(events=good, rejects=rejects, replays=replays)


def _before(raw: Mapping[str, Any], as_of_us: int) -> bool:
    at_us = parse_instant(raw.get("occurred_at"))
    return at_us is None or at_us <= as_of_us


# --- readers -------------------------------------------------------------------------------

FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def detect_format(path: str | Path) -> str:
    """The events format from a file name: csv, jsonl or parquet."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise EventReadError(
            f"{path}: unknown events format {suffix!r}; use .csv, .jsonl or .parquet"
        )
    return FORMATS[suffix]


#: A JSON escape of a UTF-16 surrogate (``\\ud800``-``\\udfff``): text only in a high-low pair.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def file_pieces(path: Path) -> Iterator[bytes]:
    """The file's bytes in 1 MiB pieces: searched without holding a large file in memory."""
    with path.open("rb") as handle:
        while piece := handle.read(1 << 20):
            yield piece


def file_holds(path: Path, pattern: re.Pattern[bytes], longest: int) -> bool:
    """Whether ``pattern`` (at most ``longest`` bytes) occurs in the file: each piece is
    searched with the end of the one before (a match may be cut in two)."""
    tail = b""
    for piece in file_pieces(path):
        if pattern.search(tail + piece):
            return True
        tail = (tail + piece)[1 - longest :] if longest > 1 else b""
    return False


def _lone_surrogate_line(path: Path) -> int | None:
    """The first line (1-based) of a JSON lines file holding an unpaired surrogate escape.

    DuckDB refuses such a file without naming the line (and pandas' JSON reader dropped
    the escape without a word: ``"c\\ud8006"`` became ``"c6"``, another customer). The file is searched in
    1 MiB pieces first; only a file with a surrogate escape is read line by line, where
    Python's ``json`` keeps a lone surrogate, which then cannot be encoded as UTF-8.
    """
    if not file_holds(path, _SURROGATE_ESCAPE, len(b"\\ud800")):
        return None
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if _SURROGATE_ESCAPE.search(line) is None:
                continue
            try:
                json.dumps(json.loads(line), ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                return number
            except ValueError:  # a malformed line: pandas names it
                continue
    return None


def read_events(path: str | Path) -> pd.DataFrame:
    """Read an events file: its nine fields as the text written, one row per input row.

    Every engine reads files with one reader, the batch path's DuckDB scan
    (``tier_ml.batch.read_events``), so a file means the same rows to the reference
    engine, ``ingest`` and ``explain`` as to ``classify``; it is loaded only when a file
    is read. Missing columns are None; an unreadable file raises ``EventReadError``.
    """
    from tier_ml.batch.source import read_events as read_with_duckdb

    return read_with_duckdb(path)


def json_lines_fault(path: Path) -> str | None:
    """Why a JSON lines file cannot be read, naming its first bad line; None if none is.

    A bad line is an unpaired surrogate escape (not text), or a line that is not one JSON
    object. Engines refuse such a file whole; this names the line for every one of them.
    """
    if (line := _lone_surrogate_line(path)) is not None:
        return (
            f"line {line} holds an unpaired UTF-16 surrogate escape "
            "(\\ud800-\\udfff without its pair), which is not text"
        )
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue  # blank lines are skipped by every reader
            try:
                value = json.loads(raw)
            except ValueError as exc:  # not JSON, or not UTF-8
                return f"line {number} is not JSON ({exc})"
            if not isinstance(value, dict):
                return f"line {number} is not a JSON object"
    return None


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of an events frame as plain dicts (NaN and NaT become None)."""
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records")


def rejects_frame(rejects: Iterable[Reject]) -> pd.DataFrame:
    """Rejects as a table: row, reason, detail and the raw fields."""
    import pandas as pd

    columns = ["row", "reason", "detail", *EVENT_FIELDS]
    return pd.DataFrame([r.as_record() for r in rejects], columns=columns)
