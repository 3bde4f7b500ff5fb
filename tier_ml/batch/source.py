"""Reading: the events file (CSV, JSON lines, Parquet) or a DataFrame as view ``src``.

Every field is exposed as trimmed text (``field_expr``), plus the parsed instant
``at_us`` and amount ``amount_num`` that validation checks; the row number is the
1-based position in the input, which rejects report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from tier_ml.events import (
    AMOUNT_PATTERN,
    EVENT_FIELDS,
    TIME_PATTERN,
    EventReadError,
    detect_format,
    is_frame,
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


#: JSON lines are read with every event field as text, as written: types the reader would
#: infer from a sample (a time, a number) fail on a later row that does not fit them.
_JSON_FIELDS = "{" + ", ".join(f"{sql_literal(name)}: 'VARCHAR'" for name in EVENT_FIELDS) + "}"


def read_error(source: str | Path, exc: duckdb.Error) -> EventReadError:
    """One line for a file DuckDB cannot read (its messages run to many lines of hints)."""
    kind = detect_format(Path(source))
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    hint = " (does every row have the header's fields, comma separated?)" if "sniffing" in first else ""
    return EventReadError(f"{source}: cannot read {kind} events: {first}{hint}")


def register_source(con: duckdb.DuckDBPyConnection, source: str | Path | pd.DataFrame) -> None:
    """Expose the input as view ``src`` with the nine event fields and a 1-based ``row``."""
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
            scan = f"SELECT row_number() OVER () AS row, * FROM read_csv({quoted}, all_varchar = true, header = true)"
        else:
            scan = f"SELECT row_number() OVER () AS row, * FROM read_json({quoted}, format = 'newline_delimited', columns = {_JSON_FIELDS})"
        try:
            if kind == "jsonl":  # the keys the file has (from a sample), for the check below
                described = f"DESCRIBE SELECT * FROM read_json({quoted}, format = 'newline_delimited')"
                present = {name for name, *_ in con.execute(described).fetchall()}
            con.execute(f"CREATE OR REPLACE TEMP VIEW src_raw AS {scan}")
            con.execute("SELECT * FROM src_raw LIMIT 0")
        except duckdb.Error as exc:
            raise read_error(path, exc) from None
    types = raw_types(con)
    missing = [
        n
        for n in ("event_id", "event_type", "order_id", "customer_id", "occurred_at")
        if n not in (types if present is None else present)
    ]
    if missing:
        found = sorted(types if present is None else present)
        raise EventReadError(f"{source}: missing required columns {missing}; found {found}")
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
    """The select list of view ``src`` over ``src_raw`` (whose column types are ``types``)."""
    return ", ".join(["row"] + [field_expr(name, types.get(name)) for name in EVENT_FIELDS])


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
        elif typed and column_type.startswith("TIMESTAMP"):  # _NS, _MS, _S (pandas writes _NS)
            zoned = "TIME ZONE" in column_type or column_type.startswith("TIMESTAMPTZ")
            parsed = f'epoch_us(CAST("{name}" AS {"TIMESTAMPTZ" if zoned else "TIMESTAMP"}))'
        elif typed and column_type == "DATE":
            parsed = f'epoch_us(CAST("{name}" AS TIMESTAMP))'
        else:
            raw = _text_expr(name, column_type)
            parsed = (
                f"CASE WHEN regexp_full_match({raw}, {sql_literal(TIME_PATTERN)}) "
                f"THEN epoch_us(TRY_CAST({raw} AS TIMESTAMPTZ)) END"
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
