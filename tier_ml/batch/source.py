"""Reading: the events file (CSV, JSON lines, Parquet) or a DataFrame as view ``src``.

Every field is exposed as trimmed text (``field_expr``), plus the parsed instant
``at_us`` and amount ``amount_num`` that validation checks; the row number is the
1-based position in the input, which rejects report.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import duckdb

from tier_ml.events import (
    AMOUNT_PATTERN,
    BEYOND_HEADER,
    EVENT_FIELDS,
    REQUIRED_FIELDS,
    TIME_PATTERN,
    TIME_REWRITES,
    EventReadError,
    detect_format,
    file_holds,
    file_pieces,
    is_frame,
    json_lines_fault,
)

if TYPE_CHECKING:
    import pandas as pd


def connect(
    threads: int | None = None, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection set up for the engine: UTC session, no progress bar noise."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = false")  # outputs are ORDER BY'd where order matters
    con.execute(f"SET memory_limit = '{memory_limit or '3GB'}'")  # spill rather than grow past the budget
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


# --- reading ------------------------------------------------------------------------------------


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


_NOT_BLANK = re.compile(rb"\S")

#: JSON lines are read with every event field as text, as written: types the reader would
#: infer from a sample (a time, a number) fail on a later row that does not fit them.
_JSON_FIELDS = "{" + ", ".join(f"{sql_literal(name)}: 'VARCHAR'" for name in EVENT_FIELDS) + "}"


def read_error(source: str | Path, exc: duckdb.Error) -> EventReadError:
    """One line for a file DuckDB cannot read (its messages run to many lines of hints).

    A JSON lines file is searched for the line at fault, which DuckDB's message does not
    always name right (it counts one line too many), so every path names the same line.
    """
    path = Path(source)
    kind = detect_format(path)
    if kind == "jsonl" and (fault := json_lines_fault(path)) is not None:
        return EventReadError(f"{source}: cannot read jsonl events: {fault}")
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    hint = " (the file is not UTF-8 text)" if "unicode" in str(exc).lower() else ""
    return EventReadError(f"{source}: cannot read {kind} events: {first}{hint}")


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV file's header line.

    Spaces around a name are ignored (as around values); a name seen before gets a
    suffix, so the first column of that name is the one read. ``BEYOND_HEADER`` counts
    as seen: it names the column ``_csv_scan`` adds after the header's. Empty names at
    the end (a header line that ends with a comma) are not columns.
    """
    try:
        with path.open("rb") as handle:
            header = next(csv.reader(_text_lines(handle)), None)
    except UnicodeDecodeError:
        raise EventReadError(f"{path}: cannot read csv events: the header is not UTF-8 text") from None
    except csv.Error as exc:
        raise EventReadError(f"{path}: cannot read csv events: header line: {exc}") from None
    if not header:
        raise EventReadError(f"{path}: cannot read csv events: no header line (the file is empty)")
    while len(header) > 1 and not header[-1].strip(" "):  # a header that ends with a comma:
        header.pop()  # what rows hold there is beyond it (empty, or a shifted row's last value)
    names: list[str] = [BEYOND_HEADER]
    for index, raw in enumerate(header, start=1):
        name = raw.strip(" ") or f"column{index}"
        unique, copy = name, 1
        while unique in names:
            copy += 1
            unique = f"{name}_{copy}"
        names.append(unique)
    return names[1:]


def _text_lines(handle: BinaryIO) -> Iterator[str]:
    """The lines of a binary file as text, each decoded when read (a header needs only
    its own lines to be UTF-8); a byte order mark at the start is not text."""
    first = True
    for line in handle:
        yield line.decode("utf-8-sig" if first else "utf-8")
        first = False


def _quote_count(path: Path) -> int:
    """How many double quotes the file holds."""
    return sum(piece.count(b'"') for piece in file_pieces(path))


def _unclosed_quote_line(path: Path) -> int | None:
    """The line where a quote opens that the file never closes (Python's strict reader
    stops there at the end of the file), or None (an odd quote was a literal one)."""
    with path.open("rb") as handle:
        reader = csv.reader(_text_lines(handle), strict=True)
        start = 1
        try:
            for _ in reader:
                start = reader.line_num + 1
        except csv.Error:
            return start
        except UnicodeDecodeError:
            return None  # not a quote: DuckDB's read names the line that is not UTF-8
    return None


