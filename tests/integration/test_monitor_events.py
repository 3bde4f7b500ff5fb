"""Model events in the outbox (``drift_detected``): one row per key, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from tests.integration.store.conftest import BACKENDS, postgres_schema_url  # noqa: F401
from tier_ml.store.model_events import DRIFT_DETECTED, record_model_event
from tier_ml.store.service import export_outbox, open_store

NOW_US = 1_752_566_400_000_000  # 2025-07-15T08:00:00Z


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")()
    engine = open_store(url)
    yield engine
    engine.dispose()


def test_a_model_event_is_queued_once_per_key(engine) -> None:
    payload = {"drift_share": 0.42, "threshold": 0.3, "drifted_columns": ["orders_365d"]}
    first = record_model_event(engine, DRIFT_DETECTED, "tier-ml-churn", payload, "drift:run-1", NOW_US)
    again = record_model_event(engine, DRIFT_DETECTED, "tier-ml-churn", payload, "drift:run-1", NOW_US)
    other = record_model_event(engine, DRIFT_DETECTED, "tier-ml-churn", payload, "drift:run-2", NOW_US)
    assert first == again != other
    outbox = export_outbox(engine)
    rows = outbox[outbox["kind"] == DRIFT_DETECTED]
    assert len(rows) == 2
    assert set(rows["customer_id"]) == {"model:tier-ml-churn"}
    assert set(rows["status"]) == {"pending"}
    document = json.loads(rows["payload"].iloc[0])
    assert document["drift_share"] == 0.42
    assert document["model"] == "tier-ml-churn"
    assert document["at"] == "2025-07-15T08:00:00Z"
    assert document["idempotency_key"] == "drift:run-1"


def test_a_model_event_needs_a_key(engine) -> None:
    with pytest.raises(ValueError, match="idempotency key"):
        record_model_event(engine, DRIFT_DETECTED, "tier-ml-churn", {}, "", NOW_US)
