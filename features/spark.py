"""Feature tables on Apache Spark: the feature SQL of ``features.sql``, run by Spark SQL.

The DuckDB path (``features.build``) runs ``behaviour_sql`` over the batch
engine's validated events and ``features_sql`` over its tier states. Here the
Spark engine (``tier_ml.engines.spark``) produces the same two relations - the
validated ledger and every customer's tier state, by buckets of customers - and
Spark SQL runs the same statement text on them. Features equal the DuckDB path
to float tolerance (only a standard deviation is a sum of doubles whose order
may differ).

Training stays single-machine: after aggregation a feature row per customer
and cutoff is small, and ``sample_fraction`` keeps a deterministic share of
customers (by a hash of the id) when even that is too big for one machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.build import _as_of_us, attach_labels, finish_frame, usable_cutoffs
from features.registry import FEATURE_COLUMNS, KEY_COLUMNS, LABEL_COLUMNS
from features.schema import validate_feature_frame
from features.sql import batch_events_sql, batch_tiers_sql, behaviour_sql, features_sql
from tier_ml.engines.spark import (
    Ledger,
    bucket_count,
    build_ledger,
    check_rows,
    customer_stage,
    read_source,
    spark_session,
)
from tier_ml.money import days_to_micros, micros_to_instant
from tier_ml.policy import Policy

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EventsSource = str | Path | pd.DataFrame


def _register_ledger(spark: SparkSession, ledger: Ledger) -> None:
    """The relations ``features.sql`` reads, under the batch engine's names."""
    ledger.placed_orders.createOrReplaceTempView("placed_orders")
    ledger.adjustments.createOrReplaceTempView("adjustments")


def features_at(
    spark: SparkSession,
    raw: DataFrame,
    policy: Policy,
    as_of_us: int,
    sample_fraction: float | None = None,
) -> tuple[DataFrame, Callable[[], None]]:
    """Lazy Spark feature rows as of ``as_of_us`` (``customer_id`` then ``FEATURE_COLUMNS``).

    Returns the frame and a function that frees the cached stage once it is used.
    """
    checked = check_rows(raw, policy, as_of_us)
    full = build_ledger(checked)
    ledger = _sampled(full, sample_fraction)
    _register_ledger(spark, ledger)
    spark.sql(batch_events_sql()).createOrReplaceTempView("feature_events")
    spark.sql(behaviour_sql("feature_events", as_of_us)).createOrReplaceTempView(
        "feature_behaviour"
    )
    states = customer_stage(spark, ledger, policy, as_of_us, "state", bucket_count(spark, raw))
    states.createOrReplaceTempView("customer_state")
    spark.sql(batch_tiers_sql()).createOrReplaceTempView("feature_tiers")
    frame = spark.sql(features_sql(policy, as_of_us, "feature_behaviour", "feature_tiers"))

    def release() -> None:
        full.release()
        checked.unpersist()

    return frame, release


def _sampled(ledger: Ledger, fraction: float | None) -> Ledger:
    """Keep a deterministic share of customers (by a hash of the id): the same ones at every cutoff."""
    if fraction is None or fraction >= 1:
        return ledger
    from pyspark.sql import functions as F

    keep = F.pmod(F.xxhash64("customer_id"), F.lit(1_000_000)) < int(fraction * 1_000_000)
    return Ledger(
        placed_orders=ledger.placed_orders.filter(keep),
        adjustments=ledger.adjustments.filter(keep),
        rejects=ledger.rejects,
        replays=ledger.replays,
    )


def build_features_spark(
    events: EventsSource,
    policy: Policy,
    as_of: datetime | int,
    spark: SparkSession | None = None,
    sample_fraction: float | None = None,
) -> pd.DataFrame:
    """``features.build_features`` on Spark: the same frame (columns, dtypes, rows)."""
    spark = spark or spark_session()
    as_of_us = _as_of_us(as_of)
    frame, release = features_at(
        spark, read_source(spark, events), policy, as_of_us, sample_fraction
    )
    try:
        rows = frame.toPandas()
    finally:
        release()
    return validate_feature_frame(finish_frame(rows, as_of_us))


