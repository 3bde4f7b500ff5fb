"""Manual overrides: the override's tier beats the rules until it expires or is cleared, then
the rules take over again (the customer has exactly the state ``classify`` gives); every step
is audited."""

from __future__ import annotations

import json

import pytest

from tests.integration.store.support import assert_same_tiers
from tier_ml.events import parse_instant
from tier_ml.policy import parse_policy
from tier_ml.rules import classify
from tier_ml.store import service
from tier_ml.store.service import StoreError

POLICY = parse_policy(
    {
        "buffer_days": 7,
        "downgrade_grace_days": 0,
        "tiers": [
            {"name": "Base"},
            {"name": "Silver", "min_spend": 500},
            {"name": "Gold", "min_spend": 1000},
        ],
    }
)


def t(day: str) -> int:
    return parse_instant(f"2025-01-{day}T00:00:00Z")


def order(event_id: str, order_id: str, amount: str, day: str) -> dict[str, str]:
    return {
        "event_id": event_id,
        "event_type": "placed",
        "order_id": order_id,
        "customer_id": "ann",
        "occurred_at": f"2025-01-{day}T00:00:00Z",
        "amount": amount,
        "currency": "USD",
        "channel": "web",
        "region": "",
    }


def _audit(engine) -> list[tuple]:
    frame = service.export_audit(engine)
    return list(
        zip(
            frame["at"],
            frame["old_tier"],
            frame["new_tier"],
            frame["reason"],
            frame["cause"],
            frame["actor"],
            strict=True,
        )
    )


def test_override_until_expiry_then_the_rules_take_over(engine) -> None:
    events = [order("e1", "o1", "600", "01")]
    service.apply_events(engine, events, t("02"), POLICY)
    state = service.set_override(
        engine, "ann", "Gold", "alice", "launch event guest", t("03"), until_us=t("20")
    )
    assert (state.tier, state.rules_tier, state.next_due_at_us) == ("Gold", "Base", t("08"))

    service.sweep(engine, t("10"))  # the order matures on Jan 8: rules Silver, still Gold
    (row,) = service.export_tiers(engine, t("10")).itertuples()
    assert (row.tier, row.eligible_tier, row.qualifying_spend) == ("Gold", "Silver", 600.0)
    assert row.tier_since == "2025-01-03T00:00:00Z"

    service.sweep(engine, t("21"))  # expired on Jan 20: the rules' Silver, as classify says
    assert_same_tiers(
        service.export_tiers(engine, t("21")), classify(POLICY, events, t("21")).frame()
    )
    assert _audit(engine) == [
        ("2025-01-01T00:00:00Z", None, "Base", "enrolment", "first_order", "system"),
        ("2025-01-03T00:00:00Z", "Base", "Gold", "override", "override_set", "alice"),
        ("2025-01-20T00:00:00Z", "Gold", "Silver", "override", "override_expired", "system"),
    ]
    assert service.export_audit(engine)["note"].tolist()[1] == "launch event guest"
    outbox = service.export_outbox(engine)
    assert outbox["kind"].tolist() == ["welcome", "tier_upgraded", "tier_downgraded"]
    assert json.loads(outbox["payload"].iloc[2])["new_tier"] == "Silver"
    statuses = service.list_overrides(engine, t("21"))["status"].tolist()
    assert statuses == ["expired"]


def test_an_event_after_expiry_records_the_expiry_without_a_sweep(engine) -> None:
    service.apply_events(engine, [order("e1", "o1", "600", "01")], t("02"), POLICY)
    service.set_override(engine, "ann", "Gold", "alice", "goodwill", t("03"), until_us=t("05"))
    events = [order("e1", "o1", "600", "01"), order("e2", "o2", "100", "09")]
    service.apply_events(engine, events[1:], t("09"))
    audit = _audit(engine)
    assert audit[-2:] == [
        ("2025-01-05T00:00:00Z", "Gold", "Base", "override", "override_expired", "system"),
        ("2025-01-08T00:00:00Z", "Base", "Silver", "upgrade", "maturity", "system"),
    ]
    assert_same_tiers(
        service.export_tiers(engine, t("09")), classify(POLICY, events, t("09")).frame()
    )


