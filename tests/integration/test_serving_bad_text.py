"""Bad input at the service's edges, on SQLite and PostgreSQL (an in-process app over a real
store): an event holding NUL is rejected on its own while the batch's good events are
stored; the dashboard's override form (which calls the handler directly, past the request
guard) answers a form error naming the field; overrides take a tier in any letter case and
refuse an instant before the store's clock for the customer, like the CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.e2e import serving_support as support
from tests.integration.store.conftest import (  # noqa: F401  (fixtures)
    backend,
    engine,
    new_store_url,
    postgres_schema_url,
    store_url,
)
from tier_ml.money import instant_to_micros
from tier_ml.store.service import apply_events, export_audit, export_ledger
from tier_ml.store.unit_of_work import run_in_transaction

AS_OF = pd.Timestamp("2025-07-01T00:00:00Z").to_pydatetime()
NOW = instant_to_micros(AS_OF)
KEY = {"X-API-Key": support.ALL_KEY}
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"


def event(i: int, **fields: str) -> dict[str, str]:
    base = {"event_id": f"e{i}", "event_type": "placed", "order_id": f"o{i}",
            "customer_id": f"C{i}", "occurred_at": "2025-06-01T10:00:00Z", "amount": "120",
            "currency": "USD", "channel": "web", "region": "US"}  # fmt: skip
    return {**base, **fields}


@pytest.fixture
def client(engine, store_url, tmp_path) -> Iterator[TestClient]:  # noqa: F811
    from serving.app import create_app
    from serving.settings import ServingSettings

    settings = ServingSettings(
        database_url=store_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_keys=support.ENV_KEYS,
        now=AS_OF,
        load_models=False,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def _rejects(engine) -> list[tuple]:  # noqa: F811
    sql = "SELECT event_id, reason, detail FROM rejected_events ORDER BY id"
    return run_in_transaction(
        engine, lambda uow: [tuple(r) for r in uow.repo.connection.exec_driver_sql(sql)]
    )


def test_an_event_with_nul_is_rejected_alone_and_the_good_ones_are_stored(
    engine, client  # noqa: F811
) -> None:
    batch = [event(1), event(2, customer_id="C\x002"), event(3)]
    response = client.post("/v1/events", headers=KEY, json={"events": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["counts"] == {"accepted": 2, "duplicate": 0, "rejected": 1}
    bad = body["results"][1]
    assert (bad["position"], bad["status"], bad["reason"]) == (1, "rejected", "unsupported_character")
    assert bad["detail"].startswith("customer_id contains the NUL character")
    assert [r["tier"] for r in body["results"]] == ["Silver", None, "Silver"]
    assert sorted(export_ledger(engine)["event_id"]) == ["e1", "e3"]
    assert _rejects(engine) == [("e2", "unsupported_character", bad["detail"])]
    # a NUL in the event_id itself (the rejects table keeps the row as JSON, not the id)
    again = client.post("/v1/events", headers=KEY, json=[event(4, event_id="e\x004"), event(5)])
    assert again.json()["counts"] == {"accepted": 1, "duplicate": 0, "rejected": 1}
    assert again.json()["results"][0]["detail"].startswith("event_id contains the NUL")
    assert _rejects(engine)[-1][:2] == (None, "unsupported_character")
    # a channel payload: the adapter's rows go through the same check
    csv = (
        "receipt_id,store_id,business_date,time,loyalty_id,transaction_type,total,currency\n"
        "R1,S1,2025-06-02,10:00,K1,SALE,80,USD\nR2,S1,2025-06-02,11:00,K\x002,SALE,90,USD\n"
    )
    pos = client.post(
        "/v1/channels/pos/orders", headers={**KEY, "content-type": "text/csv"}, content=csv
    )
    assert pos.status_code == 200, pos.text
    assert [r["status"] for r in pos.json()["results"]] == ["accepted", "rejected"]
    # a lone surrogate (JSON can carry one; no UTF-8 for it) in an app payload: rejected the
    # same way, and the answer echoes the id escaped
    payload = json.loads((PAYLOADS / "app_events.json").read_text())
    payload[0]["data"]["order"]["user_id"] = "U\ud8001"
    app = client.post(
        "/v1/channels/app/orders",
        headers={**KEY, "content-type": "application/json"},
        content=json.dumps(payload),  # ASCII escapes: the surrogate travels as \\ud800
    )
    assert app.status_code == 200, app.text
    first, *others = app.json()["results"]
    assert (first["reason"], first["customer_id"]) == ("unsupported_character", "U\\ud8001")
    assert first["detail"].startswith("customer_id contains an unpaired surrogate")
    assert "accepted" in {r["status"] for r in others}  # (a refund of that order: unknown_order)
    # the other routes still refuse NUL whole, in the path and query of the events routes too
    assert client.get("/v1/customers/C1%00", headers=KEY).status_code == 422
    assert client.post("/v1/channels/pos%00/orders", headers=KEY, json={}).status_code == 422


def _logged_in(client: TestClient) -> str:
    """Log the client into the dashboard; the page's CSRF token."""
    token = TOKEN.search(client.get("/login").text).group(1)
    data = {"api_key": support.ALL_KEY, "csrf_token": token, "next": "/dashboard"}
    assert client.post("/login", data=data, follow_redirects=False).status_code == 303
    return TOKEN.search(client.get("/dashboard").text).group(1)


