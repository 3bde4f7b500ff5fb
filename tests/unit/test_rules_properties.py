"""Property tests of the rules engine (TIER_RULES.md invariants), with hypothesis."""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.eventgen import START, iso, random_events, random_policy
from tier_ml.money import instant_to_micros
from tier_ml.policy import parse_policy
from tier_ml.rules import classify

seeds = st.integers(min_value=0, max_value=10**9)
AS_OF = instant_to_micros(START + timedelta(days=300))


def _state(policy, rows, as_of=AS_OF):
    result = classify(policy, rows, as_of)
    return {c: (s.tier, s.qualifying_us, s.pending_us, s.tier_since_us) for c, s in result.tiers.items()}


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_shuffling_rows_changes_nothing(seed: int) -> None:
    rng = random.Random(seed)
    policy, rows = random_policy(rng), random_events(rng)
    shuffled = list(rows)
    rng.shuffle(shuffled)
    assert _state(policy, shuffled) == _state(policy, rows)


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_replaying_events_changes_nothing(seed: int) -> None:
    rng = random.Random(seed)
    policy, rows = random_policy(rng), random_events(rng)
    replayed = rows + [dict(r) for r in rng.sample(rows, k=len(rows) // 2)]
    assert _state(policy, replayed) == _state(policy, rows)


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_events_after_as_of_change_nothing(seed: int) -> None:
    rng = random.Random(seed)
    policy, rows = random_policy(rng), random_events(rng)
    later = iso(START + timedelta(days=300, seconds=1))
    future = [
        {**r, "event_id": f"future-{i}", "occurred_at": later, "order_id": f"future-{i}", "event_type": "placed"}
        for i, r in enumerate(rows[:5])
    ]
    assert _state(policy, rows + future) == _state(policy, rows)


@settings(max_examples=60, deadline=None)
@given(seeds, st.integers(min_value=1, max_value=100_000))
def test_a_matured_order_never_lowers_qualifying_spend(seed: int, cents: int) -> None:
    rng = random.Random(seed)
    policy, rows = random_policy(rng), random_events(rng)
    before = classify(policy, rows, AS_OF).tiers
    customer = rng.choice(sorted(before))
    placed_at = START + timedelta(days=300) - timedelta(days=policy.buffer_days + 1)
    extra = {"event_id": "extra", "event_type": "placed", "order_id": "extra-order", "customer_id": customer,
             "occurred_at": iso(placed_at), "amount": f"{cents / 100:.2f}", "currency": "USD", "region": ""}
    after = classify(policy, [*rows, extra], AS_OF).tiers
    if policy.window_days is None or policy.window_days > policy.buffer_days + 1:
        assert after[customer].qualifying_us > before[customer].qualifying_us


@settings(max_examples=40, deadline=None)
@given(seeds)
def test_with_huge_grace_no_tier_ever_decreases(seed: int) -> None:
    rng = random.Random(seed)
    data = random_policy(rng).model_dump()
    data["downgrade_grace_days"] = 100_000
    policy = parse_policy(data)
    rows = random_events(rng)
    previous: dict[str, int] = {}
    for day in range(0, 500, 15):
        tiers = classify(policy, rows, instant_to_micros(START + timedelta(days=day))).tiers
        for customer, state in tiers.items():
            assert state.tier >= previous.get(customer, 0)
            assert all(change.new_tier > change.old_tier for change in state.changes)
            previous[customer] = state.tier
