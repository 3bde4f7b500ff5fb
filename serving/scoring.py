"""Predictions from the store: features computed as of now, then the loaded models.

- one customer: ``features.store_customer_features`` (the online path) and both models;
- many customers: their ledger rows from the store, ``features.build_features`` (the
  batch path, the same definition), both models in one call;
- the at-risk list of a tier: every customer of the tier scored in one batch, kept for
  ``TIER_ML_AT_RISK_CACHE_SECONDS`` under the store's content version and the model
  versions (a new event, tier change, policy or model invalidates it).
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine

from serving.errors import Problem
from serving.models import ModelSet, predict_frame
from tier_ml.money import micros_to_instant
from tier_ml.policy import Policy
from tier_ml.store.views import ledger_rows, segment_page, store_version


def _features_module() -> Any:
    try:
        import features
    except ImportError as exc:  # pragma: no cover - the package ships with tier-ml
        raise Problem(503, f"the features package is not available: {exc}") from None
    needed = ("build_features", "store_customer_features")
    if not all(hasattr(features, name) for name in needed):
        raise Problem(
            503, "the features package does not provide build_features/store_customer_features yet"
        )
    return features


def customer_features(
    engine: Engine, customer_id: str, policy: Policy, now_us: int
) -> pd.DataFrame:
    """One customer's feature row as of now (empty when the store has no order of theirs)."""
    features = _features_module()
    return features.store_customer_features(engine, customer_id, policy, micros_to_instant(now_us))


def batch_features(
    engine: Engine, customer_ids: list[str], policy: Policy, now_us: int
) -> pd.DataFrame:
    """Feature rows of many customers as of now, from their ledger rows (batch path).

    The rows go to ``features.build_features`` as a Parquet file of text columns in a
    temporary folder: from a DataFrame the batch engine first turns every cell into a
    string in Python (about half the time for 10,000 customers), from Parquet DuckDB
    reads the columns directly. Same rows, same features (tests compare both).
    """
    features = _features_module()
    events = ledger_rows(engine, customer_ids)
    if events.empty:
        return pd.DataFrame(columns=["customer_id"])
    as_of = micros_to_instant(now_us)
    table = _text_table(events)
    if table is None:
        return features.build_features(events, policy, as_of)
    with tempfile.TemporaryDirectory(prefix="tier-ml-serving-") as folder:
        path = Path(folder) / "ledger.parquet"
        pq.write_table(table, path, compression="none")
        return features.build_features(path, policy, as_of)


def _text_table(events: pd.DataFrame) -> pa.Table | None:
    """The ledger rows as an Arrow table of text columns (None when a value is not text)."""
    schema = pa.schema([(str(name), pa.string()) for name in events.columns])
    try:
        return pa.Table.from_pandas(events, schema=schema, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError):
        return None


def score(models: ModelSet, frame: pd.DataFrame, top_reasons: int) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(
            columns=["customer_id", "churn_probability", "p_down", "p_same", "p_up"]
        )
    return predict_frame(models, frame, top_reasons)


@dataclass(frozen=True)
class AtRiskList:
    """A tier's customers with their churn probability, highest first."""

    tier: str
    as_of_us: int
    model_versions: dict[str, str | None]
    rows: pd.DataFrame  # tier columns + churn_probability, p_keep_tier, p_reach_next_tier


class AtRiskCache:
    """The latest at-risk list per tier, reused while the store and models are unchanged."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._entries: dict[str, tuple[tuple[Any, ...], float, AtRiskList]] = {}
        self._lock = threading.Lock()

    def get(
        self, engine: Engine, models: ModelSet, policy: Policy, tier: str, now_us: int
    ) -> AtRiskList:
        key = (store_version(engine), tuple(sorted(models.versions().items())), id(models))
        with self._lock:
            entry = self._entries.get(tier)
            if entry is not None and entry[0] == key and entry[1] > time.monotonic():
                return entry[2]
            result = compute_at_risk(engine, models, policy, tier, now_us)
            self._entries[tier] = (key, time.monotonic() + self.ttl, result)
            return result


def compute_at_risk(
    engine: Engine, models: ModelSet, policy: Policy, tier: str, now_us: int
) -> AtRiskList:
    tiers, _ = segment_page(engine, tier, now_us)
    ids = tiers["customer_id"].tolist()
    scores = score(models, batch_features(engine, ids, policy, now_us), 0)
    scores = scores.assign(p_keep_tier=1.0 - scores["p_down"], p_reach_next_tier=scores["p_up"])
    columns = ["customer_id", "churn_probability", "p_keep_tier", "p_reach_next_tier", *(c for c in ("churn_probability_low", "churn_probability_high") if c in scores)]
    merged = tiers.merge(scores[columns], on="customer_id", how="inner")
    merged = merged.sort_values(
        ["churn_probability", "customer_id"], ascending=[False, True], kind="stable"
    )
    return AtRiskList(tier, now_us, models.versions(), merged.reset_index(drop=True))
