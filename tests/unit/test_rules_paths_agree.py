"""The reference path and the DuckDB batch path give the same answer on tricky generated data."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from tests.eventgen import as_of_instants, random_events, random_policy
from tests.tiers import assert_same_tiers
from tier_ml.batch import classify_frame
from tier_ml.money import instant_to_micros
from tier_ml.policy import Policy, parse_policy
from tier_ml.rules import classify


def assert_paths_agree(policy: Policy, rows: list[dict[str, str]], rng: random.Random) -> None:
    """Tiers, reject reasons and details of both paths, at two random instants."""
    for as_of in as_of_instants(rng, 2):
        as_of_us = instant_to_micros(as_of)
        reference = classify(policy, rows, as_of_us)
        batch_tiers, batch_rejects = classify_frame(policy, pd.DataFrame(rows), as_of_us)
        assert_same_tiers(batch_tiers, reference.frame())
        expected = sorted((r.row, str(r.reason)) for r in reference.rejects)
        got = sorted(zip(batch_rejects["row"].astype(int), batch_rejects["reason"], strict=True))
        assert got == expected
        details = sorted(r.detail for r in reference.rejects)
        assert sorted(batch_rejects["detail"]) == details


@pytest.mark.parametrize("seed", range(40))
def test_reference_and_batch_agree(seed: int) -> None:
    rng = random.Random(seed)
    policy = random_policy(rng)
    assert_paths_agree(policy, random_events(rng, customers=6), rng)


@pytest.mark.parametrize("seed", range(8))
def test_a_window_no_longer_than_the_buffer_agrees(seed: int) -> None:
    """Orders leave the window before they mature: nothing counts, yet pending spend and
    refunds still apply (the batch path computes these per placement, outside SQL)."""
    rng = random.Random(1000 + seed)
    data = random_policy(rng).model_dump(mode="json")
    data["buffer_days"] = rng.choice([7, 14])
    data["window_days"] = rng.choice([1, data["buffer_days"]])
    assert_paths_agree(parse_policy(data), random_events(rng, customers=6), rng)
