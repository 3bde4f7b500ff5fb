"""Batch features and labels: many customers, one or many cutoffs, on DuckDB.

For a cutoff ``t`` the batch rules engine (``tier_ml.batch.run_pipeline``)
validates the events visible at ``t`` and replays every customer's tier. The
feature SQL (``features.sql``) then runs in the same DuckDB connection: the
event features over the engine's validated events (captured right after its
``orders`` stage, before it frees them), the tier features over its tier
states. Nothing after ``t`` is read: the engine drops rows after ``t`` before
validation and the SQL filters on ``t`` again.

Labels for a cutoff ``t`` and horizon ``h`` come from the same engine run at
``t + h``: ``tier_at_horizon`` is the rules engine's tier then, ``churned``
says whether the customer placed no valid order in ``(t, t + h]``.
"""

from __future__ import annotations

import calendar
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from features.placements import ENGINE_COLUMNS, customers_match, placement_join_sql, placement_runs
from features.registry import FEATURE_COLUMNS, KEY_COLUMNS, LABEL_COLUMNS
from features.schema import coerce_feature_types, validate_feature_frame
from features.sql import (
    batch_events_sql,
    batch_removals_sql,
    batch_tiers_sql,
    behaviour_aggregates_sql,
    behaviour_features_sql,
    features_sql,
)
from tier_ml.batch import (
    PIPELINE_STAGES,
    PlacementsHook,
    SortedPlacements,
    checked_select,
    connect,
    register_source,
    run_pipeline,
)
from tier_ml.money import days_to_micros, instant_to_micros, micros_to_instant
from tier_ml.policy import Policy

EventsSource = str | Path | pd.DataFrame
Progress = Callable[[str], None]


def _as_of_us(as_of: datetime | int) -> int:
    if isinstance(as_of, int):
        return as_of
    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware, got {as_of!r}")
    return instant_to_micros(as_of)


def _source(events: EventsSource) -> EventsSource:
    return events if isinstance(events, pd.DataFrame) else Path(events)


@contextmanager
def _reusable_source(events: EventsSource) -> Iterator[EventsSource]:
    """The events in a form that is cheap to read many times.

    A file is read as it is. A DataFrame is turned into the engine's text columns
    once (``register_source`` does that on every run) and kept in a temporary
    Parquet file for the runs of a multi-cutoff build.
    """
    if not isinstance(events, pd.DataFrame):
        yield Path(events)
        return
    with tempfile.TemporaryDirectory(prefix="tier-ml-features-") as folder:
        path = Path(folder) / "events.parquet"
        con = connect()
        try:
            register_source(con, events)
            con.execute(f"COPY (SELECT * EXCLUDE (row) FROM src_raw ORDER BY row) TO '{path}' (FORMAT PARQUET)")
        finally:
            con.close()
        yield path


def _cutoff_column(rows: int, as_of_us: int) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.full(rows, as_of_us, dtype="datetime64[us]")).tz_localize("UTC")


def finish_frame(frame: pd.DataFrame, as_of_us: int) -> pd.DataFrame:
    """Key columns first (``customer_id``, ``cutoff`` as a UTC timestamp), registry dtypes.

    ``frame`` has ``customer_id`` and ``FEATURE_COLUMNS`` in any order and dtypes (as an
    engine returns them); the result is a new frame, built with one copy of the data.
    """
    frame = coerce_feature_types(frame)
    columns: dict[str, object] = {
        "customer_id": frame["customer_id"].to_numpy(dtype=object),
        "cutoff": _cutoff_column(len(frame), as_of_us),
    }
    columns.update((name, frame[name].to_numpy()) for name in FEATURE_COLUMNS)
    return pd.DataFrame(columns)