def write_features_spark(
    events: EventsSource,
    policy: Policy,
    cutoffs: Iterable[datetime | int],
    out: str | Path,
    spark: SparkSession | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> int:
    """Features at every cutoff written by Spark (a Parquet file or folder); returns the row count.

    For tables too big to collect: rows stay on the executors. A local ``.parquet``
    or ``.csv`` path gets one file (``tier_ml.engines.spark.write_frame``); any
    other target a folder of parts.
    """
    from pyspark.sql import functions as F

    from tier_ml.engines.spark import write_frame

    spark = spark or spark_session()
    raw = read_source(spark, events)
    parts, releases = [], []
    for cutoff_us in sorted({_as_of_us(c) for c in cutoffs}):
        frame, release = features_at(spark, raw, policy, cutoff_us)
        cutoff = F.lit(micros_to_instant(cutoff_us)).cast("timestamp").alias("cutoff")
        parts.append(frame.select("customer_id", cutoff, *FEATURE_COLUMNS).localCheckpoint())
        releases.append(release)
        if on_progress is not None:
            on_progress(f"features {micros_to_instant(cutoff_us):%Y-%m-%d}")
    try:
        table = parts[0]
        for part in parts[1:]:
            table = table.unionByName(part)
        write_frame(table, out, order_by=("cutoff", "customer_id"))
        return table.count()
    finally:
        for release in releases:
            release()


def _future_at(
    spark: SparkSession, raw: DataFrame, policy: Policy, cutoff_us: int, horizon_us: int
) -> pd.DataFrame:
    """Per customer at ``t + h``: the engine's tier rank and valid orders placed after ``t``."""
    from pyspark.sql import functions as F

    at = cutoff_us + horizon_us
    checked = check_rows(raw, policy, at)
    try:
        ledger = build_ledger(checked)
        buckets = bucket_count(spark, raw)
        states = customer_stage(spark, ledger, policy, at, "state", buckets).select(
            "customer_id", F.col("tier").alias("horizon_rank")
        )
        future = (
            ledger.placed_orders.filter(F.col("at_us") > cutoff_us)
            .groupBy("customer_id")
            .agg(F.count("*").alias("future_orders"))
        )
        rows = states.join(future, "customer_id", "left").fillna(0, ["future_orders"]).toPandas()
        ledger.release()
    finally:
        checked.unpersist()
    return rows


def build_training_set_spark(
    events: EventsSource,
    policy: Policy,
    cutoffs: Iterable[datetime | int],
    horizon_days: float = 90,
    *,
    data_end: datetime | int | None = None,
    spark: SparkSession | None = None,
    sample_fraction: float | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """``features.build_training_set`` on Spark; the labelled rows come back to the driver.

    ``sample_fraction`` keeps that share of customers (the same ones at every
    cutoff) so a training set from a hundred million customers fits one machine.
    """
    spark = spark or spark_session()
    raw = read_source(spark, events)
    end_us = _data_end_us(raw, policy) if data_end is None else _as_of_us(data_end)
    horizon_us = days_to_micros(horizon_days)
    parts = []
    for cutoff_us in usable_cutoffs(cutoffs, horizon_days, end_us):
        frame, release = features_at(spark, raw, policy, cutoff_us, sample_fraction)
        try:
            features = finish_frame(frame.toPandas(), cutoff_us)
        finally:
            release()
        future = _future_at(spark, raw, policy, cutoff_us, horizon_us)
        parts.append(attach_labels(features, future, policy))
        if on_progress is not None:
            on_progress(f"features and labels {micros_to_instant(cutoff_us):%Y-%m-%d}")
    if not parts:
        empty = finish_frame(pd.DataFrame(columns=["customer_id", *FEATURE_COLUMNS]), 0)
        empty["churned"] = pd.Series(dtype=np.int64)
        for column in LABEL_COLUMNS[1:]:
            empty[column] = pd.Series(dtype=object)
        parts = [empty]
    frame = pd.concat(parts, ignore_index=True)[[*KEY_COLUMNS, *FEATURE_COLUMNS, *LABEL_COLUMNS]]
    return validate_feature_frame(frame, labels=True)


def _data_end_us(raw: DataFrame, policy: Policy) -> int | None:
    """The latest time of a row that passes the per-row checks (epoch µs), as
    ``features.build.data_end_us`` reads it."""
    from pyspark.sql import functions as F

    checked = check_rows(raw, policy, 2**62)
    try:
        value = checked.filter(F.col("reason").isNull()).agg(F.max("at_us")).collect()[0][0]
    finally:
        checked.unpersist()
    return None if value is None else int(value)


def build_feature_sets_spark(
    events: EventsSource,
    policy: Policy,
    cutoffs: Iterable[datetime | int],
    spark: SparkSession | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """``features.build_feature_sets`` on Spark: features at every cutoff, stacked, on the driver."""
    spark = spark or spark_session()
    raw = read_source(spark, events)
    parts = []
    for cutoff_us in sorted({_as_of_us(c) for c in cutoffs}):
        frame, release = features_at(spark, raw, policy, cutoff_us)
        try:
            parts.append(finish_frame(frame.toPandas(), cutoff_us))
        finally:
            release()
        if on_progress is not None:
            on_progress(f"features {micros_to_instant(cutoff_us):%Y-%m-%d}")
    if not parts:
        return finish_frame(pd.DataFrame(columns=["customer_id", *FEATURE_COLUMNS]), 0)
    return validate_feature_frame(pd.concat(parts, ignore_index=True))


def data_end_us_spark(
    events: EventsSource, policy: Policy, spark: SparkSession | None = None
) -> int | None:
    """``features.build.data_end_us`` on Spark (for a folder of Parquet files too)."""
    spark = spark or spark_session()
    return _data_end_us(read_source(spark, events), policy)
