"""The tier ledger (``tier_ml.ledger``) agrees with the classification it explains.

Checked against the batch path (``tier_ml.batch.classify_frame``, a separate
implementation in DuckDB + numpy) for every customer of a simulated data set
and of tricky generated events, under several policies; plus the hand-checked
scenarios for what each order, refund and transition says.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from functools import lru_cache

import pandas as pd
import pytest

from tests.eventgen import as_of_instants, random_events, random_policy
from tests.scenarios import SCENARIO_DIR, load_scenario
from tier_ml.batch import classify_frame
from tier_ml.events import OrderEvent, parse_instant, validate
from tier_ml.ledger import LedgerError, TierLedger, customer_events, explain
from tier_ml.money import MICROS_PER_DAY, instant_to_micros, micros_to_money
from tier_ml.policy import Policy, load_policy, parse_policy
from tier_ml.rules import replay

AS_OF = parse_instant("2026-01-01T00:00:00Z")
WINDOW_POLICY = parse_policy(
    {
        "fx_rates": {"EUR": 1.1, "GBP": 1.3},
        "buffer_days": 14,
        "window_days": 365,
        "late_refunds": "deduct",
        "downgrade_grace_days": 60,
        "tiers": [
            {"name": "Silver"},
            {"name": "Gold", "min_spend": 15000},
            {"name": "VIP", "min_spend": 40000, "min_orders": 8},
        ],
        "regions": {"EU": {"Gold": 13000}},
    }
)
IGNORE_POLICY = WINDOW_POLICY.model_copy(
    update={"late_refunds": "ignore", "window_days": None, "downgrade_grace_days": 0}
)


@lru_cache(maxsize=1)
def simulated_events() -> pd.DataFrame:
    from tier_ml.simulate import SimulationConfig, simulate

    return simulate(SimulationConfig(customers=300, seed=5)).events


def by_customer(policy: Policy, frame: pd.DataFrame, as_of_us: int) -> dict[str, list[OrderEvent]]:
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    grouped: dict[str, list[OrderEvent]] = defaultdict(list)
    for event in validate(records, policy, as_of_us).events:
        grouped[event.customer_id].append(event)
    return grouped


def assert_ledger_matches_row(ledger: TierLedger, row: pd.Series) -> None:
    """The ledger's sums and tier are the batch path's (money compared to the cent)."""
    assert ledger.counted_sum_us == ledger.qualifying_us
    assert ledger.pending_sum_us == ledger.pending_us
    assert micros_to_money(ledger.counted_sum_us) == pytest.approx(
        row["qualifying_spend"], abs=0.005
    )
    assert micros_to_money(ledger.pending_sum_us) == pytest.approx(row["pending_spend"], abs=0.005)
    assert ledger.tier == row["tier"] and ledger.eligible_tier == row["eligible_tier"]
    assert sum(o.counts_as_order for o in ledger.orders) == row["qualifying_orders"]
    rules = [t for t in ledger.transitions if t.source == "rules"]
    assert len(rules) == row["tier_changes"]
    expected_next = row["spend_to_next_tier"]
    if ledger.next_tier is None:
        assert pd.isna(expected_next)
    else:
        assert micros_to_money(ledger.next_tier.spend_needed_us) == pytest.approx(expected_next)
    tier = ledger.transitions[0].new_tier
    for transition in ledger.transitions[1:]:  # a chain: each starts where the last ended
        assert transition.old_tier == tier
        tier = transition.new_tier
    assert tier == ledger.tier


@pytest.mark.parametrize(
    "policy", [load_policy(None), WINDOW_POLICY, IGNORE_POLICY], ids=["default", "window", "ignore"]
)
def test_ledger_sums_to_the_classification_of_every_simulated_customer(policy: Policy) -> None:
    frame = simulated_events()
    expected, _ = classify_frame(policy, frame, AS_OF)
    expected = expected.set_index("customer_id")
    events = by_customer(policy, frame, AS_OF)
    explained = 0
    for customer_id, row in expected.iterrows():
        ledger = explain(policy, customer_id, events[customer_id], AS_OF)
        assert_ledger_matches_row(ledger, row)
        explained += 1
    assert explained == len(expected) > 250


@pytest.mark.parametrize("seed", range(12))
def test_ledger_matches_the_batch_path_on_tricky_events(seed: int) -> None:
    rng = random.Random(seed)
    policy = random_policy(rng)
    rows = random_events(rng, customers=6)
    for as_of in as_of_instants(rng, 2):
        as_of_us = instant_to_micros(as_of)
        expected, _ = classify_frame(policy, pd.DataFrame(rows), as_of_us)
        events = by_customer(policy, pd.DataFrame(rows), as_of_us)
        for customer_id, row in expected.set_index("customer_id").iterrows():
            assert_ledger_matches_row(
                explain(policy, customer_id, events[customer_id], as_of_us), row
            )


def test_projection_is_what_the_engine_gives_later() -> None:
    frame = simulated_events()
    events = by_customer(WINDOW_POLICY, frame, AS_OF)
    checked = 0
    for customer_id, customer_events_ in sorted(events.items())[:120]:
        ledger = explain(WINDOW_POLICY, customer_id, customer_events_, AS_OF)
        for change in ledger.projected:
            before = replay(WINDOW_POLICY, customer_id, customer_events_, change.at_us - 1)
            after = replay(WINDOW_POLICY, customer_id, customer_events_, change.at_us)
            names = WINDOW_POLICY.tier_names
            assert (names[before.tier], names[after.tier]) == (change.old_tier, change.new_tier)
            checked += 1
        keep = ledger.keep
        if keep is not None and keep.at_risk_at_us is not None:
            assert keep.at_risk_at_us == ledger.projected[0].at_us or any(
                t.at_us == keep.at_risk_at_us for t in ledger.projected
            )
            assert keep.at_risk_at_us > AS_OF
    assert checked > 10


def test_customer_events_equal_whole_file_validation() -> None:
    frame = simulated_events()
    events = by_customer(WINDOW_POLICY, frame, AS_OF)
    for customer_id in sorted(events)[:60]:
        assert customer_events(frame, WINDOW_POLICY, customer_id, AS_OF) == events[customer_id]


def _scenario_ledger(name: str, customer: str, as_of: str) -> TierLedger:
    scenario = load_scenario(SCENARIO_DIR / f"{name}.yaml")
    as_of_us = parse_instant(as_of)
    good = validate(scenario.events, scenario.policy, as_of_us).events
    return explain(
        scenario.policy, customer, [e for e in good if e.customer_id == customer], as_of_us
    )


def test_refund_inside_the_buffer_voids_the_order() -> None:
    ledger = _scenario_ledger("maria_refund_in_buffer", "maria", "2025-02-01T00:00:00Z")
    voided = [o for o in ledger.orders if o.status == "voided"]
    assert len(voided) == 1
    (refund,) = voided[0].adjustments
    assert refund.effect == "before_maturity" and refund.removed_us == voided[0].value_us
    assert refund.spend_effect_us == 0 and voided[0].counted_us == 0
    assert ledger.tier == "Base" and ledger.next_tier is not None
    assert ledger.next_tier.spend_needed_us == ledger.next_tier.min_spend_us - ledger.qualifying_us


def test_maria_upgrades_when_her_order_clears_the_buffer() -> None:
    pending = _scenario_ledger("maria_buffer_upgrade", "maria", "2025-01-05T00:00:00Z")
    assert pending.tier == "Base" and pending.pending_us == 200 * 1_000_000
    order = next(o for o in pending.orders if o.status == "pending")
    assert pending.next_tier.reached_by_pending_at_us == order.matures_at_us
    (projected,) = pending.projected
    assert (projected.new_tier, projected.causes, projected.at_us) == (
        "Silver",
        ("maturity",),
        order.matures_at_us,
    )
    matured = _scenario_ledger("maria_buffer_upgrade", "maria", "2025-01-08T00:00:00Z")
    last = matured.transitions[-1]
    assert (last.old_tier, last.new_tier, last.direction) == ("Base", "Silver", "upgrade")
    assert order.event_id in last.events and "cleared the 7-day buffer" in last.rule


def test_late_refunds_deducted_or_ignored() -> None:
    deducted = _scenario_ledger("late_refund_deduct", "bob", "2025-03-01T00:00:00Z")
    (order,) = deducted.orders
    (refund,) = order.adjustments
    assert refund.effect == "deducted" and refund.spend_effect_us == -refund.removed_us < 0
    ignore_scenario = load_scenario(SCENARIO_DIR / "late_refund_ignore.yaml")
    customer = ignore_scenario.events[0]["customer_id"]
    ignored = _scenario_ledger("late_refund_ignore", customer, "2025-03-01T00:00:00Z")
    effects = {a.effect for o in ignored.orders for a in o.adjustments}
    assert "ignored" in effects and ignored.counted_sum_us == ignored.qualifying_us


def test_window_exits_and_grace_end_are_named() -> None:
    ledger = _scenario_ledger("rolling_window_downgrade_grace", "vic", "2025-06-01T00:00:00Z")
    assert {o.status for o in ledger.orders} == {"left_window"}
    downgrades = [t for t in ledger.transitions if t.direction == "downgrade"]
    assert downgrades and all("window_exit" in t.causes for t in downgrades)
    assert all("left the 365-day window" in t.rule for t in downgrades)


def test_grace_end_is_projected_with_the_spend_to_stay() -> None:
    frame = simulated_events()
    events = by_customer(WINDOW_POLICY, frame, AS_OF)
    protected = [
        ledger
        for ledger in (explain(WINDOW_POLICY, c, e, AS_OF) for c, e in sorted(events.items()))
        if ledger.grace_ends_at_us is not None
    ]
    assert protected
    for ledger in protected:
        keep = ledger.keep
        assert not keep.eligible and keep.spend_needed_us + keep.headroom_us > 0
        assert keep.grace_ends_at_us == ledger.grace_ends_at_us
        # with a rolling window every tier above the default ends some day
        drop = next(t for t in ledger.projected if t.direction == "downgrade")
        assert (keep.at_risk_at_us, keep.falls_to) == (drop.at_us, drop.new_tier)
        assert keep.spend_needed_by_then_us == keep.min_spend_us - drop.qualifying_us > 0
        if drop.at_us == ledger.grace_ends_at_us:
            assert "grace_end" in drop.causes


def test_dict_is_json_and_text_names_every_order() -> None:
    frame = simulated_events()
    events = by_customer(WINDOW_POLICY, frame, AS_OF)
    customer_id = max(events, key=lambda c: len(events[c]))
    ledger = explain(WINDOW_POLICY, customer_id, events[customer_id], AS_OF)
    data = json.loads(json.dumps(ledger.to_dict()))
    assert data["customer_id"] == customer_id and data["as_of"] == "2026-01-01T00:00:00Z"
    assert data["counted_sum"] == data["qualifying"] and len(data["orders"]) == len(ledger.orders)
    assert data["orders"][0]["placed_at"].endswith("Z")
    text = ledger.to_text()
    assert all(order.order_id in text for order in ledger.orders)


def test_no_order_yet_is_an_error() -> None:
    frame = simulated_events()
    events = by_customer(WINDOW_POLICY, frame, AS_OF)
    customer_id, customer_events_ = next(iter(sorted(events.items())))
    first = min(e.at_us for e in customer_events_)
    with pytest.raises(LedgerError, match="no order"):
        explain(WINDOW_POLICY, customer_id, customer_events_, first - MICROS_PER_DAY)
