"""Tier tables in comparable form, shared by the tests that compare two paths of the engine."""

from __future__ import annotations

import pandas as pd

from tier_ml.rules import OUTPUT_COLUMNS


def comparable_tiers(frame: pd.DataFrame) -> pd.DataFrame:
    """A tiers table with money rounded to the cent, instants parsed, nulls as None, rows sorted."""
    frame = frame.copy()
    for name in ("qualifying_spend", "pending_spend", "spend_to_next_tier"):
        frame[name] = frame[name].map(lambda v: None if pd.isna(v) else round(float(v), 2))
    for name in ("tier_since", "last_order_at", "grace_ends_at", "next_change_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
    frame["qualifying_orders"] = frame["qualifying_orders"].astype(int)
    frame["tier_changes"] = frame["tier_changes"].astype(int)
    frame = frame.astype(object).where(frame.notna(), None)
    return frame[list(OUTPUT_COLUMNS)].sort_values("customer_id").reset_index(drop=True)


def assert_same_tiers(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Fail with pandas' column-by-column message when two tier tables differ."""
    pd.testing.assert_frame_equal(comparable_tiers(got), comparable_tiers(want))