def arrow_feature_frame(table: pa.Table, as_of_us: int) -> pd.DataFrame:
    """``finish_frame`` for an Arrow table of ``features_sql`` rows: one conversion, no pandas copies.

    The SQL already gives every column its registry type (BIGINT, DOUBLE, text), so
    Arrow's conversion yields the registry dtypes; any other type is coerced.
    """
    cutoff = pa.array(np.full(table.num_rows, as_of_us, dtype=np.int64), type=pa.timestamp("us", tz="UTC"))
    table = table.append_column("cutoff", cutoff).select([*KEY_COLUMNS, *FEATURE_COLUMNS])
    frame = table.to_pandas(self_destruct=True)
    del table
    return coerce_feature_types(frame)


#: Progress steps of one engine run: the rules engine's stages, then the feature (or label) query.
STEPS_PER_RUN = len(PIPELINE_STAGES) + 1


def _engine_run(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    source: EventsSource,
    as_of_us: int,
    after_orders: Sequence[str | Callable[[], None]] = (),
    on_progress: Progress | None = None,
    label: str = "",
    placements_hook: PlacementsHook | None = None,
) -> None:
    """Run the rules engine as of ``as_of_us``; ``after_orders`` (SQL statements or functions) run
    after its ``orders`` stage, before it frees its tables; ``placements_hook`` shares its replay's sort."""

    def on_stage(stage: str) -> None:
        if stage == "orders":
            for step in after_orders:
                if callable(step):
                    step()
                else:
                    con.execute(step)
        if on_progress is not None:
            on_progress(f"{label}: {stage}")

    run_pipeline(con, policy, source, as_of_us, on_stage=on_stage, placements_hook=placements_hook)


def _day(instant_us: int) -> str:
    return f"{micros_to_instant(instant_us):%Y-%m-%d}"


#: The batch path's event aggregates come from ``features.placements`` (the engine's sorted
#: placements, reduced in numpy); False computes them with the SQL definition instead. Both give
#: the same values (tests compare them); the SQL is the fallback when customer keys collide.
SORTED_PLACEMENTS = True


def _capture_aggregates(con: duckdb.DuckDBPyConnection, as_of_us: int, sorted_placements: bool) -> None:
    """At the engine's ``orders`` stage: table ``feature_removals`` (the refund parts the sorted
    placements' runs are joined with later), or table ``feature_aggregates`` by the SQL definition."""
    if sorted_placements:
        con.execute(f"CREATE OR REPLACE TEMP TABLE feature_removals AS {batch_removals_sql(as_of_us)}")
        return
    events = f"({batch_events_sql()})"
    con.execute(f"CREATE OR REPLACE TEMP TABLE feature_aggregates AS {behaviour_aggregates_sql(events, as_of_us)}")


def _join_placements(con: duckdb.DuckDBPyConnection, placements: pa.Table) -> bool:
    """Store table ``feature_aggregates`` from the runs and the engine's customers; False if they differ."""
    con.register("feature_placements", placements)
    try:
        if not customers_match(con, placements, "customer_state"):
            return False
        con.execute(
            "CREATE OR REPLACE TEMP TABLE feature_aggregates AS "
            + placement_join_sql("feature_placements", "customer_state", "feature_removals")
        )
        [(joined,)] = con.execute("SELECT count(*) FROM feature_aggregates").fetchall()
        if joined != placements.num_rows:  # not the same customers: cannot happen with the engine as it is
            return False
    finally:
        con.unregister("feature_placements")
    return True


def _features_in(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    source: EventsSource,
    as_of_us: int,
    on_progress: Progress | None = None,
    sorted_placements: bool | None = None,
) -> pd.DataFrame:
    use_sorted = SORTED_PLACEMENTS if sorted_placements is None else sorted_placements
    runs: list[pa.Table | None] = []
    label = f"features {_day(as_of_us)}"

    def receive(placements: SortedPlacements) -> None:
        runs.append(placement_runs(placements, as_of_us))

    hook = PlacementsHook(ENGINE_COLUMNS, receive) if use_sorted else None
    capture = [lambda: _capture_aggregates(con, as_of_us, use_sorted)]
    _engine_run(con, policy, source, as_of_us, capture, on_progress, label, hook)
    placements = runs.pop() if runs else None
    joined = use_sorted and placements is not None and _join_placements(con, placements)
    del placements  # when joined, the runs are in table feature_aggregates now
    con.execute("DROP TABLE IF EXISTS feature_removals")
    if use_sorted and not joined:
        # two customers share a key (the engine sorted by text), a sum could overflow, or the
        # runs are not the engine's customers: the run is repeated, quietly, with the SQL definition
        frame = _features_in(con, policy, source, as_of_us, None, sorted_placements=False)
    else:
        behaviour = f"({behaviour_features_sql('feature_aggregates')})"
        sql = features_sql(policy, as_of_us, behaviour, f"({batch_tiers_sql()})")
        frame = arrow_feature_frame(con.sql(sql).to_arrow_table(), as_of_us)
        con.execute("DROP TABLE IF EXISTS feature_aggregates")
    if on_progress is not None:
        on_progress(f"{label}: done")
    return frame


