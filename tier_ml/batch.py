"""The vectorized batch path of the rules engine, in SQL on DuckDB.

It implements the two definitions of ``tier_ml.rules`` (spend steps of an order,
tier replay) and the validation of ``tier_ml.events`` as set-based SQL, so a
million customers with ten million events classify in seconds on one machine.
A test proves it agrees with the reference path row for row.

The replay is the running maximum of the eligible tier inside segments that
restart at each instant where a downgrade is allowed::

    tier[t] = max(eligible[s..t])  where s = the last instant <= t at which
                                    t_s - last_placed_at >= downgrade_grace

Those instants are the grace ends (``p + grace`` for a placement not followed
by another within the grace period) and any step at which the customer is past
their grace period. The SQL below is written in plain window functions so the
same statements port to other SQL engines.

Other engines build on the stages, not on a copy of them: the Spark engine
(``tier_ml.engines.spark``) runs ``stateless_sql`` per partition and
``orders_sql`` + ``replay_stage`` + ``output_sql`` per bucket of customers, and
the feature pipeline (``features.build``) reads the tables ``run_pipeline``
documents through its ``on_stage`` hook and shares the replay's sort of the
placements through a ``PlacementsHook``. Those names (without a leading
underscore) are the engine's interface; everything else here may change.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tier_ml.arrow_numpy import arrow_table, to_arrow, to_numpy
from tier_ml.events import (
    AMOUNT_PATTERN,
    EVENT_FIELDS,
    TIME_PATTERN,
    EventReadError,
    detect_format,
    frame_records,
    is_frame,
    read_events,
    rejects_frame,
    too_large,
)
from tier_ml.money import MAX_AMOUNT
from tier_ml.parts import Part, customer_parts, map_on_threads, row_parts, run_starts
from tier_ml.policy import Policy
from tier_ml.replay_kernel import (
    KernelResult,
    eligible_tiers,
    replay_customers,
    replay_steady_customers,
)
from tier_ml.rules import classify

if TYPE_CHECKING:
    import pandas as pd

#: Columns of the rejects table written next to a classification.
REJECT_COLUMNS = ("row", "reason", "detail", *EVENT_FIELDS)


@dataclass
class BatchSummary:
    """What a batch classification saw: rows read, rejects by reason, customers per tier."""

    rows: int
    rejects_by_reason: dict[str, int]
    replays: int
    customers_by_tier: dict[str, int]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def rejects(self) -> int:
        return sum(self.rejects_by_reason.values())


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


def _read_error(source: str | Path, exc: duckdb.Error) -> EventReadError:
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
            raise _read_error(path, exc) from None
    types = _raw_types(con)
    missing = [
        n
        for n in ("event_id", "event_type", "order_id", "customer_id", "occurred_at")
        if n not in (types if present is None else present)
    ]
    if missing:
        found = sorted(types if present is None else present)
        raise EventReadError(f"{source}: missing required columns {missing}; found {found}")
    kept = ', "amount" AS amount_raw' if keeps_raw_fields(types) else ""
    con.execute(f"CREATE OR REPLACE TEMP VIEW src AS SELECT {_source_columns(types)}{kept} FROM src_raw")


#: Source column types whose text the engine can rebuild exactly from what validation keeps.
_REBUILT_TIMES = {
    "TIMESTAMP WITH TIME ZONE": "CAST(CAST(make_timestamp({at}) AS TIMESTAMPTZ) AS VARCHAR)",
    "TIMESTAMP": "CAST(make_timestamp({at}) AS VARCHAR)",
    "DATE": "CAST(CAST(make_timestamp({at}) AS DATE) AS VARCHAR)",
}
_NUMERIC_TYPES = ("DOUBLE", "FLOAT", "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "DECIMAL(")


def keeps_raw_fields(types: dict[str, str]) -> bool:
    """Whether rejects can be written without reading the source again (see ``_rejects_sql``).

    True for typed sources (Parquet with a timestamp or date ``occurred_at`` and a numeric
    ``amount``): every field of a row is then text validation keeps anyway, or rebuilt
    exactly from its typed value. Text sources (CSV, a DataFrame) keep their raw time and
    amount text only in the source, so their rejected rows are read from it again.
    """
    amount = types.get("amount", "")
    return types.get("occurred_at") in _REBUILT_TIMES and amount.startswith(_NUMERIC_TYPES)


def _source_columns(types: dict[str, str]) -> str:
    """The select list of view ``src`` over ``src_raw`` (whose column types are ``types``)."""
    return ", ".join(["row"] + [field_expr(name, types.get(name)) for name in EVENT_FIELDS])


def _raw_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
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


def _double(value: float) -> str:
    return f"CAST({float(value)!r} AS DOUBLE)"


def _threshold_case(policy: Policy, tier_expr: str, region_expr: str) -> str:
    """SQL for the spend threshold (micro-units) of tier index ``tier_expr`` in a region."""

    def ladder(region: str | None) -> str:
        thresholds = policy.thresholds_us(region)
        whens = " ".join(f"WHEN {i} THEN {t}" for i, t in enumerate(thresholds))
        return f"CASE {tier_expr} {whens} END"

    if not policy.regions:
        return ladder(None)
    regional = " ".join(f"WHEN {sql_literal(r)} THEN {ladder(r)}" for r in policy.regions)
    return f"CASE {region_expr} {regional} ELSE {ladder(None)} END"


def _eligible_case(policy: Policy, spend: str, orders: str, region: str) -> str:
    """SQL for the eligible tier index (rule 6): highest tier whose thresholds are both met."""

    def ladder(reg: str | None) -> str:
        thresholds = policy.thresholds_us(reg)
        whens = []
        for index in range(len(policy.tiers) - 1, 0, -1):
            condition = f"{spend} >= {thresholds[index]}"
            if policy.min_orders_list[index]:
                condition += f" AND {orders} >= {policy.min_orders_list[index]}"
            whens.append(f"WHEN {condition} THEN {index}")
        return f"CASE {' '.join(whens)} ELSE 0 END" if whens else "0"

    if not policy.regions:
        return ladder(None)
    regional = " ".join(f"WHEN {sql_literal(r)} THEN {ladder(r)}" for r in policy.regions)
    return f"CASE {region} {regional} ELSE {ladder(None)} END"


# Event types as small integers, ordered like their names (cancelled < placed < refunded),
# so ordering by the code orders like tier_ml.events orders by the name.
CANCELLED, PLACED, REFUNDED = 0, 1, 2
_KINDS = f"WHEN 'placed' THEN {PLACED} WHEN 'refunded' THEN {REFUNDED} WHEN 'cancelled' THEN {CANCELLED}"
_KIND_CODE = f"CASE event_type {_KINDS} ELSE CASE lower(event_type) {_KINDS} END END"


def _rate_sql(policy: Policy, column: str) -> str:
    """The fx rate of ``column`` (exact code first, then upper-cased), NULL when the policy has none."""
    rates = {policy.base_currency: 1.0, **policy.fx_rates}
    whens = " ".join(f"WHEN {sql_literal(code)} THEN {_double(rate)}" for code, rate in rates.items())
    return f"CASE {column} {whens} ELSE CASE upper({column}) {whens} END END"


#: The hash by which repeated ids are searched (``stateless_sql``, ``_ledger``): 32 bits
#: sort faster than 64, and a hash shared by chance only adds a candidate compared by
#: text. Tests set a constant to make every id a candidate.
ID_HASH = "CAST(hash({column}) >> 32 AS UINTEGER)"


def stateless_sql(policy: Policy, as_of_us: int, keep_raw: bool = False) -> str:
    """Per-row checks, in the same order as ``tier_ml.events.check_row``, into one table.

    ``ok`` marks the rows the rules see (valid, at or before ``as_of``); later rows
    stay with ``ok`` false rather than being filtered out here, because a filter on
    ``reason`` would evaluate every per-row check twice. A row whose time parses to
    after ``as_of`` has no ``reason`` either: it is invisible, not rejected (as in
    ``tier_ml.events.validate``); a row without a readable time is rejected.
    ``currency`` and ``channel`` are kept as read for the replay checks, and 32-bit hashes of ``event_id`` and
    ``order_id`` (``event_hash``, ``order_hash``, see ``ID_HASH``) are computed once
    here for the ledger's searches for repeated ids. Reject details are written later,
    only for rejected rows (see ``_rejects_sql``). With ``keep_raw`` (a typed source, see
    ``keeps_raw_fields``) two more columns keep what the rejects need of the source:
    ``amount_raw`` as read and ``event_type_text``, the event type's text unless it is
    exactly one of the three names (so nearly always NULL).
    """
    priced = f"kind <> {CANCELLED}"
    kept = (
        ", amount_raw, CASE WHEN event_type IN ('placed', 'refunded', 'cancelled') THEN NULL "
        "ELSE event_type END AS event_type_text" if keep_raw else ""
    )
    amount_us = f"CAST(floor(amount_num * rate * 1e6 + {_double(0.5)}) AS BIGINT)"
    return f"""
    CREATE OR REPLACE TEMP TABLE checked AS
    WITH typed AS (
        SELECT *, {_KIND_CODE} AS kind, {_rate_sql(policy, "currency")} AS rate FROM src
    ), judged AS (
        SELECT *,
           CASE
             WHEN at_us > {as_of_us} THEN NULL  -- rows after as_of are invisible, also for rejects
             WHEN event_id IS NULL OR event_type IS NULL OR order_id IS NULL OR customer_id IS NULL
               OR occurred_at_missing THEN 'missing_field'
             WHEN kind IS NULL THEN 'unknown_event_type'
             WHEN at_us IS NULL THEN 'unparseable_time'
             WHEN {priced} AND (amount_missing OR currency IS NULL) THEN 'missing_field'
             WHEN {priced} AND amount_num IS NULL THEN 'unparseable_amount'
             WHEN {priced} AND NOT amount_num > 0 THEN 'non_positive_amount'
             WHEN {priced} AND rate IS NULL THEN 'unknown_currency'
             WHEN {priced} AND amount_num * rate >= {_double(MAX_AMOUNT)} THEN 'unparseable_amount'
           END AS reason
        FROM typed
    )
    SELECT row, event_id, CAST(kind AS TINYINT) AS event_type, order_id, customer_id, at_us,
           CASE WHEN reason IS NULL AND {priced} THEN {amount_us} ELSE 0 END AS amount_us,
           coalesce(region, '') AS region, currency, channel,
           reason IS NULL AND at_us <= {as_of_us} AS ok,
           reason, {ID_HASH.format(column='event_id')} AS event_hash, {ID_HASH.format(column='order_id')} AS order_hash{kept}
    FROM judged
    """


def stateless_detail_sql(policy: Policy) -> str:
    """The detail of a per-row reject, from the raw fields of ``src`` aliased ``s``."""
    kind = _KIND_CODE.replace("event_type", "s.event_type")
    q = "'''"  # a quote inside a SQL string literal
    before_amount, after_amount = too_large("\0", policy).split("\0")
    return f"""
    CASE
      WHEN s.event_id IS NULL THEN 'event_id is missing'
      WHEN s.event_type IS NULL THEN 'event_type is missing'
      WHEN s.order_id IS NULL THEN 'order_id is missing'
      WHEN s.customer_id IS NULL THEN 'customer_id is missing'
      WHEN s.occurred_at_missing THEN 'occurred_at is missing'
      WHEN {kind} IS NULL
        THEN 'event_type {q} || s.event_type || {q} is not placed, refunded or cancelled'
      WHEN s.at_us IS NULL THEN 'occurred_at {q} || s.occurred_at || {q} is not an ISO 8601 time'
      WHEN s.amount_missing THEN 'amount is missing'
      WHEN s.currency IS NULL THEN 'currency is missing'
      WHEN s.amount_num IS NULL THEN 'amount {q} || s.amount || {q} is not a number'
      WHEN NOT s.amount_num > 0 THEN 'amount {q} || s.amount || {q} must be positive'
      WHEN {_rate_sql(policy, "s.currency")} IS NULL
        THEN 'currency {q} || upper(s.currency) || {q} has no fx rate in the policy'
      ELSE {sql_literal(before_amount)} || s.amount || {sql_literal(after_amount)}
    END"""


# Content that decides which copy of a replayed event_id is kept (as in tier_ml.events).
REPLAY_CONTENT = ("at_us", "event_type", "order_id", "customer_id", "amount_us", "currency", "channel", "region")


def _id_hashes(con: duckdb.DuckDBPyConnection, column: str, where: str) -> np.ndarray:
    """Hash ``column`` of the rows of ``checked`` that ``where`` selects, as a numpy array."""
    values = to_numpy(con.sql(f"SELECT {column} FROM checked WHERE {where}").to_arrow_table().column(0))
    return values if values.flags.writeable else values.copy()


def _repeated(values: np.ndarray) -> pa.Table:
    """The values found more than once in ``values`` (sorted in place), as a one-column table ``h``.

    Sorting ten million integers in numpy costs about half of grouping them in a
    DuckDB hash table (nearly every id is unique, so the table would hold them all).
    The values are 32-bit hashes, which sort in 60 % of the time of 64-bit ones; ten
    million ids then share about 12,000 of them by chance, which only add candidates
    that the comparison by text (``_ledger_sql``) discards.
    """
    values.sort()
    repeated = np.unique(values[1:][values[1:] == values[:-1]])
    return pa.table({"h": to_arrow(repeated, pa.uint32())})


def _ledger_sql() -> tuple[list[str], list[str]]:
    """Replays, then duplicate orders and orphan refunds, as in ``tier_ml.events.validate``.

    Repeated ids are first found by their 32-bit hash (tables ``repeated_events`` and
    ``repeated_orders``, see ``_ledger``); the few candidates are then compared by
    their text, so a shared hash only adds a candidate.
    """
    content = ", ".join(REPLAY_CONTENT)
    mine = ", ".join(f"r.{c}" for c in REPLAY_CONTENT)
    first = ", ".join(f"f.{c}" for c in REPLAY_CONTENT)
    replays = [
        f"""
        CREATE OR REPLACE TEMP TABLE copies AS
        WITH candidates AS (
            SELECT * REPLACE (upper(coalesce(currency, '')) AS currency, coalesce(channel, '') AS channel)
            FROM checked
            WHERE ok AND event_hash IN (SELECT h FROM repeated_events)
        ), repeated AS (
            SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY {content}, row) AS copy
            FROM candidates
        )
        SELECT r.row, r.event_id, r.copy, ({mine}) = ({first}) AS same_content
        FROM repeated r JOIN repeated f ON f.event_id = r.event_id AND f.copy = 1
        WHERE r.copy > 1
        """,
        # From here on ``ok`` also means "kept": replay copies are dropped (a flag update is
        # much cheaper than an anti-join on every later read of ten million rows).
        "UPDATE checked SET ok = false WHERE row IN (SELECT row FROM copies)",
        "CREATE OR REPLACE TEMP VIEW unique_events AS SELECT * FROM checked WHERE ok",
    ]
    orders = [
        f"""
        CREATE OR REPLACE TEMP TABLE placed_repeats AS
        SELECT row, order_id, event_id,
               row_number() OVER (PARTITION BY order_id ORDER BY at_us, event_id) AS nth,
               first_value(event_id) OVER (PARTITION BY order_id ORDER BY at_us, event_id) AS first_event_id
        FROM unique_events
        WHERE event_type = {PLACED} AND order_hash IN (SELECT h FROM repeated_orders)
        """,
        # Second placements of an order are dropped the same way.
        "UPDATE checked SET ok = false WHERE row IN (SELECT row FROM placed_repeats WHERE nth > 1)",
        f"CREATE OR REPLACE TEMP VIEW placed_orders AS SELECT * FROM checked WHERE ok AND event_type = {PLACED}",
        f"""
        CREATE OR REPLACE TEMP TABLE adjustments AS
        SELECT a.row, a.event_id, a.event_type, a.order_id, a.customer_id, a.at_us, a.amount_us,
               o.customer_id AS order_customer, o.at_us AS placed_at_us, o.amount_us AS value_us,
               o.row AS placed_row,
               CASE
                 WHEN o.order_id IS NULL OR o.at_us > a.at_us THEN 'unknown_order'
                 WHEN o.customer_id <> a.customer_id THEN 'customer_mismatch'
               END AS reason
        FROM unique_events a LEFT JOIN (
            -- only orders that are adjusted: a cheap filter on the hash before the join on text
            SELECT * FROM placed_orders
            WHERE order_hash IN (SELECT order_hash FROM unique_events WHERE event_type <> {PLACED})
        ) o ON o.order_id = a.order_id
        WHERE a.event_type <> {PLACED}
        """,
    ]
    return replays, orders


def _ledger(con: duckdb.DuckDBPyConnection) -> None:
    """Run ``_ledger_sql``: replays of ``event_id`` first, then repeated orders among the rest."""
    replays, orders = _ledger_sql()
    # Orders placed more than once are looked for before replays are dropped: a replayed
    # placement adds a candidate (compared by text later), and the two sorts, which
    # release the GIL, run side by side.
    events = _id_hashes(con, "event_hash", "ok")
    placed = _id_hashes(con, "order_hash", f"ok AND event_type = {PLACED}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        repeated_events, repeated_orders = pool.map(_repeated, [events, placed])
    del events, placed
    con.register("repeated_events", repeated_events)
    con.register("repeated_orders", repeated_orders)
    for sql in replays:
        con.execute(sql)
    for sql in orders:
        con.execute(sql)
    for column in ("event_hash", "order_hash"):  # done with: free them before the big sort
        con.execute(f"ALTER TABLE checked DROP COLUMN {column}")


def _kept_fields_sql(types: dict[str, str]) -> str:
    """The select list of ``src`` (fields as read, plus the parsed values the reject details
    use), rebuilt from the columns of ``checked`` for a typed source (``keeps_raw_fields``)."""
    names = {CANCELLED: "cancelled", PLACED: "placed", REFUNDED: "refunded"}
    kind_name = "CASE event_type " + " ".join(f"WHEN {c} THEN '{n}'" for c, n in names.items()) + " END"
    amount = "CAST(amount_raw AS DOUBLE)"
    return (
        f"row, event_id, coalesce(event_type_text, {kind_name}) AS event_type, order_id, customer_id, "
        f"{_REBUILT_TIMES[types['occurred_at']].format(at='at_us')} AS occurred_at, "
        "CAST(amount_raw AS VARCHAR) AS amount, currency, channel, nullif(region, '') AS region, "
        "at_us IS NULL AS occurred_at_missing, at_us, amount_raw IS NULL AS amount_missing, "
        f"CASE WHEN isfinite({amount}) THEN {amount} END AS amount_num"
    )


def _rejects_sql(policy: Policy, types: dict[str, str]) -> list[str]:
    """Every rejected row with its reason, detail and fields as read.

    The fields are computed for the rejected rows only, not for the whole input: from
    ``checked`` when it kept them (a typed source, see ``keeps_raw_fields``), else picked
    from the source by reading it again.
    """
    raw_fields = ", ".join(f"s.{n}" for n in EVENT_FIELDS)
    picked = (
        f"SELECT {_kept_fields_sql(types)} FROM checked"
        if keeps_raw_fields(types) else f"SELECT {_source_columns(types)} FROM src_raw"
    )
    return [f"""
    CREATE OR REPLACE TEMP TABLE reject_reasons AS
        SELECT row, reason, NULL AS detail FROM checked WHERE reason IS NOT NULL
        UNION ALL
        SELECT row, 'conflicting_replay', 'event_id ' || event_id || ' was already used for different content'
        FROM copies WHERE NOT same_content
        UNION ALL
        SELECT row, 'duplicate_order', 'order ' || order_id || ' was already placed by event ' || first_event_id
        FROM placed_repeats WHERE nth > 1
        UNION ALL
        SELECT row, reason,
               CASE reason
                 WHEN 'unknown_order'
                   THEN CASE event_type WHEN {REFUNDED} THEN 'refunded' ELSE 'cancelled' END
                        || ' event for order ' || order_id || ', not placed at or before it'
                 ELSE 'order ' || order_id || ' belongs to customer ' || order_customer
                      || ', not ' || customer_id
               END
        FROM adjustments WHERE reason IS NOT NULL
    """, f"""
    CREATE OR REPLACE TEMP TABLE rejects AS
    WITH picked AS ({picked} WHERE row IN (SELECT row FROM reject_reasons))
    SELECT f.row, f.reason, coalesce(f.detail, {stateless_detail_sql(policy)}) AS detail, {raw_fields}
    FROM reject_reasons f JOIN picked s ON s.row = f.row
    ORDER BY f.row, f.reason
    """, "DROP TABLE reject_reasons"]


def orders_sql(policy: Policy, as_of_us: int) -> list[str]:
    """Per order: what its refunds and cancels remove (definition 1 of ``tier_ml.rules``).

    Leaves ``order_adjustments`` (one row per adjusted order, keyed by its placement's
    ``placed_row``) and ``late_steps`` (late refunds and cancels that lower counted
    spend); the replay applies the first to the placements (``_spend_columns``) and
    merges the second into each customer's timeline.
    """
    buffer, window = policy.buffer_us, policy.window_us
    deduct = policy.late_refunds == "deduct"
    counts = "TRUE" if window is None else f"{window} > {buffer}"
    before_exit = "TRUE" if window is None else f"at_us < placed_at_us + {window}"
    late = "FALSE" if not deduct else (
        f"s.at_us >= s.placed_at_us + {buffer} AND s.removed > s.removed_before"
        + ("" if window is None else f" AND s.at_us < s.placed_at_us + {window}")
    )
    return [
        f"""
        CREATE OR REPLACE TEMP TABLE adjustment_steps AS
        -- removed_before is what the step before removed: the running sum less this step
        -- (0 for an order's first step), so one window pass gives both
        SELECT order_id, placed_row, customer_id, event_id, at_us, value_us, placed_at_us,
               least(value_us, running) AS removed, least(value_us, running - step) AS removed_before
        FROM (
            SELECT *, sum(step) OVER (PARTITION BY order_id ORDER BY at_us, event_id
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running
            FROM (
                SELECT order_id, placed_row, customer_id, event_id, at_us, value_us, placed_at_us,
                       CASE WHEN event_type = {CANCELLED} THEN value_us ELSE amount_us END AS step
                FROM adjustments WHERE reason IS NULL
            )
        )
        """,
        f"""
        CREATE OR REPLACE TEMP TABLE order_adjustments AS
        SELECT placed_row,  -- the order's placement: an integer key groups faster than order_id text
               CAST(coalesce(max(removed) FILTER (WHERE at_us < placed_at_us + {buffer}), 0) AS BIGINT)
                   AS removed_at_maturity,
               CAST(max(removed) AS BIGINT) AS removed_at_as_of,
               CAST(coalesce(max(removed) FILTER (WHERE {before_exit}), 0) AS BIGINT) AS removed_before_exit
        FROM adjustment_steps GROUP BY placed_row
        """,
        f"""
        CREATE OR REPLACE TEMP TABLE late_steps AS
        SELECT s.customer_id, s.at_us, CAST(s.removed_before - s.removed AS BIGINT) AS spend_us,
               CAST(CASE WHEN s.removed = s.value_us THEN -1 ELSE 0 END AS INTEGER) AS orders
        FROM adjustment_steps s
        JOIN order_adjustments a USING (placed_row)
        WHERE {counts} AND s.value_us > a.removed_at_maturity AND {late}
        """,
    ]


def _ladder_regions(policy: Policy) -> list[str]:
    """Regions with their own thresholds; ladder code ``i + 1`` is region ``i``, 0 the default."""
    return [region for region in policy.regions if region]


def _placements_sql(policy: Policy, key: str, extra: str, tie: str) -> str:
    """Every valid placement with its row and value, sorted by customer ``key``, instant and ``tie``.

    What refunds and cancels removed is applied afterwards (``_spend_columns``): a join to
    ``order_adjustments`` here would make every placement probe it by ``order_id`` text.
    """
    ladder = " ".join(f"WHEN {sql_literal(r)} THEN {i}" for i, r in enumerate(_ladder_regions(policy), start=1))
    rkey = f", CAST(CASE o.region {ladder} ELSE 0 END AS INTEGER) AS rkey" if ladder else ""
    return f"""
    SELECT {key} AS customer, o.at_us AS placed_at_us, o.row, o.amount_us{rkey}{extra}
    FROM placed_orders o
    ORDER BY customer, o.at_us{tie}
    """


def _spend_columns(
    con: duckdb.DuckDBPyConnection, policy: Policy, amount: np.ndarray, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """Per placement (``amount`` and ``rows`` in the placements' order): what it counts.

    ``counted_us`` at maturity and ``net_us`` at ``as_of`` are its value less what its
    refunds and cancels had removed by then; with a window, ``at_exit`` is what leaves
    the window with it (``removed_before_exit`` under ``deduct``). Adjusted orders
    (``order_adjustments``, one per order, about a tenth) are found by their placement's
    row. The rows are filled in parts on threads (``tier_ml.parts``): the lookups are
    scattered reads of a ten-million-row index, and one thread would leave a core idle.
    """
    buffer, window = policy.buffer_us, policy.window_us
    counts = window is None or window > buffer
    exit_name = "removed_before_exit" if policy.late_refunds == "deduct" else "removed_at_maturity"
    adjusted = con.sql(
        "SELECT placed_row, removed_at_maturity, removed_at_as_of, removed_before_exit FROM order_adjustments"
    ).to_arrow_table()
    removed = {name: to_numpy(adjusted.column(name)) for name in adjusted.column_names[1:]}
    small = np.int32 if adjusted.num_rows < 2**31 else np.int64  # half the memory to touch
    index = np.full(int(rows.max()) + 1 if len(rows) else 0, -1, dtype=small)
    index[to_numpy(adjusted.column("placed_row"))] = np.arange(adjusted.num_rows, dtype=small)
    columns = {"counted_us": np.empty_like(amount), "net_us": np.empty_like(amount)}
    if window is not None:
        columns["at_exit"] = np.empty_like(amount)

    def fill(part: slice) -> None:
        found = index[rows[part]]
        at = np.flatnonzero(found >= 0)
        which = found[at]
        value = amount[part]
        net = columns["net_us"][part]
        net[:] = value
        net[at] -= removed["removed_at_as_of"][which]
        counted = columns["counted_us"][part]
        counted[:] = value if counts else 0
        if counts:
            counted[at] -= removed["removed_at_maturity"][which]
        if window is not None:
            at_exit = columns["at_exit"][part]
            at_exit[:] = value if counts else 0
            if counts:
                adjusted_value = value[at]
                at_exit[at] = np.where(
                    adjusted_value > removed["removed_at_maturity"][which],
                    adjusted_value - removed[exit_name][which],
                    0,
                )

    map_on_threads(fill, row_parts(len(rows)))
    return columns


#: How customers are keyed for the sort of placements (a 64-bit hash of the id; see
#: ``_sorted_placements``). Tests set a constant to exercise the fallback for collisions.
CUSTOMER_HASH = "hash({column})"

#: Numeric columns of the sorted placements, as the kernel reads them.
_PLACEMENT_COLUMNS = ("placed_at_us", "rkey", "counted_us", "net_us", "at_exit")


@dataclass
class _Placements:
    """The sorted placements as numpy columns, and per customer their id and region (Arrow)."""

    columns: dict[str, np.ndarray]  # ckey (0, 1, ... per customer), then _PLACEMENT_COLUMNS
    starts: np.ndarray  # first row of each customer
    customer_ids: pa.Array | pa.ChunkedArray
    regions: pa.Array | pa.ChunkedArray  # the region of each customer's latest placement
    keys: np.ndarray | None  # the customers' 64-bit keys (sorted), None when keyed by text
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # a PlacementsHook's columns


@dataclass(frozen=True)
class SortedPlacements:
    """What a ``PlacementsHook`` receives: every valid placement at or before ``as_of``, sorted.

    Rows are sorted by customer (by ``keys``), then time; placements at one instant are in
    ``event_id`` order. ``columns`` holds ``placed_at_us`` and the hook's columns;
    ``starts`` the first row of each customer; ``keys`` each customer's
    ``CUSTOMER_HASH`` of ``customer_id``, or None when two ids shared one and the rows
    were sorted by the ids' text instead.
    """

    columns: dict[str, np.ndarray]
    starts: np.ndarray
    keys: np.ndarray | None


@dataclass(frozen=True)
class PlacementsHook:
    """Lets another stage share the replay's sort of the placements (``run_pipeline``).

    ``columns`` are extra per-placement values, as SQL over ``placed_orders o`` by name;
    they are sorted along with the replay's own, and ``receive`` gets them before the
    kernel runs (they are dropped afterwards).
    """

    columns: dict[str, str]
    receive: Callable[[SortedPlacements], None]


def _numpy_columns(table: pa.Table, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The columns ``names`` of ``table`` that it has, as numpy arrays, converted side by side.

    Joining DuckDB's chunks of a column into one array is mostly first writes to fresh
    memory (page faults), which threads take in parallel.
    """
    wanted = [name for name in names if name in table.column_names]
    return dict(zip(wanted, map_on_threads(lambda name: to_numpy(table.column(name)), wanted), strict=True))


def _placement_columns(
    arrays: dict[str, np.ndarray], first: np.ndarray, spare: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The kernel's columns: ``ckey`` from the customers' first rows, then ``_PLACEMENT_COLUMNS``.

    ``ckey`` is written into ``spare`` (a 64-bit array of the same length no longer
    needed) when given: memory already touched costs no page faults, while a fresh
    ten-million-row array costs 0.3 s of them on this machine.
    """
    ckey = np.cumsum(first, dtype=np.int64, out=None if spare is None else spare.view(np.int64))
    ckey -= 1  # in place, for the same reason
    columns = {"ckey": ckey}
    columns.update((name, arrays[name]) for name in _PLACEMENT_COLUMNS if name in arrays)
    if "at_exit" not in columns:  # no window
        columns["at_exit"] = np.zeros(len(first), dtype=np.int64)
    if "rkey" not in columns:  # no regional thresholds: one ladder
        columns["rkey"] = np.zeros(len(first), dtype=np.int32)
    return columns


def _sorted_placements(
    con: duckdb.DuckDBPyConnection, policy: Policy, extras: dict[str, str] | None = None
) -> _Placements:
    """Placements sorted by customer, with customer keys 0, 1, ... in that order.

    DuckDB sorts by a 64-bit hash of ``customer_id`` (sorting ten million rows by
    text, with text payload, costs several times more). A second, independent hash
    must be constant within every customer: if two customers ever share the first
    hash, the placements are sorted by the text instead. Placements at one instant
    are put in ``event_id`` order afterwards (ties are rare), and each customer's id
    and region are read for their last placement only. ``extras`` (name: SQL over
    ``placed_orders o``) are sorted along and returned in ``_Placements.extras``.
    """
    wanted = extras or {}
    more = "".join(f", {sql} AS {name}" for name, sql in wanted.items())
    key_sql = CUSTOMER_HASH.format(column="o.customer_id")
    table = con.sql(_placements_sql(policy, key_sql, f", hash(o.customer_id || '|') AS check_key{more}", "")
                    ).to_arrow_table()
    arrays = _numpy_columns(table, ("customer", "check_key", "row", "amount_us", *_PLACEMENT_COLUMNS, *wanted))
    del table
    key, check, rows = arrays.pop("customer"), arrays.pop("check_key"), arrays.pop("row")
    count = len(key)
    first = np.ones(count, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    if np.any(~first[1:] & (check[1:] != check[:-1])):  # a collision of the first hash
        del arrays, key, check, rows
        return _sorted_placements_by_text(con, policy, wanted)
    arrays.update(_spend_columns(con, policy, arrays.pop("amount_us"), rows))
    columns = _placement_columns(arrays, first, spare=check if check.flags.writeable else None)
    columns.update((name, arrays[name]) for name in wanted)  # reordered with the rest at ties
    del arrays, check
    tied = ~first[1:] & (columns["placed_at_us"][1:] == columns["placed_at_us"][:-1])
    if tied.any():
        rows = _order_ties_by_event_id(con, columns, rows, tied)
    starts = np.flatnonzero(first)
    lasts = np.append(starts[1:], count)[: len(starts)] - 1
    named = _lookup_rows(con, rows[lasts], "customer_id, region")
    extra_columns = {name: columns.pop(name) for name in wanted}
    return _Placements(
        columns, starts, named.column("customer_id"), named.column("region"), key[starts], extra_columns
    )


def _lookup_rows(con: duckdb.DuckDBPyConnection, rows: np.ndarray, fields: str) -> pa.Table:
    """``fields`` of the placements at ``rows``, in the order of ``rows``."""
    con.register("wanted_rows", arrow_table({"row": rows, "position": np.arange(len(rows))}))
    try:
        return con.sql(
            f"SELECT {fields} FROM wanted_rows w JOIN placed_orders p USING (row) ORDER BY w.position"
        ).to_arrow_table().combine_chunks()
    finally:
        con.unregister("wanted_rows")


def _order_ties_by_event_id(
    con: duckdb.DuckDBPyConnection, columns: dict[str, np.ndarray], rows: np.ndarray, tied: np.ndarray
) -> np.ndarray:
    """Within each run of placements of one customer at one instant, sort by ``event_id``.

    Only the region of a run's last placement matters to the rules (the others only
    add spend at the same instant), so this puts the largest ``event_id`` last.
    Returns ``rows`` in the new order (``columns`` are reordered in place).
    """
    member = np.zeros(len(rows), dtype=bool)
    member[1:] |= tied
    member[:-1] |= tied
    slots = np.flatnonzero(member)
    continues = np.zeros(len(slots), dtype=bool)  # the slot is tied to the row before it
    continues[slots > 0] = tied[slots[slots > 0] - 1]
    group = np.cumsum(~continues)  # one number per run
    runs = arrow_table({"group": group, "event_id": _lookup_rows(con, rows[slots], "event_id").column(0)})
    moved = slots[to_numpy(pc.sort_indices(runs, sort_keys=[("group", "ascending"), ("event_id", "ascending")]))]
    for name, values in [*columns.items(), ("row", rows)]:
        values = values if values.flags.writeable else values.copy()
        values[slots] = values[moved]
        columns[name] = values
    return columns.pop("row")


def _sorted_placements_by_text(
    con: duckdb.DuckDBPyConnection, policy: Policy, extras: dict[str, str]
) -> _Placements:
    """Placements sorted by ``customer_id`` text, ties by ``event_id``: exact whatever the ids."""
    more = "".join(f", {sql} AS {name}" for name, sql in extras.items())
    sql = _placements_sql(policy, "o.customer_id", f", o.region{more}", ", o.event_id")
    table = con.sql(sql).to_arrow_table()
    ids = table.column("customer").combine_chunks()
    count = len(ids)
    first = np.ones(count, dtype=bool)
    if count > 1:
        first[1:] = to_numpy(pc.not_equal(ids.slice(1), ids.slice(0, count - 1)))
    starts = np.flatnonzero(first)
    lasts = np.append(starts[1:], count)[: len(starts)] - 1
    regions = table.column("region").combine_chunks().take(to_arrow(lasts, pa.int64()))
    arrays = _numpy_columns(table, ("row", "amount_us", *_PLACEMENT_COLUMNS))
    arrays.update(_spend_columns(con, policy, arrays.pop("amount_us"), arrays.pop("row")))
    columns = _placement_columns(arrays, first)
    extra_columns = _numpy_columns(table, tuple(extras))
    return _Placements(columns, starts, ids.take(to_arrow(starts, pa.int64())), regions, None, extra_columns)


def _late_steps(con: duckdb.DuckDBPyConnection, placements: _Placements) -> dict[str, np.ndarray]:
    """Late refunds and cancels that lower counted spend, by customer key and instant."""
    key = "customer_id" if placements.keys is None else CUSTOMER_HASH.format(column="customer_id")
    table = con.sql(
        f"SELECT {key} AS customer, at_us, spend_us, orders FROM late_steps ORDER BY customer, at_us"
    ).to_arrow_table()
    if placements.keys is None:
        found = pc.index_in(table.column("customer"), value_set=placements.customer_ids)
        ckey = np.asarray(to_numpy(found), dtype=np.int64)
    else:
        ckey = np.searchsorted(placements.keys, to_numpy(table.column("customer"))).astype(np.int64)
    return {
        "ckey": ckey,
        "at_us": to_numpy(table.column("at_us")),
        "spend_us": to_numpy(table.column("spend_us")),
        "orders": to_numpy(table.column("orders")),
    }


def _outlook(policy: Policy, as_of_us: int, orders: dict[str, np.ndarray], starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per customer: pending spend (orders not matured at ``as_of``) and the next scheduled step."""
    placed_at = orders["placed_at_us"]
    matures = placed_at + policy.buffer_us
    pending = matures > as_of_us
    pending_us = np.add.reduceat(np.where(pending, orders["net_us"], 0), starts) if len(starts) else np.zeros(0, np.int64)
    never = np.iinfo(np.int64).max
    step = np.where(pending & (orders["counted_us"] > 0), matures, never)
    if policy.window_us is not None:
        leaves = placed_at + policy.window_us
        np.minimum(step, np.where((leaves > as_of_us) & (orders["at_exit"] > 0), leaves, never), out=step)
    next_step = np.minimum.reduceat(step, starts) if len(starts) else np.zeros(0, np.int64)
    return pending_us, next_step


def _outlook_in_parts(
    policy: Policy, as_of_us: int, orders: dict[str, np.ndarray], starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``_outlook`` over parts of whole customers (``tier_ml.parts``), joined in order."""

    def part_outlook(part: Part) -> tuple[np.ndarray, np.ndarray]:
        return _outlook(policy, as_of_us, _slice(orders, part.rows), starts[part.customers] - part.rows.start)

    outlooks = map_on_threads(part_outlook, customer_parts(starts, len(orders["ckey"])))
    if not outlooks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([p for p, _ in outlooks]), np.concatenate([n for _, n in outlooks])


def _timeline(
    policy: Policy, as_of_us: int, orders: dict[str, np.ndarray], late: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Kernel rows: placements, maturities, late refunds and window exits, sorted per customer.

    Every part comes sorted by (customer, instant), so the stable sort below only
    merges sorted runs; placements stay first (in their order) among rows of an instant.
    """
    ckey, placed_at, rkey = orders["ckey"], orders["placed_at_us"], orders["rkey"]
    counted, at_exit = orders["counted_us"], orders["at_exit"]
    count = len(ckey)
    parts = [(ckey, placed_at, np.zeros(count, np.int64), np.zeros(count, np.int32), np.ones(count, bool), rkey)]
    matures = placed_at + policy.buffer_us
    mask = (counted > 0) & (matures <= as_of_us)
    parts.append(_steps(ckey[mask], matures[mask], counted[mask], 1))
    if policy.window_us is not None:
        leaves = placed_at + policy.window_us
        mask = (at_exit > 0) & (leaves <= as_of_us)
        parts.append(_steps(ckey[mask], leaves[mask], -at_exit[mask], -1))
    count = len(late["ckey"])
    parts.append((late["ckey"], late["at_us"], late["spend_us"], late["orders"],
                  np.zeros(count, bool), np.zeros(count, np.int32)))
    names = ("ckey", "at_us", "spend_us", "orders", "placed", "rkey")
    rows = {name: np.concatenate([part[i] for part in parts]) for i, name in enumerate(names)}
    order = _customer_time_order(rows["ckey"], rows["at_us"])
    return {name: values[order] for name, values in rows.items()}


def _steps(ckey: np.ndarray, at: np.ndarray, spend: np.ndarray, orders: int) -> tuple[np.ndarray, ...]:
    n = len(ckey)
    return (ckey, at, spend, np.full(n, orders, np.int32), np.zeros(n, bool), np.zeros(n, np.int32))


def _customer_time_order(ckey: np.ndarray, at_us: np.ndarray) -> np.ndarray:
    """The stable permutation sorting rows by (customer, instant).

    One 64-bit key ``customer * span + time`` sorts fastest; the time unit is the
    coarsest that loses nothing (microseconds, milliseconds or seconds). When no
    unit fits in 63 bits, fall back to a two-key sort.
    """
    if len(ckey) == 0:
        return np.zeros(0, dtype=np.int64)
    origin = int(at_us.min())
    offset = at_us - origin
    first = int(ckey.min())
    customers = int(ckey.max()) - first + 1
    for unit in (1, 1_000, 1_000_000):
        if unit > 1 and np.any(offset % unit):
            break
        span = int(offset.max()) // unit + 1
        if customers * span < 2**62:
            key = (ckey.astype(np.int64) - first) * span
            key += offset // unit if unit > 1 else offset
            return np.argsort(key, kind="stable")
    return np.lexsort((at_us, ckey))


def _slice(columns: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {name: values[rows] for name, values in columns.items()}


def _run_kernel(
    policy: Policy, as_of_us: int, orders: dict[str, np.ndarray], late: dict[str, np.ndarray], starts: np.ndarray
) -> dict[str, np.ndarray]:
    """The replay of every customer: one value per customer key (0, 1, ...) for each state field.

    Customers whose eligible tier can never fall (see ``_steady_customers``) take the
    short path of the kernel; the others replay their full timeline. The work is cut into
    parts of whole customers that run side by side (``tier_ml.parts``).
    """
    ladders = [policy.thresholds_us(None), *(policy.thresholds_us(r) for r in _ladder_regions(policy))]
    thresholds = np.array(ladders, dtype=np.int64)
    min_orders = np.array(policy.min_orders_list, dtype=np.int64)
    steady = _steady_customers(policy, orders, late, starts, thresholds, min_orders)
    on_rows = np.repeat(steady, np.diff(np.append(starts, len(orders["ckey"]))))
    tasks: list[Callable[[], KernelResult]] = []
    if steady.any():
        # Every customer takes the short path (cheaper than picking the steady ones out of
        # ten million rows); the others' results are overwritten by their full replay below.
        for each in customer_parts(starts, len(orders["ckey"])):
            part = _slice(orders, each.rows)
            tasks.append(lambda part=part: replay_steady_customers(
                part["ckey"], part["placed_at_us"], part["counted_us"], part["rkey"],
                buffer_us=policy.buffer_us, thresholds=thresholds, min_orders=min_orders, as_of_us=as_of_us,
            ))
    rest = orders if not steady.any() else {name: values[~on_rows] for name, values in orders.items()}
    for each in customer_parts(run_starts(rest["ckey"]), len(rest["ckey"])):
        part = _slice(rest, each.rows)
        tasks.append(lambda part=part: _replay_part(policy, as_of_us, part, late, thresholds, min_orders))
    parts = map_on_threads(lambda task: task(), tasks)  # in order: full replays overwrite short ones
    state = {name: np.zeros(len(starts), dtype=np.int64) for name in KernelResult.__dataclass_fields__}
    for part in parts:
        for name, values in state.items():
            values[part.customer] = getattr(part, name)
    return state


def _replay_part(
    policy: Policy,
    as_of_us: int,
    part: dict[str, np.ndarray],
    late: dict[str, np.ndarray],
    thresholds: np.ndarray,
    min_orders: np.ndarray,
) -> KernelResult:
    """The full timeline replay of one part of whole customers (with their late steps)."""
    first, last = int(part["ckey"][0]), int(part["ckey"][-1])
    late_start, late_stop = np.searchsorted(late["ckey"], [first, last + 1], side="left")
    rows = _timeline(policy, as_of_us, part, _slice(late, slice(int(late_start), int(late_stop))))
    return replay_customers(
        rows["ckey"], rows["at_us"], rows["spend_us"], rows["orders"], rows["placed"], rows["rkey"],
        thresholds=thresholds, min_orders=min_orders, grace_us=policy.grace_us, as_of_us=as_of_us,
    )


def _steady_customers(
    policy: Policy,
    orders: dict[str, np.ndarray],
    late: dict[str, np.ndarray],
    starts: np.ndarray,
    thresholds: np.ndarray,
    min_orders: np.ndarray,
) -> np.ndarray:
    """Per customer: can their eligible tier never fall? (Then their tier is simply it.)

    It can fall only through a late refund step, a window exit, or a move to a
    region with higher thresholds; and the short path assumes nothing is eligible
    for more than the default tier before anything is spent.
    """
    steady = np.ones(len(starts), dtype=bool)
    nothing_spent = eligible_tiers(
        np.zeros(len(thresholds), np.int64), np.zeros(len(thresholds), np.int64),
        np.arange(len(thresholds)), thresholds, min_orders,
    )
    if policy.window_us is not None or np.any(nothing_spent):
        steady[:] = False
        return steady
    steady[late["ckey"]] = False
    if len(thresholds) > 1:
        ckey, rkey = orders["ckey"], orders["rkey"]
        moved = (ckey[1:] == ckey[:-1]) & (rkey[1:] != rkey[:-1])
        steady[ckey[1:][moved]] = False
    return steady


def replay_stage(
    con: duckdb.DuckDBPyConnection, policy: Policy, as_of_us: int, hook: PlacementsHook | None = None
) -> None:
    """Replay every customer with the numpy kernel and store table ``customer_state``.

    ``hook``, when given, receives the sorted placements with its own columns before the
    kernel runs (see ``PlacementsHook``).
    """
    placements = _sorted_placements(con, policy, hook.columns if hook is not None else None)
    if hook is not None:
        shared = {"placed_at_us": placements.columns["placed_at_us"], **placements.extras}
        hook.receive(SortedPlacements(shared, placements.starts, placements.keys))
        del shared
        placements.extras.clear()
    late = _late_steps(con, placements)
    for table in ("checked", "adjustments", "adjustment_steps", "late_steps"):
        con.execute(f"DROP TABLE IF EXISTS {table}")  # free memory before the kernel
    orders = placements.columns
    state = _run_kernel(policy, as_of_us, orders, late, placements.starts)
    pending_us, next_step = _outlook_in_parts(policy, as_of_us, orders, placements.starts)
    del orders, late
    protected = state["tier"] > state["eligible"]
    grace_end = state["last_placed_us"] + policy.grace_us
    scheduled = next_step != np.iinfo(np.int64).max
    next_change = np.where(protected, np.minimum(grace_end, np.where(scheduled, next_step, grace_end)), next_step)
    columns = {
        "customer_id": placements.customer_ids,
        "tier": state["tier"],
        "eligible": state["eligible"],
        "qualifying_us": state["qualifying_us"],
        "qualifying_orders": state["qualifying_orders"],
        "region": placements.regions,
        "last_placed_us": state["last_placed_us"],
        "tier_since_us": state["tier_since_us"],
        "tier_changes": state["tier_changes"],
        "pending_us": pending_us,
        "grace_ends_at_us": to_arrow(grace_end, pa.int64(), mask=~protected),
        "next_change_at_us": to_arrow(next_change, pa.int64(), mask=~(protected | scheduled)),
    }
    kernel_state = arrow_table(columns)
    con.register("kernel_state", kernel_state)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE customer_state AS SELECT * FROM kernel_state")
    finally:
        con.unregister("kernel_state")


def output_sql(policy: Policy) -> str:
    names = "[" + ", ".join(sql_literal(n) for n in policy.tier_names) + "]"
    top = len(policy.tiers) - 1
    next_threshold = _threshold_case(policy, "tier + 1", "region")

    def money(expr: str) -> str:
        return f"CAST(CAST(({expr} + 5000) // 10000 AS DECIMAL(18, 0)) / 100 AS DECIMAL(18, 2))"

    def instant(expr: str) -> str:
        return (
            f"CASE WHEN {expr} % 1000000 = 0 THEN strftime(make_timestamp({expr}), '%Y-%m-%dT%H:%M:%SZ') "
            f"ELSE strftime(make_timestamp({expr}), '%Y-%m-%dT%H:%M:%S.%fZ') END"
        )

    # A view: the file writer and the summary read it once each, so storing it would only add a copy.
    return f"""
    CREATE OR REPLACE TEMP VIEW tiers_out AS
    SELECT customer_id,
           {names}[tier + 1] AS tier,
           {money('qualifying_us')} AS qualifying_spend,
           {money('pending_us')} AS pending_spend,
           {names}[eligible + 1] AS eligible_tier,
           {instant('tier_since_us')} AS tier_since,
           qualifying_orders,
           CASE WHEN tier < {top} THEN {names}[tier + 2] END AS next_tier,
           CASE WHEN tier < {top} THEN {money(f'greatest(0, {next_threshold} - qualifying_us)')} END
               AS spend_to_next_tier,
           region,
           {instant('last_placed_us')} AS last_order_at,
           {instant('grace_ends_at_us')} AS grace_ends_at,
           {instant('next_change_at_us')} AS next_change_at,
           tier_changes
    FROM customer_state
    """


PIPELINE_STAGES = ("validate", "ledger", "rejects", "orders", "replay", "output")


def run_pipeline(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    source: str | Path | pd.DataFrame,
    as_of_us: int,
    on_stage: Callable[[str], None] | None = None,
    placements_hook: PlacementsHook | None = None,
) -> None:
    """Run every stage; leaves tables ``tiers_out``, ``customer_state`` and ``rejects`` in ``con``.

    ``on_stage(name)`` is called after each stage of ``PIPELINE_STAGES``. What a hook
    may read: after ``validate``, view ``src`` (the source as text, one row per input
    row); after ``orders`` (and until ``replay`` frees them), view ``placed_orders``
    (valid placements at or before ``as_of``, replays and repeated orders removed:
    ``row, event_id, order_id, customer_id, at_us, amount_us, region, currency,
    channel``) and table ``adjustments`` (refunds and cancels with ``reason`` NULL
    when valid); after ``replay``, table ``customer_state`` (one row per customer, in
    micro-units and epoch microseconds). ``placements_hook`` receives the replay's sorted
    placements with its own columns (see ``PlacementsHook``), during ``replay``.
    """
    register_source(con, source)
    stages: dict[str, Callable[[], None]] = {
        "validate": lambda: con.execute(stateless_sql(policy, as_of_us, keeps_raw_fields(_raw_types(con)))),
        "ledger": lambda: _ledger(con),
        "rejects": lambda: [con.execute(sql) for sql in _rejects_sql(policy, _raw_types(con))],
        "orders": lambda: [con.execute(sql) for sql in orders_sql(policy, as_of_us)],
        "replay": lambda: replay_stage(con, policy, as_of_us, placements_hook),
        "output": lambda: con.execute(output_sql(policy)),
    }
    for name in PIPELINE_STAGES:
        try:
            stages[name]()
        except (duckdb.InvalidInputException, duckdb.IOException) as exc:
            # validate and rejects read the source in full: a row that breaks the file's
            # format is found there (registering it only read a sample)
            if name not in ("validate", "rejects") or is_frame(source):
                raise
            raise _read_error(source, exc) from None
        if on_stage is not None:
            on_stage(name)


def summarize(con: duckdb.DuckDBPyConnection, policy: Policy) -> BatchSummary:
    """Counts for the command's summary: rows, rejects per reason, customers per tier."""
    rows = con.execute("SELECT count(*) FROM src").fetchone()[0]
    by_reason = dict(
        con.execute(
            "SELECT reason, count(*) FROM rejects GROUP BY reason ORDER BY reason"
        ).fetchall()
    )
    replays = con.execute("SELECT count(*) FROM copies WHERE same_content").fetchone()[0]
    per_tier = dict(con.execute("SELECT tier, count(*) FROM tiers_out GROUP BY tier").fetchall())
    ordered = {name: int(per_tier.get(name, 0)) for name in policy.tier_names}
    return BatchSummary(
        rows=int(rows), rejects_by_reason=by_reason, replays=int(replays), customers_by_tier=ordered
    )


def classify_frame(
    policy: Policy, source: str | Path | pd.DataFrame, as_of_us: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Classify in memory: the tiers table and the rejects table as pandas frames."""
    con = connect()
    try:
        run_pipeline(con, policy, source, as_of_us)
        return con.execute("SELECT * FROM tiers_out ORDER BY customer_id").df(), con.execute(
            "SELECT * FROM rejects ORDER BY row, reason"
        ).df()
    finally:
        con.close()


def write_table(
    con: duckdb.DuckDBPyConnection, table: str, out: Path, order_by: str | None = None
) -> None:
    """Write a result table as CSV or Parquet, by the file's suffix (rows in ``order_by`` order)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = "FORMAT PARQUET" if out.suffix.lower() in {".parquet", ".pq"} else "FORMAT CSV, HEADER"
    query = table if order_by is None else f"(SELECT * FROM {table} ORDER BY {order_by})"
    con.execute(f"COPY {query} TO {sql_literal(str(out))} ({fmt})")


def classify_to_files(
    policy: Policy,
    source: str | Path | pd.DataFrame,
    as_of_us: int,
    out: Path,
    rejects_out: Path | None = None,
    on_stage: Any = None,
) -> BatchSummary:
    """The ``tier-ml classify`` job: classify a file and write tiers (and rejects)."""
    con = connect()
    try:
        run_pipeline(con, policy, source, as_of_us, on_stage=on_stage)
        write_table(con, "tiers_out", out, order_by="customer_id")
        if rejects_out is not None:
            write_table(con, "rejects", rejects_out, order_by="row, reason")
        return summarize(con, policy)
    finally:
        con.close()


def classify_reference_to_files(
    policy: Policy, source: str | Path, as_of_us: int, out: Path, rejects_out: Path | None = None
) -> BatchSummary:
    """The same job on the reference path (plain Python): for checking and debugging."""
    frame = read_events(source)
    result = classify(policy, frame_records(frame), as_of_us)
    con = connect()
    try:
        con.register("tiers_frame", _as_text_columns(result.frame()))
        con.execute("CREATE TEMP TABLE tiers_out AS SELECT * FROM tiers_frame")
        write_table(con, "tiers_out", out)
        if rejects_out is not None:
            con.register("rejects_frame", rejects_frame(result.rejects))
            con.execute("CREATE TEMP TABLE rejects AS SELECT * FROM rejects_frame")
            write_table(con, "rejects", rejects_out)
    finally:
        con.close()
    counts = {name: 0 for name in policy.tier_names}
    for state in result.tiers.values():
        counts[policy.tier_names[state.tier]] += 1
    by_reason: dict[str, int] = {}
    for reject in result.rejects:
        by_reason[str(reject.reason)] = by_reason.get(str(reject.reason), 0) + 1
    return BatchSummary(len(frame), dict(sorted(by_reason.items())), result.replays, counts)


def _as_text_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Instants as ISO 8601 text with Z, money with two decimals: the batch path's file format."""
    import pandas as pd

    frame = frame.copy()
    for name in ("tier_since", "last_order_at", "grace_ends_at", "next_change_at"):
        frame[name] = frame[name].map(lambda v: None if v is None or pd.isna(v) else _iso(v))
    for name in ("qualifying_spend", "pending_spend", "spend_to_next_tier"):
        frame[name] = frame[name].map(lambda v: None if v is None or pd.isna(v) else f"{v:.2f}")
    return frame


def _iso(instant: Any) -> str:
    text = instant.strftime("%Y-%m-%dT%H:%M:%S.%f").removesuffix(".000000")
    return text + "Z"


def classify_states(policy: Policy, source: str | Path | pd.DataFrame, as_of_us: int) -> pa.Table:
    """Classify and return the engine's own state per customer (table ``customer_state``:
    tier indexes, integer micro-units, epoch microseconds), not the rounded text of
    ``tiers_out``: the tier store's policy re-apply stores these values exactly."""
    con = connect()
    try:
        run_pipeline(con, policy, source, as_of_us)
        return con.sql("SELECT * FROM customer_state").to_arrow_table()
    finally:
        con.close()
