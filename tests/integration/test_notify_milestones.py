"""Milestone events on a real store (SQLite and PostgreSQL): ``approaching_upgrade`` with its
distance and cooldown, and ``will_downgrade`` (the downgrade-warning rule under its milestone
name) with the spend needed to stay."""

from __future__ import annotations

import pytest

from tests.integration.notify_support import DAY, POLICY, T0, MailReceiver, placed
from tests.integration.store import conftest as store_fixtures
from tier_ml.notify.approaching_upgrade import queue_approaching_upgrades
from tier_ml.notify.config import ApproachingUpgradeSettings, ChannelsError, parse_channels
from tier_ml.notify.service import dispatch_due, outbox_list
from tier_ml.policy import parse_policy
from tier_ml.store import service

backend = store_fixtures.backend
new_store_url = store_fixtures.new_store_url
postgres_schema_url = store_fixtures.postgres_schema_url
store_url = store_fixtures.store_url
engine = store_fixtures.engine

WINDOW_POLICY = parse_policy({**POLICY.model_dump(mode="json"), "window_days": 60})
BUFFER_POLICY = parse_policy({**POLICY.model_dump(mode="json"), "buffer_days": 14})
GRACE_END = T0 + 80 * DAY
CLOSE = ApproachingUpgradeSettings(within=0.1, cooldown_days=30)


@pytest.fixture
def shoppers(engine):
    """cid is 50 short of Gold (1,000), dan 200 short, eve is Gold and 3,500 short of VIP."""
    service.apply_events(engine, [placed("cid", "c1", 950, T0)], T0, POLICY)
    service.apply_events(engine, [placed("dan", "d1", 800, T0)], T0)
    service.apply_events(engine, [placed("eve", "e1", 1500, T0)], T0)
    return engine


def upgrades_of(engine, customer_id: str | None = None) -> list[dict]:
    return outbox_list(engine, kind="approaching_upgrade", customer_id=customer_id)


def test_within_distance_queues_one_event_with_what_is_missing(shoppers) -> None:
    result = queue_approaching_upgrades(shoppers, CLOSE, T0 + DAY)
    assert result.customers == ["cid"]  # dan is 20% away, eve 70% away from VIP
    [message] = upgrades_of(shoppers)
    payload = message["payload"]
    assert (payload["tier"], payload["next_tier"]) == ("Silver", "Gold")
    assert payload["spend_needed"] == 50.0 and payload["threshold"] == 1000.0


def test_cooldown_is_respected_then_over(shoppers) -> None:
    assert queue_approaching_upgrades(shoppers, CLOSE, T0 + DAY).queued == 1
    assert queue_approaching_upgrades(shoppers, CLOSE, T0 + 2 * DAY).queued == 0
    assert queue_approaching_upgrades(shoppers, CLOSE, T0 + 30 * DAY).queued == 0
    assert queue_approaching_upgrades(shoppers, CLOSE, T0 + 32 * DAY).customers == ["cid"]
    assert len(upgrades_of(shoppers, "cid")) == 2


def test_outside_distance_queues_nothing_and_an_amount_widens_it(shoppers) -> None:
    narrow = ApproachingUpgradeSettings(within=0.01)
    assert queue_approaching_upgrades(shoppers, narrow, T0 + DAY).queued == 0
    assert upgrades_of(shoppers) == []
    wide = ApproachingUpgradeSettings(within=None, within_amount=250)
    assert queue_approaching_upgrades(shoppers, wide, T0 + DAY).customers == ["cid", "dan"]


def test_pending_spend_counts_only_when_asked(engine) -> None:
    service.apply_events(engine, [placed("fay", "f1", 960, T0)], T0, BUFFER_POLICY)
    without = ApproachingUpgradeSettings(within=0.1, include_pending=False)
    assert queue_approaching_upgrades(engine, without, T0 + DAY).queued == 0  # 1,000 short
    assert queue_approaching_upgrades(engine, CLOSE, T0 + DAY).customers == ["fay"]
    [message] = upgrades_of(engine)
    assert message["payload"]["spend_needed"] == 40.0


def test_no_milestone_under_an_override_or_at_the_top(engine) -> None:
    service.apply_events(engine, [placed("gus", "g1", 4900, T0)], T0, POLICY)
    service.apply_events(engine, [placed("vic", "v1", 9000, T0)], T0)
    service.set_override(engine, "gus", "Gold", "carol", "test", T0, until_us=None)
    assert queue_approaching_upgrades(engine, CLOSE, T0 + DAY).queued == 0


@pytest.fixture
def protected(engine):
    """ann keeps Gold until day 80 with 100 qualifying (as in test_notify_warnings)."""
    service.apply_events(engine, [placed("ann", "a1", 1500, T0)], T0, WINDOW_POLICY)
    service.apply_events(engine, [placed("ann", "a2", 100, T0 + 50 * DAY)], T0 + 50 * DAY)
    service.sweep(engine, T0 + 61 * DAY)
    return engine


def test_will_downgrade_carries_the_spend_needed_once_per_grace_period(protected) -> None:
    config = parse_channels({"milestones": {"will_downgrade": {"days_before": 14}}})
    queued, _ = dispatch_due(protected, config, GRACE_END - 15 * DAY, senders=[])
    assert queued.queued == 0
    queued, _ = dispatch_due(protected, config, GRACE_END - 14 * DAY, senders=[])
    assert queued.customers == ["ann"]
    dispatch_due(protected, config, GRACE_END - 10 * DAY, senders=[])
    [message] = outbox_list(protected, kind="will_downgrade")
    payload = message["payload"]
    assert payload["spend_needed"] == 900.0 and payload["orders_needed"] == 0
    assert payload["grace_ends_at"] == service.iso_instant(GRACE_END)
    assert outbox_list(protected, kind="downgrade_warning") == []  # one rule, never both


def test_milestone_emails_render(shoppers) -> None:
    service.apply_events(shoppers, [placed("ann", "a1", 1500, T0)], T0)
    with MailReceiver() as mail:
        config = parse_channels(
            {
                "email": mail.email_channel(
                    address_template="{{ customer_id }}@example.test",
                    events=["approaching_upgrade", "will_downgrade"],
                ),
                "milestones": {"approaching_upgrade": {"within": 0.1}},
            }
        )
        queued, delivered = dispatch_due(shoppers, config, T0 + DAY)
        assert queued.approaching_upgrade == ["cid"] and delivered.delivered >= 1
        [email] = mail.messages
    assert email["Subject"] == "You are USD 50.00 away from Gold"
    assert "spend USD 50.00 more to reach it" in email.get_body(("plain",)).get_content()


def test_milestone_settings_are_validated() -> None:
    with pytest.raises(ChannelsError, match="within"):
        parse_channels({"milestones": {"approaching_upgrade": {"within": None}}})
    with pytest.raises(ChannelsError, match="within"):
        parse_channels({"milestones": {"approaching_upgrade": {"within": 1.5}}})
    config = parse_channels({})
    assert config.milestones.approaching_upgrade is None
    assert config.warning_rule() == ("downgrade_warning", 14.0)
