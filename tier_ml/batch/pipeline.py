"""The stages in order (``run_pipeline``) and the jobs built on them: files, frames, states."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from tier_ml.batch.ledger import ledger_stage
from tier_ml.batch.orders import orders_sql
from tier_ml.batch.output import output_sql, typed_tiers_sql
from tier_ml.batch.placements import PlacementsHook
from tier_ml.batch.rejects import rejects_sql
from tier_ml.batch.replay import replay_stage
from tier_ml.batch.source import (
    connect,
    keeps_raw_fields,
    raw_types,
    read_error,
    read_events,
    register_source,
    sql_literal,
)
from tier_ml.batch.validation import stateless_sql
from tier_ml.events import EVENT_FIELDS, frame_records, is_frame, rejects_frame
from tier_ml.policy import Policy
from tier_ml.rules import classify

if TYPE_CHECKING:
    import pandas as pd

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
    types = raw_types(con)
    keep_raw = keeps_raw_fields(types)  # validation keeps what the rejects need of a typed source
    stages: dict[str, Callable[[], None]] = {
        "validate": lambda: con.execute(stateless_sql(policy, as_of_us, keep_raw)),
        "ledger": lambda: ledger_stage(con),
        "rejects": lambda: [con.execute(sql) for sql in rejects_sql(policy, types, keep_raw)],
        "orders": lambda: [con.execute(sql) for sql in orders_sql(policy, as_of_us)],
        "replay": lambda: replay_stage(con, policy, as_of_us, placements_hook),
        "output": lambda: con.execute(output_sql(policy)),
    }
    for name in PIPELINE_STAGES:
        try:
            stages[name]()
        except duckdb.Error as exc:
            # validate and rejects read the source in full: a row that breaks the file's
            # format is found there (registering it only read a sample). DuckDB raises
            # some reader errors as its base class, so the stage decides, not the type.
            if name not in ("validate", "rejects") or is_frame(source):
                raise
            raise read_error(source, exc) from None
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


#: Result file suffixes other than CSV (the format of any other name, ``/dev/stdout`` too).
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
JSON_LINES_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})  # as the store's exports


def copy_format(out: Path | str) -> str:
    """DuckDB ``COPY`` options for a result file by its suffix: Parquet, JSON lines (one
    object per row; money as a number with two decimals, a missing value null) or CSV."""
    suffix = Path(out).suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "FORMAT PARQUET"
    if suffix in JSON_LINES_SUFFIXES:
        return "FORMAT JSON"
    return "FORMAT CSV, HEADER"


def write_table(
    con: duckdb.DuckDBPyConnection, table: str, out: Path, order_by: str | None = None
) -> None:
    """Write a result table as CSV, Parquet or JSON lines, by the file's suffix (rows in
    ``order_by`` order)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = copy_format(out)
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
    write_tiers_frame(result.frame(), out)
    if rejects_out is not None:
        con = connect()
        try:
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


def write_tiers_frame(frame: pd.DataFrame, out: Path) -> None:
    """Write a tiers frame (money in whole cents, instants as timestamps or ISO text) exactly as
    the batch path writes its tiers file: CSV, Parquet or JSON lines, typed by ``TIERS_FILE_TYPES``."""
    con = connect()
    try:
        con.register("tiers_frame", _as_text_columns(frame))
        con.execute(f"CREATE TEMP VIEW tiers_typed AS {typed_tiers_sql('tiers_frame')}")
        write_table(con, "tiers_typed", out)
    finally:
        con.close()


def _as_text_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Instants as ISO 8601 text with Z, money with two decimals: the batch path's file format."""
    import pandas as pd

    frame = frame.copy()
    for name in ("tier_since", "last_order_at", "grace_ends_at", "next_change_at"):
        frame[name] = frame[name].map(
            lambda v: None if v is None or pd.isna(v) else v if isinstance(v, str) else _iso(v)
        )
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
