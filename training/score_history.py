"""Score history: every scheduled ``tier-ml score`` run kept, so runs can be compared over time.

Why: campaigns, reviews and the drift monitor ask "how did this customer's churn
risk move?" and "did the new model version score differently?". Each run is
appended to a Parquet dataset folder (default ``scores/``), hive-partitioned by
the date of the scores' ``as_of``::

    scores/date=2025-07-01/scores-20250701T000000Z-churn-v3.parquet

One file per (as_of, churn model version): re-running the same job replaces its
file instead of duplicating rows; a new model version on the same day adds a file.
Columns: the scores (``training.scoring.SCORE_COLUMNS``) plus ``as_of`` (the instant
scored), ``scored_at`` (when the run happened) and ``model_version`` (the churn
model's). Any engine that reads hive-partitioned Parquet (DuckDB, Spark, pandas)
reads the folder.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pandas as pd

DEFAULT_HISTORY_DIR = "scores"
PARTITION = "date"


def _utc(instant: datetime | pd.Timestamp, name: str) -> pd.Timestamp:
    stamp = pd.Timestamp(instant)
    if stamp.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got {instant!r}")
    return stamp.tz_convert("UTC")


def history_file(folder: str | Path, as_of: datetime, model_version: str) -> Path:
    """Where the run for ``as_of`` scored with churn model ``model_version`` is kept."""
    stamp = _utc(as_of, "as_of")
    safe_version = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(model_version))
    return (
        Path(folder)
        / f"{PARTITION}={stamp:%Y-%m-%d}"
        / f"scores-{stamp:%Y%m%dT%H%M%S}Z-churn-v{safe_version}.parquet"
    )


def append_scores(
    scores: pd.DataFrame,
    folder: str | Path,
    as_of: datetime,
    scored_at: datetime,
    model_version: str | None = None,
) -> Path:
    """Keep one scoring run in the history; returns the file written.

    ``model_version`` defaults to the frame's ``churn_model_version`` (one value per run).
    The file is written to a temporary name and renamed, so a reader never sees half a run.
    """
    if model_version is None:
        versions = scores["churn_model_version"].dropna().astype(str).unique() if "churn_model_version" in scores else []
        if len(versions) > 1:
            raise ValueError(f"one scoring run has one model version, got {sorted(versions)}")
        model_version = versions[0] if len(versions) else "unknown"
    path = history_file(folder, as_of, model_version)
    frame = scores.reset_index(drop=True).copy()
    frame["as_of"] = _utc(as_of, "as_of")
    frame["scored_at"] = _utc(scored_at, "scored_at")
    frame["model_version"] = str(model_version)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(partial, index=False)
    os.replace(partial, path)
    return path


def read_history(
    folder: str | Path,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Every kept run (optionally with ``since <= as_of <= until``), oldest first, with the
    ``date`` partition as a column."""
    folder = Path(folder)
    files = sorted(folder.glob(f"{PARTITION}=*/scores-*.parquet"))
    if not files:
        return pd.DataFrame()
    parts = []
    for file in files:
        part = pd.read_parquet(file)
        part[PARTITION] = file.parent.name.split("=", 1)[1]
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    if since is not None:
        frame = frame[frame["as_of"] >= _utc(since, "since")]
    if until is not None:
        frame = frame[frame["as_of"] <= _utc(until, "until")]
    return frame.sort_values(["as_of", "model_version", "customer_id"], kind="stable").reset_index(drop=True)


def read_scores(path: str | Path) -> pd.DataFrame:
    """A scores file (or folder) written by ``tier-ml score``: CSV or Parquet."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, dtype={"churn_model_version": str, "tier_change_model_version": str})
    return pd.read_parquet(path)