def test_the_dashboard_override_form_names_a_field_holding_nul(engine, client) -> None:  # noqa: F811
    apply_events(engine, [event(1)], NOW)
    token = _logged_in(client)
    url = "/dashboard/customers/C1/override"
    for form, message in (
        ({"tier": "Gold", "reason": "ticket\x00 9"}, "reason contains the NUL character"),
        ({"tier": "Gold\x00", "reason": "ticket 9"}, "unknown tier"),
        ({"tier": "Gold", "reason": "ticket 9", "until": "2026\x00"}, "is not an ISO 8601 time"),
    ):
        page = client.post(url, data={**form, "csrf_token": token}, follow_redirects=False)
        assert page.status_code == 422, page.text
        assert message in page.text, form
    cleared = client.post(f"{url}/clear", data={"reason": "x\x00", "csrf_token": token})
    assert cleared.status_code == 422 and "reason contains the NUL character" in cleared.text
    missing = client.post(
        "/dashboard/customers/C%001/override",
        data={"tier": "Gold", "reason": "r", "csrf_token": token},
        follow_redirects=False,
    )
    assert missing.status_code == 404
    assert export_audit(engine).query("reason == 'override'").empty  # nothing written


def test_an_override_takes_the_tier_in_any_letter_case(engine, client) -> None:  # noqa: F811
    apply_events(engine, [event(1)], NOW)
    response = client.put(
        "/v1/customers/C1/override", headers=KEY, json={"tier": "gOLD", "reason": "goodwill"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["tier"] == "Gold"
    assert export_audit(engine).query("reason == 'override'")["new_tier"].tolist() == ["Gold"]
    unknown = client.put(
        "/v1/customers/C1/override", headers=KEY, json={"tier": "Platinum", "reason": "x"}
    )
    assert unknown.status_code == 422
    [error] = unknown.json()["errors"]
    assert error["field"] == "tier" and "Silver, Gold, VIP" in error["reason"]


def test_an_override_before_the_customer_clock_is_a_conflict(engine, client) -> None:  # noqa: F811
    """Refused when the app's now is before the customer's last evaluation; another
    customer evaluated later (an event batch committed meanwhile) does not refuse it."""
    day = 86_400_000_000
    apply_events(engine, [event(3)], NOW - day)
    apply_events(engine, [event(1), event(2)], NOW + day)  # the store's clock: a day ahead
    response = client.put(
        "/v1/customers/C1/override", headers=KEY, json={"tier": "VIP", "reason": "goodwill"}
    )
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert "before the store's clock for customer C1 (2025-07-02T00:00:00Z" in detail
    assert detail.startswith("now 2025-07-01T00:00:00Z")  # the API's word, not the CLI option
    cleared = client.delete("/v1/customers/C1/override", headers=KEY, params={"reason": "x"})
    assert cleared.status_code == 409 and "store's clock for customer C1" in cleared.text
    assert export_audit(engine).query("reason == 'override'").empty
    fine = client.put(
        "/v1/customers/C3/override", headers=KEY, json={"tier": "VIP", "reason": "goodwill"}
    )
    assert fine.status_code == 200, fine.text
    assert fine.json()["tier_since"] == "2025-07-01T00:00:00Z"


def test_an_unknown_outbox_kind_is_a_422_naming_the_known_ones(client) -> None:
    response = client.get("/v1/outbox", headers=KEY, params={"kind": "welcom"})
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["in"]) == ("kind", "query")
    assert "unknown kind 'welcom'; known: welcome, tier_upgraded" in error["reason"]
    assert client.get("/v1/outbox", headers=KEY, params={"kind": "welcome"}).status_code == 200
