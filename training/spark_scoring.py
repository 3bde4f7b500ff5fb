"""Batch scoring on Apache Spark: features on Spark, the MLflow models applied per partition.

The driver resolves ``models:/<name>@<alias>`` to versions, downloads both
pyfunc models once and ships them to the executors with ``SparkContext.addFile``
(as ``mlflow.pyfunc.spark_udf`` does), so executors never need the tracking
server. ``mapInPandas`` then loads each model once per Python worker and runs
``training.scoring.score_features`` - the scoring of the single-machine path -
on every Arrow batch of feature rows. The result has ``SCORE_COLUMNS`` then
``INTERVAL_COLUMNS`` (the churn probability's interval, the model kind) and equals
``training.scoring.score`` up to float tolerance (features are equal to float
tolerance; the models are the same).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.build import _as_of_us, finish_frame
from tier_ml.engines.spark import read_source, spark_session, write_frame
from tier_ml.policy import Policy
from training.scoring import (
    INTERVAL_COLUMNS,
    SCORE_COLUMNS,
    LoadedModels,
    alias_versions,
    score_features,
    versions_text,
)
from training.tracking import CHURN_MODEL_NAME, TIER_CHANGE_MODEL_NAME, use_tracking

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SCORES_SCHEMA = (
    "customer_id string, tier string, churn_probability double, p_upgrade double, "
    "p_downgrade double, churn_model_version string, tier_change_model_version string, "
    "churn_probability_low double, churn_probability_high double, churn_model_kind string"
)
#: The columns of ``training.scoring.score``, in its order.
OUTPUT_COLUMNS = SCORE_COLUMNS + INTERVAL_COLUMNS

_LOADED: dict[str, Any] = {}  # per Python worker: model folder -> loaded pyfunc model


def ship_models(
    spark: SparkSession, alias: str = "champion", tracking_uri: str | None = None
) -> dict[str, tuple[str, str]]:
    """Download both models behind ``alias`` and add them to the job's files.

    Returns ``{model name: (version, folder name in SparkFiles)}``.
    """
    import mlflow
    from mlflow import MlflowClient

    use_tracking(tracking_uri)
    versions = alias_versions(MlflowClient(), alias)
    shipped = {}
    folder = Path(tempfile.mkdtemp(prefix="tier-ml-models-"))
    for name, version in versions.items():
        target = folder / f"{name}-v{version}"
        target.mkdir()
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(target)
        )
        spark.sparkContext.addFile(local, recursive=True)
        shipped[name] = (version, Path(local).name)
    return shipped


def _model(folder: str) -> Any:
    """The pyfunc model shipped as ``folder``, loaded once per worker process."""
    if folder not in _LOADED:
        import mlflow
        from pyspark import SparkFiles

        _LOADED[folder] = mlflow.pyfunc.load_model(SparkFiles.get(folder))
    return _LOADED[folder]


def _score_batches(
    shipped: dict[str, tuple[str, str]], as_of_us: int
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The per-partition scorer for ``mapInPandas``: feature batches in, score batches out."""
    churn_version, churn_folder = shipped[CHURN_MODEL_NAME]
    change_version, change_folder = shipped[TIER_CHANGE_MODEL_NAME]

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        models = LoadedModels(
            churn=_model(churn_folder),
            tier_change=_model(change_folder),
            churn_version=churn_version,
            tier_change_version=change_version,
        )
        for batch in batches:
            if len(batch):
                yield score_features(finish_frame(batch, as_of_us), models)[OUTPUT_COLUMNS]

    return run


def score_spark(
    events: str | Path | pd.DataFrame,
    policy: Policy,
    as_of: datetime,
    model_alias: str = "champion",
    tracking_uri: str | None = None,
    spark: SparkSession | None = None,
) -> tuple[DataFrame, Callable[[], None]]:
    """Lazy Spark scores (``OUTPUT_COLUMNS``) and a function that frees the cached stage."""
    from features.spark import features_at

    spark = spark or spark_session()
    as_of_us = _as_of_us(as_of)
    shipped = ship_models(spark, model_alias, tracking_uri)
    features, release = features_at(spark, read_source(spark, events), policy, as_of_us)
    scores = features.mapInPandas(_score_batches(shipped, as_of_us), SCORES_SCHEMA)
    return scores, release


def score_spark_frame(
    events: str | Path | pd.DataFrame,
    policy: Policy,
    as_of: datetime,
    model_alias: str = "champion",
    tracking_uri: str | None = None,
    spark: SparkSession | None = None,
) -> pd.DataFrame:
    """``training.scoring.score`` on Spark, collected (sorted by customer, like the file)."""
    scores, release = score_spark(events, policy, as_of, model_alias, tracking_uri, spark)
    try:
        frame = scores.toPandas()
    finally:
        release()
    return frame.sort_values("customer_id").reset_index(drop=True)[OUTPUT_COLUMNS]


def score_spark_to_file(
    events: str | Path | pd.DataFrame,
    policy: Policy,
    as_of: datetime,
    out: str | Path,
    model_alias: str = "champion",
    tracking_uri: str | None = None,
    spark: SparkSession | None = None,
) -> pd.DataFrame:
    """Score on Spark and write ``out`` (one local file, or a folder/URI of parts).

    Returns a one-row-per-version summary (customers scored per model version pair).
    """
    scores, release = score_spark(events, policy, as_of, model_alias, tracking_uri, spark)
    try:
        from pyspark import StorageLevel

        scores = scores.persist(StorageLevel.MEMORY_AND_DISK)
        write_frame(scores, out, order_by=("customer_id",))
        summary = (
            scores.groupBy("churn_model_version", "tier_change_model_version").count().toPandas()
        )
        scores.unpersist()
    finally:
        release()
    return summary


def score_command_spark(
    events: Path,
    policy: Policy,
    as_of: datetime,
    out: Path,
    model_alias: str = "champion",
    tracking_uri: str | None = None,
) -> str:
    """``tier-ml score --engine spark``: score, write ``out``, return the summary line."""
    import time

    began = time.perf_counter()
    spark = spark_session()
    summary = score_spark_to_file(events, policy, as_of, out, model_alias, tracking_uri, spark)
    total = int(summary["count"].sum()) if len(summary) else 0
    return (
        f"scored {total:,} customers on Spark with @{model_alias} ({versions_text(summary)}); "
        f"wrote {out} in {time.perf_counter() - began:.1f}s"
    )
