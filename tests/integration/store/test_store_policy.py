"""Policy versions: ``apply_policy`` reclassifies every customer by replaying the ledger under the
new policy (batch path); the dry run only reports the transitions matrix."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.integration.store.support import (
    END_OF_SIMULATION,
    assert_same_tiers,
    simulated,
    snapshot,
)
from tier_ml.batch import classify_frame
from tier_ml.money import MICROS_PER_DAY
from tier_ml.policy import load_policy, parse_policy
from tier_ml.store import service
from tier_ml.store.service import StoreError

NEW_POLICY = parse_policy(
    {
        "base_currency": "USD",
        "fx_rates": {"EUR": 1.05, "GBP": 1.25},
        "buffer_days": 14,
        "window_days": 365,
        "downgrade_grace_days": 60,
        "tiers": [
            {"name": "Silver"},
            {"name": "Gold", "min_spend": 15000},
            {"name": "VIP", "min_spend": 40000},
        ],
    }
)
LATER = END_OF_SIMULATION + 45 * MICROS_PER_DAY


@pytest.fixture
def loaded(engine):
    events, rows = simulated(400)
    service.apply_events(engine, list(rows), END_OF_SIMULATION, load_policy(None))
    return engine, events


def test_dry_run_reports_the_matrix_and_writes_nothing(loaded) -> None:
    engine, events = loaded
    before = snapshot(engine)
    result = service.apply_policy(engine, NEW_POLICY, "bob", END_OF_SIMULATION, dry_run=True)
    old = service.export_tiers(engine, END_OF_SIMULATION).set_index("customer_id")["tier"]
    new = classify_frame(NEW_POLICY, events, END_OF_SIMULATION)[0].set_index("customer_id")["tier"]
    expected = pd.crosstab(old.rename("old tier"), new.rename("new tier"))
    pd.testing.assert_frame_equal(result.matrix, expected, check_names=False)
    assert result.changed == int((old != new).sum()) > 0
    assert result.version is None
    after = snapshot(engine)
    assert after["audit"] == before["audit"] and after["policies"] == before["policies"]
    pd.testing.assert_frame_equal(after["states"], before["states"])


def test_apply_reclassifies_everyone_with_audit_rows(loaded) -> None:
    engine, events = loaded
    old = service.export_tiers(engine, END_OF_SIMULATION).set_index("customer_id")["tier"]
    result = service.apply_policy(
        engine, NEW_POLICY, "bob", END_OF_SIMULATION, source_text="# yaml"
    )
    assert result.version == 2
    expected, _ = classify_frame(NEW_POLICY, events, END_OF_SIMULATION)
    tiers = service.export_tiers(engine, END_OF_SIMULATION)
    assert_same_tiers(tiers, expected)

    audit = service.export_audit(engine)
    reclassified = audit[audit["reason"] == "reclassification"]
    assert len(reclassified) == result.changed > 0
    assert set(reclassified["actor"]) == {"bob"} and set(reclassified["policy_version"]) == {2}
    changed = old[old != tiers.set_index("customer_id")["tier"]]
    assert sorted(reclassified["customer_id"]) == sorted(changed.index)
    row = reclassified.iloc[0]
    now_tiers = tiers.set_index("customer_id")["tier"]
    assert (row["old_tier"], row["new_tier"]) == (
        old[row["customer_id"]],
        now_tiers[row["customer_id"]],
    )
    outbox = service.export_outbox(engine)
    versions = outbox["payload"].map(lambda p: json.loads(p)["policy_version"])
    assert (versions == 2).sum() == result.changed

    # the rules go on under the new policy: no correction rows, same answer as classify later
    service.sweep(engine, LATER)
    assert_same_tiers(
        service.export_tiers(engine, LATER), classify_frame(NEW_POLICY, events, LATER)[0]
    )
    assert "late_events" not in set(service.export_audit(engine)["cause"].dropna())
    versions, active = service.policy_versions(engine)
    assert [v["version"] for v in versions] == [
        1,
        2,
    ] and active.policy.fingerprint == NEW_POLICY.fingerprint


def test_ingest_with_another_policy_is_refused(loaded) -> None:
    engine, _ = loaded
    with pytest.raises(StoreError, match="policy apply"):
        service.apply_events(engine, [], LATER, NEW_POLICY)


def test_apply_refuses_the_past_and_overrides_of_missing_tiers(loaded) -> None:
    engine, _ = loaded
    with pytest.raises(StoreError, match="before the store's clock"):
        service.apply_policy(engine, NEW_POLICY, "bob", END_OF_SIMULATION - 1)
    customer = service.export_tiers(engine, END_OF_SIMULATION)["customer_id"].iloc[0]
    service.set_override(engine, customer, "VIP", "alice", "gift", END_OF_SIMULATION)
    renamed = parse_policy(
        {
            "tiers": [
                {"name": "Silver"},
                {"name": "Gold", "min_spend": 20000},
                {"name": "Platinum", "min_spend": 50000},
            ]
        }
    )
    with pytest.raises(StoreError, match="clear them first"):
        service.apply_policy(engine, renamed, "bob", END_OF_SIMULATION)


def test_overrides_survive_a_policy_change(loaded) -> None:
    engine, _ = loaded
    customer = service.export_tiers(engine, END_OF_SIMULATION)["customer_id"].iloc[0]
    service.set_override(
        engine, customer, "VIP", "alice", "gift", END_OF_SIMULATION, until_us=LATER
    )
    service.apply_policy(engine, NEW_POLICY, "bob", END_OF_SIMULATION)
    tiers = service.export_tiers(engine, END_OF_SIMULATION).set_index("customer_id")
    assert tiers.loc[customer, "tier"] == "VIP"


def test_a_store_without_customers_takes_a_policy_and_exports_nothing(engine) -> None:
    """The first batch stores the policy even when every event is rejected: the store then
    has a policy but no tier state, and a policy apply, its dry run and the export answer
    with no customers (they used to fail on the empty state table)."""
    refund_of_nothing = {
        "event_id": "E1", "event_type": "refunded", "order_id": "O-unknown",
        "customer_id": "C1", "occurred_at": "2025-01-01T00:00:00Z", "amount": "5",
        "currency": "USD", "channel": "web", "region": "US",
    }  # fmt: skip
    result = service.apply_events(engine, [refund_of_nothing], END_OF_SIMULATION, load_policy(None))
    assert result.counts["rejected"] == 1 and result.customers == 0
    preview = service.apply_policy(engine, NEW_POLICY, "bob", LATER, dry_run=True)
    assert preview.customers == 0 and preview.changed == 0
    applied = service.apply_policy(engine, NEW_POLICY, "bob", LATER)
    assert applied.version == 2 and applied.states_written == 0
    assert service.export_tiers(engine).empty


def test_a_version_without_a_currency_leaves_out_its_orders_and_their_refunds(engine) -> None:
    """A version that drops a currency no longer reads the ledger's orders in it, nor their
    refunds and cancels (``unknown_currency`` and ``unknown_order`` in ``classify``); every
    other order of the same customers still counts, on every path that reads the ledger."""
    from features import build_features, store_batch_features
    from serving.lookup import read_customer
    from tests.unit.test_features import assert_same_features
    from tier_ml.events import parse_instant
    from tier_ml.store.views import customer_view

    first = {"base_currency": "USD", "fx_rates": {"EUR": 1.1, "JPY": 0.0067}, "buffer_days": 7,
             "downgrade_grace_days": 0, "tiers": [{"name": "Base"}, {"name": "Silver", "min_spend": 50}]}  # fmt: skip
    without_yen = parse_policy({**first, "fx_rates": {"EUR": 1.1}})

    def event(event_id, kind, order, customer, day, amount="", currency=""):
        return {"event_id": event_id, "event_type": kind, "order_id": order, "customer_id": customer,
                "occurred_at": f"2024-01-{day:02d}T00:00:00Z", "amount": amount, "currency": currency,
                "channel": "web", "region": ""}  # fmt: skip

    def at(day: int) -> int:
        return parse_instant(f"2024-01-{day:02d}")

    before = [
        event("e1", "placed", "o1", "c1", 1, "10000", "JPY"),
        event("e2", "refunded", "o1", "c1", 2, "5", "USD"),
        event("e7", "cancelled", "o1", "c1", 3),
        event("e3", "placed", "o3", "c1", 1, "100", "USD"),
        event("e4", "refunded", "o3", "c1", 2, "10", "USD"),
        event("e5", "placed", "o5", "c2", 1, "100", "USD"),
        event("e8", "placed", "o8", "c3", 1, "9000", "JPY"),  # c3 has no other order
    ]
    service.apply_events(engine, before, at(3), parse_policy(first))
    applied = service.apply_policy(engine, without_yen, "bob", at(4))
    assert applied.preview is not None and applied.preview.leaving == 1
    after = [event("e6", "placed", "o6", "c1", 5, "70", "USD")]  # evaluates c1 under the new version
    assert service.apply_events(engine, after, at(5)).counts["accepted"] == 1
    service.sweep(engine, at(10))

    expected, rejects = classify_frame(without_yen, pd.DataFrame(before + after), at(10))
    assert sorted(rejects["reason"]) == [
        "unknown_currency", "unknown_currency", "unknown_order", "unknown_order"
    ]  # fmt: skip
    assert_same_tiers(service.export_tiers(engine, at(10)), expected)
    view = customer_view(engine, "c1", at(10))
    assert [order.order_id for order in view.pending_orders] == ["o6"]
    assert read_customer(engine, "c1", at(10)) == view
    for day in (10, 6):  # the store's states, then states replayed for an earlier instant
        assert_same_features(
            build_features(pd.DataFrame(before + after), without_yen, at(day)),
            store_batch_features(engine, ["c1", "c2"], without_yen, at(day)),
        )
