"""The reference the service's batch features are tested against."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine

from features import build_features
from tier_ml.money import micros_to_instant
from tier_ml.policy import Policy
from tier_ml.store.views import ledger_rows


def ledger_batch_features(
    engine: Engine, customer_ids: list[str], policy: Policy, now_us: int
) -> pd.DataFrame:
    """``build_features`` over the customers' canonical ledger rows (the batch rules engine
    replaying everything), which ``features.store_batch_features`` must equal."""
    events = ledger_rows(engine, customer_ids)
    if events.empty:
        return pd.DataFrame(columns=["customer_id"])
    return build_features(events, policy, micros_to_instant(now_us))