def _csv_scan(path: Path) -> str:
    """The scan of a CSV file: comma separated, double quotes, every field text, in file order.

    The dialect is fixed rather than sniffed, so every path reads a file the same way
    (a sniffer guesses from a sample: a semicolon file or one short row changed its guess).
    A row with fewer fields than the header has the rest missing (a reject). The field
    after the header's last is read as ``BEYOND_HEADER``: empty in an export that ends
    every line with a comma, and text when a row has more fields than the header (an
    unquoted comma shifted its values), which makes the row a ``malformed_row`` reject.
    Fields after that one are not read.

    Quotes are counted first. Closed quotes come in pairs (one inside a quoted field is
    doubled), and after a quote that is never closed a lenient reader takes the rest of
    the file as one field, so the rows after it would vanish: an odd count stops the
    read, naming the line. A file with quotes is read on one thread: DuckDB's parallel
    reader cannot pad short rows when a quoted field may hold a line break.
    """
    names = [*_csv_header(path), BEYOND_HEADER]
    columns = "{" + ", ".join(f"{sql_literal(name)}: 'VARCHAR'" for name in names) + "}"
    quotes = _quote_count(path)
    if quotes % 2 and (line := _unclosed_quote_line(path)) is not None:
        raise EventReadError(f"{path}: cannot read csv events: the quote opened on line {line} is never closed")
    options = (
        "auto_detect = false, header = true, delim = ',', quote = '\"', escape = '\"', "
        f"null_padding = true, strict_mode = false, parallel = {'false' if quotes else 'true'}, columns = {columns}"
    )
    return f"SELECT row_number() OVER () AS row, * FROM read_csv({sql_literal(str(path))}, {options})"


def _json_keys(con: duckdb.DuckDBPyConnection, path: Path) -> set[str]:
    """The keys of a JSON lines file's objects (from DuckDB's sample).

    A file without a line has no events and no keys to miss; a line that is not an
    object is named (DuckDB would only report the keys it could not find).
    """
    if not file_holds(path, _NOT_BLANK, 1):
        return set(EVENT_FIELDS)
    described = f"DESCRIBE SELECT * FROM read_json({sql_literal(str(path))}, format = 'newline_delimited')"
    keys = {name for name, *_ in con.execute(described).fetchall()}
    if not set(REQUIRED_FIELDS) <= keys and (fault := json_lines_fault(path)) is not None:
        raise EventReadError(f"{path}: cannot read jsonl events: {fault}")
    return keys


def _missing_columns(source: str | Path, found: Iterable[str]) -> EventReadError | None:
    """The error for a file without every required column, None when it has them."""
    found = sorted(name for name in found if name not in ("row", BEYOND_HEADER))
    missing = [name for name in REQUIRED_FIELDS if name not in found]
    if not missing:
        return None
    hint = ""
    if len(found) == 1 and any(mark in found[0] for mark in (";", "\t", "|")):
        hint = " (is the file comma separated?)"
    return EventReadError(f"{source}: missing required columns {missing}; found {found}{hint}")