def test_clear_override_and_new_orders_under_an_override(engine) -> None:
    service.apply_events(engine, [order("e1", "o1", "600", "01")], t("02"), POLICY)
    service.set_override(engine, "ann", "Gold", "alice", "complaint", t("03"))
    events = [order("e1", "o1", "600", "01"), order("e2", "o2", "500", "04")]
    service.apply_events(engine, events[1:], t("04"))
    service.sweep(engine, t("12"))  # both orders mature: rules Gold too, effective unchanged
    (row,) = service.export_tiers(engine, t("12")).itertuples()
    assert (row.tier, row.tier_since) == ("Gold", "2025-01-03T00:00:00Z")

    state = service.clear_override(engine, "ann", "bob", "complaint resolved", t("13"))
    assert state.tier == "Gold" and state.tier_since_us == t("11")  # the rules' own since
    assert_same_tiers(
        service.export_tiers(engine, t("13")), classify(POLICY, events, t("13")).frame()
    )
    last = service.export_audit(engine).iloc[-1]
    assert (last["reason"], last["cause"], last["actor"], last["note"]) == (
        "override",
        "override_cleared",
        "bob",
        "complaint resolved",
    )
    with pytest.raises(StoreError, match="no active override"):
        service.clear_override(engine, "ann", "bob", "again", t("14"))


def test_a_new_override_replaces_the_open_one(engine) -> None:
    service.apply_events(engine, [order("e1", "o1", "600", "01")], t("02"), POLICY)
    service.set_override(engine, "ann", "Gold", "alice", "first", t("03"))
    service.set_override(engine, "ann", "Silver", "carol", "second", t("04"), until_us=t("30"))
    overrides = service.list_overrides(engine, t("05"))
    assert overrides[["tier", "status", "cleared_by"]].values.tolist() == [
        ["Gold", "cleared", "carol"],
        ["Silver", "active", None],
    ]
    assert service.export_tiers(engine, t("05"))["tier"].tolist() == ["Silver"]


@pytest.mark.parametrize(
    ("customer", "tier", "reason", "until", "message"),
    [
        ("ann", "Platinum", "why", None, "unknown tier"),
        ("bob", "Gold", "why", None, "no order in the store"),
        ("ann", "Gold", " ", None, "reason is required"),
        ("ann", "Gold", "why", "02", "is not after now"),
        ("ann", "Gold", "why\x00", None, "reason contains the NUL character"),
        ("a\x00n", "Gold", "why", None, "customer_id contains the NUL character"),
        ("ann", "Go\x00ld", "why", None, "tier contains the NUL character"),
    ],
)
def test_override_errors_are_clear(engine, customer, tier, reason, until, message) -> None:
    service.apply_events(engine, [order("e1", "o1", "600", "01")], t("02"), POLICY)
    with pytest.raises(StoreError, match=message):
        service.set_override(
            engine,
            customer,
            tier,
            "alice",
            reason,
            t("03"),
            until_us=None if until is None else t(until),
        )


def test_an_override_names_its_tier_in_any_case_and_is_not_dated_in_the_past(engine) -> None:
    """``gold`` is the policy's ``Gold`` (stored and audited so); an instant before the
    customer's last evaluation is refused, for setting and clearing alike, writing nothing;
    a policy whose names differ only by case needs the exact one."""
    service.apply_events(engine, [order("e1", "o1", "600", "01")], t("05"), POLICY)
    for now in (t("04"), t("05") - 1):
        with pytest.raises(StoreError, match=r"before the store's clock for customer ann \(2025-01-05"):
            service.set_override(engine, "ann", "Gold", "alice", "why", now)
    state = service.set_override(engine, "ann", " gOLD", "alice", "why", t("05"))
    assert state.tier == "Gold" and state.tier_since_us == t("05")
    assert service.list_overrides(engine, t("05"))["tier"].tolist() == ["Gold"]
    with pytest.raises(StoreError, match="before the store's clock for customer ann"):
        service.clear_override(engine, "ann", "bob", "why", t("04"))
    assert [row[2] for row in _audit(engine)] == ["Base", "Gold"]
    twins = parse_policy({"tiers": [{"name": "base"}, {"name": "Base", "min_spend": 100}]})
    assert service.policy_tier(twins, "Base") == "Base"
    with pytest.raises(StoreError, match="tier 'BASE' matches base, Base by letter case: name one exactly"):
        service.policy_tier(twins, "BASE")
