"""Model events (``drift_detected`` from ``tier-ml monitor``) go out by webhook when a
webhook asks for them, and never to email or the loyalty sync (they reach no customer)."""

from __future__ import annotations

import pytest

from tests.integration.notify_support import SECRET, SECRET_ENV, T0, WebhookReceiver
from tests.integration.store import conftest as store_fixtures
from tier_ml.notify.config import ChannelsError, parse_channels
from tier_ml.notify.dispatcher import dispatch
from tier_ml.notify.senders import build_senders
from tier_ml.store.model_events import DRIFT_DETECTED, record_model_event

backend = store_fixtures.backend
new_store_url = store_fixtures.new_store_url
postgres_schema_url = store_fixtures.postgres_schema_url
store_url = store_fixtures.store_url
engine = store_fixtures.engine


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def _channels(url: str, events: list[str] | None) -> object:
    hook = {"name": "ops", "url": url, "secret_env": SECRET_ENV}
    if events is not None:
        hook["events"] = events
    return parse_channels({"delivery": {"max_attempts": 3}, "webhooks": [hook]})


def test_a_subscribed_webhook_receives_drift_detected_signed(engine) -> None:
    receiver = WebhookReceiver().start()
    try:
        record_model_event(
            engine, DRIFT_DETECTED, "tier-ml-churn", {"drift_share": 0.5}, "drift-run-1", T0
        )
        config = _channels(receiver.url, ["tier_upgraded", DRIFT_DETECTED])
        result = dispatch(engine, config, build_senders(config), T0 + 1)
        assert result.delivered == 1
        [delivery] = receiver.requests
        assert delivery.signature_ok and delivery.key == "drift-run-1"
        assert delivery.body["kind"] == DRIFT_DETECTED
        assert delivery.body["data"]["drift_share"] == 0.5
    finally:
        receiver.stop()


def test_customer_channels_refuse_model_events() -> None:
    with pytest.raises(ChannelsError, match="not a customer"):
        parse_channels(
            {
                "email": {
                    "host": "127.0.0.1",
                    "from": "rewards@example.com",
                    "address_template": "{{ customer_id }}@example.com",
                    "events": [DRIFT_DETECTED],
                }
            }
        )