def register_source(con: duckdb.DuckDBPyConnection, source: str | Path | pd.DataFrame) -> None:
    """Expose the input as view ``src`` with the nine event fields and a 1-based ``row``.

    ``src`` also has ``BEYOND_HEADER``, which only a CSV file's rows can fill (``src_raw``
    has that column for a CSV scan only: a Parquet column of that name is left out).
    """
    present: set[str] | None = None  # the columns a JSON lines file has, when not all are read
    if is_frame(source):
        frame = source.copy()
        for name in EVENT_FIELDS:
            if name not in frame.columns:
                frame[name] = None
        frame = (
            frame[list(EVENT_FIELDS)].astype(object).where(frame[list(EVENT_FIELDS)].notna(), None)
        )
        frame = (
            frame.map(lambda v: None if v is None else str(v)) if len(frame) else frame.astype(str)
        )
        frame.insert(0, "row", range(1, len(frame) + 1))
        con.register("src_frame", frame)
        con.execute("CREATE OR REPLACE TEMP VIEW src_raw AS SELECT * FROM src_frame")
    else:
        path = Path(source)
        kind = detect_format(path)
        if not path.is_file():
            raise EventReadError(f"{path}: no such events file")
        quoted = sql_literal(str(path))
        if kind == "parquet":
            scan = f"SELECT file_row_number + 1 AS row, * EXCLUDE (file_row_number) FROM read_parquet({quoted}, file_row_number = true)"
        elif kind == "csv":
            scan = _csv_scan(path)
        else:
            scan = f"SELECT row_number() OVER () AS row, * FROM read_json({quoted}, format = 'newline_delimited', columns = {_JSON_FIELDS})"
        try:
            if kind == "jsonl":  # the keys the file has (from a sample), for the check below
                present = _json_keys(con, path)
            con.execute(f"CREATE OR REPLACE TEMP VIEW src_raw AS {scan}")
            if kind != "csv" and BEYOND_HEADER in raw_types(con):  # a column of the file: not ours
                con.execute(f'CREATE OR REPLACE TEMP VIEW src_raw AS SELECT * EXCLUDE ("{BEYOND_HEADER}") FROM ({scan})')
            con.execute("SELECT * FROM src_raw LIMIT 0")
        except duckdb.Error as exc:
            raise read_error(path, exc) from None
    types = raw_types(con)
    if (error := _missing_columns(source, types if present is None else present)) is not None:
        raise error
    kept = ', "amount" AS amount_raw' if keeps_raw_fields(types) else ""
    con.execute(f"CREATE OR REPLACE TEMP VIEW src AS SELECT {source_columns(types)}{kept} FROM src_raw")


