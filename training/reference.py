"""The reference data of a model: a seeded sample of its training rows, logged with the run.

Why: drift monitoring compares live features with what the model learned from. The
training run logs ``reference/features.parquet`` (the feature table and labels at
every cutoff it used, at most ``ROWS_PER_CUTOFF`` customers per cutoff, with the
``part`` each cutoff belonged to: ``train``, ``calibration`` or ``validation``), so
``tier-ml monitor --reference <run or models:/ URI>`` finds it years later without the
original events file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import pandas as pd

REFERENCE_DIR = "reference"
REFERENCE_FILE = "features.parquet"
REFERENCE_ARTIFACT = f"{REFERENCE_DIR}/{REFERENCE_FILE}"
ROWS_PER_CUTOFF = 5000
LABEL_COLUMNS = ("churned", "tier_change")


def reference_sample(
    data: pd.DataFrame,
    parts: dict[str, Iterable[datetime]],
    rows_per_cutoff: int = ROWS_PER_CUTOFF,
    seed: int = 0,
) -> pd.DataFrame:
    """``customer_id``, ``cutoff``, ``part``, the feature columns and the labels: at most
    ``rows_per_cutoff`` seeded rows per cutoff, oldest cutoff first."""
    from features import FEATURE_COLUMNS

    part_of = {_utc(cutoff): name for name, cutoffs in parts.items() for cutoff in cutoffs}
    labels = [c for c in LABEL_COLUMNS if c in data.columns]
    frame = data[["customer_id", "cutoff", *FEATURE_COLUMNS, *labels]]
    cutoffs = pd.to_datetime(frame["cutoff"], utc=True)
    pieces = []
    for cutoff, rows in frame.groupby(cutoffs, sort=True):
        cutoff = _utc(cutoff)
        if len(rows) > rows_per_cutoff:
            rows = rows.sample(rows_per_cutoff, random_state=seed).sort_values("customer_id")
        rows = rows.copy()
        rows.insert(2, "part", part_of.get(cutoff, "unused"))
        pieces.append(rows)
    if not pieces:
        return frame.assign(part=pd.Series(dtype=object))
    return pd.concat(pieces, ignore_index=True)


def _utc(value: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def log_reference(
    data: pd.DataFrame,
    parts: dict[str, Iterable[datetime]],
    seed: int = 0,
    rows_per_cutoff: int = ROWS_PER_CUTOFF,
) -> int:
    """Log the reference sample to the active MLflow run; returns the rows logged."""
    import mlflow

    sample = reference_sample(data, parts, rows_per_cutoff, seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / REFERENCE_FILE
        sample.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=REFERENCE_DIR)
    mlflow.log_param("reference_rows", len(sample))
    return len(sample)


def download_reference(run_id: str, tracking_uri: str | None = None) -> pd.DataFrame | None:
    """The run's reference sample, or None when the run logged none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=REFERENCE_ARTIFACT, tracking_uri=tracking_uri
        )
    except (MlflowException, OSError):
        return None
    return pd.read_parquet(path)
