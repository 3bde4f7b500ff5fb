"""The reference path and the DuckDB batch path give the same answer on tricky generated data."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from tests.eventgen import as_of_instants, random_events, random_policy
from tier_ml.batch import classify_frame
from tier_ml.money import instant_to_micros
from tier_ml.rules import OUTPUT_COLUMNS, classify


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for name in ("qualifying_spend", "pending_spend", "spend_to_next_tier"):
        frame[name] = frame[name].map(lambda v: None if pd.isna(v) else round(float(v), 2))
    for name in ("tier_since", "last_order_at", "grace_ends_at", "next_change_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
    frame["qualifying_orders"] = frame["qualifying_orders"].astype(int)
    frame["tier_changes"] = frame["tier_changes"].astype(int)
    frame = frame.astype(object).where(frame.notna(), None)
    return frame[list(OUTPUT_COLUMNS)].sort_values("customer_id").reset_index(drop=True)


@pytest.mark.parametrize("seed", range(40))
def test_reference_and_batch_agree(seed: int) -> None:
    rng = random.Random(seed)
    policy = random_policy(rng)
    rows = random_events(rng, customers=6)
    for as_of in as_of_instants(rng, 2):
        as_of_us = instant_to_micros(as_of)
        reference = classify(policy, rows, as_of_us)
        batch_tiers, batch_rejects = classify_frame(policy, pd.DataFrame(rows), as_of_us)
        pd.testing.assert_frame_equal(_normalise(reference.frame()), _normalise(batch_tiers))
        expected = sorted((r.row, str(r.reason)) for r in reference.rejects)
        got = sorted(zip(batch_rejects["row"].astype(int), batch_rejects["reason"], strict=True))
        assert got == expected
        details = sorted(r.detail for r in reference.rejects)
        assert sorted(batch_rejects["detail"]) == details