#: Source column types whose text the engine can rebuild exactly from what validation keeps.
REBUILT_TIMES = {
    "TIMESTAMP WITH TIME ZONE": "CAST(CAST(make_timestamp({at}) AS TIMESTAMPTZ) AS VARCHAR)",
    "TIMESTAMP": "CAST(make_timestamp({at}) AS VARCHAR)",
    "DATE": "CAST(CAST(make_timestamp({at}) AS DATE) AS VARCHAR)",
}
_NUMERIC_TYPES = ("DOUBLE", "FLOAT", "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "DECIMAL(")


def keeps_raw_fields(types: dict[str, str]) -> bool:
    """Whether rejects can be written without reading the source again (see ``tier_ml.batch.rejects``).

    True for typed sources (Parquet with a timestamp or date ``occurred_at`` and a numeric
    ``amount``): every field of a row is then text validation keeps anyway, or rebuilt
    exactly from its typed value. Text sources (CSV, a DataFrame) keep their raw time and
    amount text only in the source, so their rejected rows are read from it again.
    """
    amount = types.get("amount", "")
    return types.get("occurred_at") in REBUILT_TIMES and amount.startswith(_NUMERIC_TYPES)


def source_columns(types: dict[str, str]) -> str:
    """The select list of view ``src`` over ``src_raw`` (whose column types are ``types``):
    the row, the fields and ``BEYOND_HEADER`` (only a CSV scan has it; NULL for others)."""
    beyond = _text_expr(BEYOND_HEADER, types.get(BEYOND_HEADER))
    fields = [field_expr(name, types.get(name)) for name in EVENT_FIELDS]
    return ", ".join(["row", *fields, f"{beyond} AS {BEYOND_HEADER}"])


def raw_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE src_raw)").fetchall())


def _text_expr(name: str, column_type: str | None) -> str:
    """The field as trimmed text, NULL when missing (cheap when nothing needs trimming).

    ``c < '!'`` (text compares byte by byte) is one test for both an empty text and a
    leading space; it compares the inlined prefix only, so it costs less than
    ``LIKE ' %'`` and ``= ''`` together. The few other texts it lets through (a leading
    control character) only take the exact path, which leaves them as they are.
    """
    if column_type is None:
        return "CAST(NULL AS VARCHAR)"
    c = f'"{name}"' if column_type == "VARCHAR" else f'CAST("{name}" AS VARCHAR)'
    return f"CASE WHEN {c} < '!' OR {c} LIKE '% ' THEN nullif(trim({c}, ' '), '') ELSE {c} END"


def _extended_time_sql(text: str) -> str:
    """SQL for ``tier_ml.events.extended_time`` of ``text``: the same rewrites, in the same order."""
    for pattern, replacement in TIME_REWRITES:
        text = f"regexp_replace({text}, {sql_literal(pattern)}, {sql_literal(replacement)})"
    return f"replace({text}, ',', '.')"


def field_expr(name: str, column_type: str | None) -> str:
    """Text of a field; for time and amount also ``*_missing`` and typed ``at_us``/``amount_num``."""
    text = f"{_text_expr(name, column_type)} AS {name}"
    if name not in ("occurred_at", "amount"):
        return text
    typed = column_type is not None and column_type not in ("VARCHAR", "BOOLEAN")
    missing = f'"{name}" IS NULL' if typed else f"{_text_expr(name, column_type)} IS NULL"
    if name == "occurred_at":
        if typed and column_type in ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE"):
            parsed = f'epoch_us("{name}")'
        elif typed and column_type.startswith("TIMESTAMP") and "_NS" in column_type:  # pandas writes _NS
            # nanoseconds are cut off, not rounded: as text times beyond microseconds are
            # (a cast rounds, and .0000009 s before as_of would land after it)
            ns = f'epoch_ns("{name}")'
            parsed = f"({ns} - ({ns} % 1000 + 1000) % 1000) // 1000"
        elif typed and column_type.startswith("TIMESTAMP"):  # _MS, _S: exact in microseconds
            zoned = "TIME ZONE" in column_type or column_type.startswith("TIMESTAMPTZ")
            parsed = f'epoch_us(CAST("{name}" AS {"TIMESTAMPTZ" if zoned else "TIMESTAMP"}))'
        elif typed and column_type == "DATE":
            parsed = f'epoch_us(CAST("{name}" AS TIMESTAMP))'
        else:
            raw = _text_expr(name, column_type)
            rewritten = _extended_time_sql(raw)  # only for the rare texts the pattern misses
            parsed = (
                f"CASE WHEN regexp_full_match({raw}, {sql_literal(TIME_PATTERN)}) "
                f"THEN epoch_us(TRY_CAST({raw} AS TIMESTAMPTZ)) "
                f"WHEN regexp_full_match({rewritten}, {sql_literal(TIME_PATTERN)}) "
                f"THEN epoch_us(TRY_CAST({rewritten} AS TIMESTAMPTZ)) END"
            )
        return f"{text}, {missing} AS occurred_at_missing, {parsed} AS at_us"
    if typed:
        parsed = f'CAST("{name}" AS DOUBLE)'
    else:
        raw = _text_expr(name, column_type)
        parsed = (
            f"CASE WHEN regexp_full_match({raw}, {sql_literal(AMOUNT_PATTERN)}) "
            f"THEN TRY_CAST({raw} AS DOUBLE) END"
        )
    return (
        f"{text}, {missing} AS amount_missing, "
        f"CASE WHEN isfinite({parsed}) THEN {parsed} END AS amount_num"
    )


# --- the SQL pipeline ---------------------------------------------------------------------------


def read_events(path: str | Path) -> pd.DataFrame:
    """An events file as the text of its nine fields, one row per input row, in file order.

    The reader of the paths that validate row by row (the reference engine, ``ingest``,
    ``explain``): the same scan as the batch path's ``register_source``, so every path
    reads a file alike. Fields are text as written; a typed Parquet column becomes
    DuckDB's text of its value (an integer id its digits, a timestamp with its offset, a
    nanosecond one with all nine digits, NaN ``nan``), which validation parses like any
    text. Missing columns are None. A CSV file's rows also have ``BEYOND_HEADER``: the
    text after the header's last column, which ``check_row`` rejects (None nearly always).
    """
    path = Path(path)
    con = connect()
    try:
        register_source(con, path)
        types = raw_types(con)
        fields = ", ".join(_raw_text(name, types.get(name)) for name in EVENT_FIELDS)
        if BEYOND_HEADER in types:  # a CSV file
            fields += f", {_text_expr(BEYOND_HEADER, 'VARCHAR')} AS {BEYOND_HEADER}"
        try:
            return con.sql(f"SELECT {fields} FROM src_raw ORDER BY row").df()
        except duckdb.Error as exc:  # a row that breaks the file's format
            raise read_error(path, exc) from None
    finally:
        con.close()


def _raw_text(name: str, column_type: str | None) -> str:
    if column_type is None:
        return f"CAST(NULL AS VARCHAR) AS {name}"
    return f'"{name}" AS {name}' if column_type == "VARCHAR" else f'CAST("{name}" AS VARCHAR) AS {name}'
