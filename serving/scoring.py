"""Predictions from the store: features computed as of now, then the loaded models.

- one customer: ``features.store_customer_features`` (the online path) and both models;
- many customers: ``features.store_batch_features`` (the store's typed ledger and current
  tier states, the feature SQL of the batch path), both models in one call;
- the at-risk list of a tier: every customer of the tier scored in one batch, kept for
  ``TIER_ML_AT_RISK_CACHE_SECONDS`` under the store's content version and the model
  versions (a new event, tier change, policy or model invalidates it).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from serving.errors import Problem
from serving.models import ModelSet, predict_frame
from tier_ml.money import micros_to_instant
from tier_ml.policy import Policy
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction
from tier_ml.store.views import customer_tiers, segment_page, store_version


def _features_module() -> Any:
    try:
        import features
    except ImportError as exc:  # pragma: no cover - the package ships with tier-ml
        raise Problem(503, f"the features package is not available: {exc}") from None
    needed = ("store_customer_features", "store_batch_features")
    if not all(hasattr(features, name) for name in needed):
        raise Problem(
            503,
            "the features package does not provide store_customer_features/store_batch_features",
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
    """Feature rows of many customers as of now, from the store (``features.store_batch_features``).

    The store's ledger is already validated and typed and its tier states are the rules'
    states until they fall due, so nothing is parsed or replayed that the store already
    knows (tests prove the rows equal ``build_features`` over the same ledger rows).
    """
    features = _features_module()
    return features.store_batch_features(engine, customer_ids, policy, micros_to_instant(now_us))


def effective_tiers(engine: Engine, customer_ids: list[str], now_us: int) -> dict[str, str]:
    """Each known customer's effective tier at ``now_us`` (customers without a tier left out).

    One statement over ``tier_state``; the few states due by now (a maturity, a grace end,
    an override expiry since the last sweep) go through ``customer_tiers``, which
    re-evaluates them in memory, as every read does.
    """
    ids = sorted(set(customer_ids))
    if not ids:
        return {}

    def work(uow: UnitOfWork) -> list[Any]:
        connection = uow.repo.connection
        columns = "customer_id, tier, next_due_at_us"
        if connection.dialect.name == "postgresql":
            sql = f"SELECT {columns} FROM tier_state WHERE customer_id = ANY(%s)"
            return connection.exec_driver_sql(sql, (ids,)).fetchall()
        sql = f"SELECT {columns} FROM tier_state WHERE customer_id IN (SELECT value FROM json_each(?))"
        return connection.exec_driver_sql(sql, (json.dumps(ids),)).fetchall()

    rows = run_in_transaction(engine, work, read_only=True)
    tiers = {c: t for c, t, due in rows if t is not None and (due is None or due > now_us)}
    due = [c for c, _, due in rows if due is not None and due <= now_us]
    if due:
        fresh = customer_tiers(engine, due, now_us)
        tiers.update(zip(fresh["customer_id"].astype(str), fresh["tier"], strict=True))
    return tiers


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
