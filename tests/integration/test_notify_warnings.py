"""Downgrade warnings and perks, on a real store (SQLite and PostgreSQL).

The policy: a 60-day window and a 30-day grace period, so a Gold customer
whose big order leaves the window is protected until 30 days after their last
order, and is warned ``days_before`` that.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.notify_support import DAY, POLICY, T0, MailReceiver, placed
from tests.integration.store import conftest as store_fixtures
from tier_ml.notify.config import parse_channels
from tier_ml.notify.downgrade_warnings import queue_downgrade_warnings, warnings_sent
from tier_ml.notify.service import dispatch_due, outbox_list
from tier_ml.policy import parse_policy
from tier_ml.store import service

# the store tests' fixtures: every test here runs on SQLite and PostgreSQL
backend = store_fixtures.backend
new_store_url = store_fixtures.new_store_url
postgres_schema_url = store_fixtures.postgres_schema_url
store_url = store_fixtures.store_url
engine = store_fixtures.engine

WINDOW_POLICY = parse_policy({**POLICY.model_dump(mode="json"), "window_days": 60})
GRACE_END = T0 + 80 * DAY  # 30 days after the small order on day 50


@pytest.fixture
def protected(engine):
    """ann: Gold from day 0 (1,500); a 100 order on day 50; the big one leaves the window on
    day 60, so from then on she keeps Gold only until day 80 (30 days after her last order)."""
    service.apply_events(engine, [placed("ann", "a1", 1500, T0)], T0, WINDOW_POLICY)
    service.apply_events(engine, [placed("ann", "a2", 100, T0 + 50 * DAY)], T0 + 50 * DAY)
    service.apply_events(engine, [placed("bob", "b1", 3000, T0 + 50 * DAY)], T0 + 50 * DAY)
    service.sweep(engine, T0 + 61 * DAY)
    [state] = service.export_tiers(engine).query("customer_id == 'ann'").to_dict("records")
    assert state["tier"] == "Gold" and state["eligible_tier"] == "Silver"
    return engine


def warnings_of(engine) -> list[dict]:
    return outbox_list(engine, kind="downgrade_warning")


def test_warning_is_queued_days_before_the_grace_end_once(protected) -> None:
    engine = protected
    assert queue_downgrade_warnings(engine, 14, T0 + 61 * DAY).queued == 0  # 19 days left
    result = queue_downgrade_warnings(engine, 14, GRACE_END - 14 * DAY)
    assert result.customers == ["ann"]  # bob is eligible for his tier: nothing to warn about
    assert queue_downgrade_warnings(engine, 14, GRACE_END - 10 * DAY).queued == 0  # once
    [warning] = warnings_of(engine)
    payload = warning["payload"]
    assert payload["tier"] == "Gold" and payload["eligible_tier"] == "Silver"
    assert payload["spend_needed"] == 900.0  # Gold needs 1,000; 100 still counts
    assert payload["grace_ends_at"] == service.iso_instant(GRACE_END)


def test_a_new_order_starts_a_new_grace_period_and_a_new_warning(protected) -> None:
    engine = protected
    queue_downgrade_warnings(engine, 14, GRACE_END - 14 * DAY)
    reorder = GRACE_END - 5 * DAY
    service.apply_events(engine, [placed("ann", "a3", 50, reorder)], reorder)
    assert queue_downgrade_warnings(engine, 14, reorder).queued == 0  # 30 days left now
    later = reorder + 16 * DAY
    service.sweep(engine, later)
    assert queue_downgrade_warnings(engine, 14, later).queued == 1
    spends = [w["payload"]["spend_needed"] for w in warnings_of(engine)]
    assert spends == [900.0, 850.0]
    assert len(warnings_sent(engine)) == 2


def test_no_warning_under_an_override_or_after_the_grace_end(protected) -> None:
    engine = protected
    now = GRACE_END - 14 * DAY
    service.set_override(engine, "ann", "Gold", "carol", "VIP complaint", now, until_us=None)
    assert queue_downgrade_warnings(engine, 14, now).queued == 0
    assert queue_downgrade_warnings(engine, 14, GRACE_END + DAY).queued == 0


def test_warning_email_says_what_to_spend_by_when(protected, monkeypatch) -> None:
    engine = protected
    with MailReceiver() as mail:
        config = parse_channels(
            {
                "program_name": "Acme Rewards",
                "email": mail.email_channel(
                    address_template="{{ customer_id }}@example.test",
                    events=["downgrade_warning"],
                ),
                "downgrade_warning": {"days_before": 14},
            }
        )
        queued, delivered = dispatch_due(engine, config, GRACE_END - 13 * DAY)
        assert delivered.delivered >= 1
        assert queued.customers == ["ann"]
        [email] = mail.messages
    text = email.get_body(("plain",)).get_content()
    date = f"{service.micros_to_instant(GRACE_END):%-d %B %Y}"
    assert f"spend USD 900.00 by {date} to keep Gold." in text
    assert "Free shipping" in text  # what Gold gives
    assert email["Subject"] == f"Keep your Gold status: order by {date}"


def test_changing_only_perks_changes_no_tier(engine) -> None:
    service.apply_events(engine, [placed("ann", "a1", 1500, T0)], T0, POLICY)
    service.apply_events(engine, [placed("bob", "b1", 6000, T0)], T0)
    before = service.export_audit(engine)
    document = json.loads(json.dumps(POLICY.model_dump(mode="json")))
    document["tiers"][1]["perks"] = {"discount_rate": 0.07, "free_shipping": True, "lounge": True}
    new_policy = parse_policy(document)
    assert new_policy.fingerprint == POLICY.fingerprint
    result = service.apply_policy(engine, new_policy, "marketing", T0 + DAY)
    assert result.changed == 0 and result.transitions == []
    assert len(service.export_audit(engine)) == len(before)
    assert len(outbox_list(engine)) == 2  # the two welcomes, nothing new
    service.apply_events(engine, [placed("cid", "c1", 1200, T0 + 2 * DAY)], T0 + 2 * DAY)
    [welcome] = outbox_list(engine, customer_id="cid")
    assert welcome["payload"]["policy_version"] == result.version  # shows the new perks