def build_features(
    events: EventsSource,
    policy: Policy,
    as_of: datetime | int,
    *,
    validate: bool = True,
    on_progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per customer with a valid placed order at or before ``as_of``.

    Columns ``customer_id``, ``cutoff`` then ``FEATURE_COLUMNS``; sorted by customer.
    ``events``: a canonical events file (Parquet, CSV, JSON lines) or a DataFrame of
    canonical events. The schema is checked before the frame is returned.
    ``on_progress`` is called after each of ``STEPS_PER_RUN`` steps.
    """
    as_of_us = _as_of_us(as_of)
    con = connect()
    try:
        frame = _features_in(con, policy, _source(events), as_of_us, on_progress)
    finally:
        con.close()
    return validate_feature_frame(frame) if validate else frame


def _labels_in(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    source: EventsSource,
    cutoff_us: int,
    horizon_us: int,
    on_progress: Progress | None = None,
) -> pd.DataFrame:
    """Per customer at ``cutoff + horizon``: the rules engine's tier rank and valid orders after the cutoff."""
    capture = [
        "CREATE OR REPLACE TEMP TABLE label_orders AS "
        f"SELECT customer_id, count(*) AS future_orders FROM placed_orders WHERE at_us > {cutoff_us} "
        "GROUP BY customer_id"
    ]
    label = f"labels {_day(cutoff_us)}"
    _engine_run(con, policy, source, cutoff_us + horizon_us, capture, on_progress, label)
    future = con.execute(
        "SELECT s.customer_id, s.tier AS horizon_rank, coalesce(o.future_orders, 0) AS future_orders "
        "FROM customer_state s LEFT JOIN label_orders o ON o.customer_id = s.customer_id"
    ).df()
    if on_progress is not None:
        on_progress(f"{label}: done")
    return future


def attach_labels(features: pd.DataFrame, future: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """Add ``churned``, ``tier_at_cutoff``, ``tier_at_horizon``, ``tier_change`` to a feature frame."""
    merged = features.merge(future, on="customer_id", how="left", validate="one_to_one")
    if merged["horizon_rank"].isna().any():  # cannot happen: a customer at t is a customer at t + h
        raise RuntimeError("a customer at the cutoff has no tier at the horizon")
    horizon = merged.pop("horizon_rank").astype(np.int64).to_numpy()
    future_orders = merged.pop("future_orders").astype(np.int64).to_numpy()
    names = np.array(policy.tier_names, dtype=object)
    now = merged["tier_rank"].to_numpy()
    merged["churned"] = (future_orders == 0).astype(np.int64)
    merged["tier_at_cutoff"] = merged["tier"].astype(object)
    merged["tier_at_horizon"] = names[horizon]
    merged["tier_change"] = np.select([horizon < now, horizon > now], ["down", "up"], "same").astype(object)
    return merged


def data_end_us(events: EventsSource, policy: Policy) -> int | None:
    """The latest time of an event in ``events`` that passes the per-row checks under
    ``policy`` (epoch µs), None when there is none.

    A rejected row does not extend the data: one row with a mistyped year (2099) would
    otherwise keep every late cutoff, and label its uncovered window as churn.
    """
    con = connect()
    try:
        register_source(con, _source(events))
        checked = checked_select(policy, as_of_us=2**62)  # no row is after it
        value = con.execute(f"SELECT max(at_us) FROM ({checked}) WHERE reason IS NULL").fetchone()[0]
    finally:
        con.close()
    return None if value is None else int(value)


def usable_cutoffs(cutoffs: Iterable[datetime | int], horizon_days: float, end_us: int | None) -> list[int]:
    """Cutoffs (epoch µs, sorted, unique) whose label window ``(t, t + h]`` ends by the data's end."""
    horizon_us = days_to_micros(horizon_days)
    instants = sorted({_as_of_us(c) for c in cutoffs})
    if end_us is None:
        return []
    return [t for t in instants if t + horizon_us <= end_us]


def build_training_set(
    events: EventsSource,
    policy: Policy,
    cutoffs: Iterable[datetime | int],
    horizon_days: float = 90,
    *,
    data_end: datetime | None = None,
    on_progress: Progress | None = None,
) -> pd.DataFrame:
    """Features for every usable cutoff plus labels from the rules engine on ``(t, t + h]``.

    A cutoff is usable when ``t + h`` is at or before the data's end (``data_end``,
    else the latest event time), so no label is computed on a window the data does
    not cover. Rows are sorted by cutoff then customer; the schema (labels included)
    is checked. ``on_progress`` is called after each step (``2 * STEPS_PER_RUN`` a cutoff).
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    end_us = _as_of_us(data_end) if data_end is not None else data_end_us(_source(events), policy)
    horizon_us = days_to_micros(horizon_days)
    parts = []
    kept = usable_cutoffs(cutoffs, horizon_days, end_us)
    with _reusable_source(events) if len(kept) > 1 else nullcontext(_source(events)) as source:
        for cutoff_us in kept:
            con = connect()
            try:
                features = _features_in(con, policy, source, cutoff_us, on_progress)
                future = _labels_in(con, policy, source, cutoff_us, horizon_us, on_progress)
            finally:
                con.close()
            parts.append(attach_labels(features, future, policy))
    if parts:
        frame = pd.concat(parts, ignore_index=True)
    else:
        frame = finish_frame(pd.DataFrame(columns=["customer_id", *FEATURE_COLUMNS]), 0)
        frame["churned"] = pd.Series(dtype=np.int64)
        for column in LABEL_COLUMNS[1:]:
            frame[column] = pd.Series(dtype=object)
    frame = frame[[*KEY_COLUMNS, *FEATURE_COLUMNS, *LABEL_COLUMNS]]
    return validate_feature_frame(frame, labels=True)


def build_feature_sets(
    events: EventsSource, policy: Policy, cutoffs: Iterable[datetime | int], *, on_progress: Progress | None = None
) -> pd.DataFrame:
    """Features (no labels) at every cutoff, stacked: for scoring or backtests. The schema is checked once."""
    instants = sorted({_as_of_us(c) for c in cutoffs})
    parts = []
    with _reusable_source(events) if len(instants) > 1 else nullcontext(_source(events)) as source:
        for cutoff_us in instants:
            parts.append(build_features(source, policy, cutoff_us, validate=False, on_progress=on_progress))
    if not parts:
        return finish_frame(pd.DataFrame(columns=["customer_id", *FEATURE_COLUMNS]), 0)
    return validate_feature_frame(parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True))


def _month_start(day: date) -> date:
    return day.replace(day=1)


def monthly_cutoffs(start: date | datetime, end: date | datetime) -> list[datetime]:
    """Midnight UTC on the first day of every month from ``start`` to ``end`` (both inclusive).

    A ``start`` that is not a month's first day begins at the next month.
    """
    first = start.date() if isinstance(start, datetime) else start
    last = end.date() if isinstance(end, datetime) else end
    month = _month_start(first)
    if month < first:
        month = month + timedelta(days=calendar.monthrange(month.year, month.month)[1])
    cutoffs = []
    while month <= last:
        cutoffs.append(datetime(month.year, month.month, 1, tzinfo=UTC))
        month = month + timedelta(days=calendar.monthrange(month.year, month.month)[1])
    return cutoffs
