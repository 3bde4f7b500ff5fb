"""The dashboard's login, sessions, CSRF checks, scopes and no-model behaviour over real HTTP
(a real uvicorn server on 127.0.0.1, a real SQLite store with simulated history, no browser,
no trained model: fast). The browser flow is in test_dashboard_browser.py."""

from __future__ import annotations

import contextlib
import html
import logging
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import quote

import httpx
import pandas as pd
import pytest

from serving.web.movements import weekly_movements
from serving.web.session import session_max_age, session_secret
from tests.e2e import dashboard_support as dash
from tests.e2e import serving_support as support
from tier_ml.money import instant_to_micros
from tier_ml.policy import load_policy
from tier_ml.store.apikeys import create_key, revoke_key
from tier_ml.store.service import create_store_engine, export_audit, export_tiers

NOW_US = instant_to_micros(support.AS_OF)
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def build_small_store(path: Path, customers: int = 300) -> str:
    from tier_ml.events import frame_records
    from tier_ml.simulate import SimulationConfig, simulate
    from tier_ml.store.service import apply_events, open_store

    config = SimulationConfig(
        customers=customers, start=date(2024, 1, 1), end=date(2025, 6, 30), seed=5
    )
    url = f"sqlite:///{path}"
    engine = open_store(url)
    apply_events(engine, frame_records(simulate(config).events), NOW_US)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_small_store(tmp_path_factory.mktemp("dashboard-http") / "store.sqlite")


@pytest.fixture(scope="module")
def server(small_store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server without models (load_models=False): predictions must say so."""
    tracking = f"sqlite:///{tmp_path_factory.mktemp('no-mlflow') / 'mlflow.db'}"
    with dash.dashboard_server(small_store, tracking, load_models=False) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def store(small_store: str):
    engine = create_store_engine(small_store)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def customer_id(store) -> str:
    tiers = export_tiers(store, NOW_US)
    return str(tiers[tiers["tier"] == "Gold"]["customer_id"].iloc[0])


def browser_like(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)


def token_of(response: httpx.Response) -> str:
    found = TOKEN.search(response.text)
    assert found, "the page should carry a CSRF token"
    return found.group(1)


@contextlib.contextmanager
def logged_in(base_url: str, key: str) -> Iterator[tuple[httpx.Client, str]]:
    """A client with a session for ``key``, and the session's CSRF token."""
    with browser_like(base_url) as client:
        token = token_of(client.get("/login"))
        data = {"api_key": key, "csrf_token": token, "next": "/dashboard"}
        done = client.post("/login", data=data)
        assert done.status_code == 303, done.text
        page = client.get("/dashboard")
        assert page.status_code == 200, page.text
        yield client, token_of(page)


def test_wrong_keys_are_limited_per_address(
    small_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIER_ML_LOGIN_MAX_FAILURES", "3")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with dash.dashboard_server(small_store, tracking, load_models=False) as base_url:
        with browser_like(base_url) as client:
            token = token_of(client.get("/login"))
            for _ in range(3):
                wrong = client.post("/login", data={"api_key": "guess", "csrf_token": token})
                assert wrong.status_code == 401
            blocked = client.post("/login", data={"api_key": support.ALL_KEY, "csrf_token": token})
            assert blocked.status_code == 429 and "try again in" in blocked.text
            assert int(blocked.headers["retry-after"]) > 0
            assert client.get("/dashboard").status_code == 303  # the right key did not log in
        with httpx.Client(base_url=base_url) as api:  # keys sent as headers are not throttled
            assert api.get("/v1/segments/Gold", headers=support.headers()).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard",
        "/dashboard/at-risk?min_probability=0.3",
        "/dashboard/at-risk.csv",
        "/dashboard/customers/C0000001",
    ],
)
def test_no_data_without_a_login(server: str, path: str) -> None:
    with browser_like(server) as client:
        response = client.get(path)
    assert response.status_code == 303
    location = httpx.URL(response.headers["location"])
    assert location.path == "/login"
    assert location.params["next"] == path
    assert "<table" not in response.text


def test_posting_without_a_session_changes_nothing(server: str, customer_id: str) -> None:
    with browser_like(server) as client, httpx.Client(base_url=server) as api:
        response = client.post(
            f"/dashboard/customers/{customer_id}/override",
            data={"tier": "VIP", "reason": "sneaky", "csrf_token": "x"},
        )
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")
        body = api.get(f"/v1/customers/{customer_id}", headers=support.headers()).json()
    assert body["override"] is None


def test_the_pages_are_not_in_the_openapi_schema(server: str) -> None:
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/dashboard", "/login", "/logout"))]
    assert "/v1/customers/{customer_id}" in paths


def test_login_checks_the_form_token_the_key_and_where_it_sends_you(server: str) -> None:
    with browser_like(server) as client:
        page = client.get("/login", params={"next": "/dashboard/at-risk"})
        assert page.status_code == 200 and "set-cookie" in page.headers
        token = token_of(page)
        stale = client.post("/login", data={"api_key": support.ALL_KEY, "csrf_token": "old"})
        assert stale.status_code == 400 and "expired" in stale.text
        token = token_of(stale)
        wrong = client.post("/login", data={"api_key": "nope", "csrf_token": token})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert client.get("/dashboard").status_code == 303  # still not logged in
        elsewhere = client.post(
            "/login",
            data={"api_key": support.ALL_KEY, "csrf_token": token, "next": "//evil.example/x"},
        )
        assert elsewhere.status_code == 303
        assert elsewhere.headers["location"] == "/dashboard"  # no open redirect
        cookie = elsewhere.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert support.ALL_KEY not in elsewhere.headers["set-cookie"]  # the key is not stored
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"


def test_a_tampered_cookie_is_no_session(server: str) -> None:
    with logged_in(server, support.ALL_KEY) as (client, _):
        value = client.cookies["tier_ml_session"]
        client.cookies.clear()
        client.cookies.set(
            "tier_ml_session", value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
        )
        assert client.get("/dashboard").status_code == 303


def test_logout_ends_the_session(server: str) -> None:
    with logged_in(server, support.ALL_KEY) as (client, token):
        assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 403
        assert client.get("/dashboard").status_code == 200
        out = client.post("/logout", data={"csrf_token": token})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert client.get("/dashboard").status_code == 303


def test_a_key_sent_in_a_header_works_without_a_session(server: str) -> None:
    with browser_like(server) as client:
        assert client.get("/dashboard", headers=support.headers()).status_code == 200
        bad = client.get("/dashboard", headers=support.headers("not-a-key"))
        assert bad.status_code == 401 and "text/html" in bad.headers["content-type"]
        no_scope = client.get("/dashboard", headers=support.headers(support.KEYS["admin"]))
        assert no_scope.status_code == 403 and "tiers:read" in no_scope.text


def test_revoking_a_stored_key_ends_its_sessions_at_once(server: str, store) -> None:
    key, _ = create_key(store, "temp-analyst", ["tiers:read"], NOW_US)
    with logged_in(server, key) as (client, _):
        assert client.get("/dashboard").status_code == 200
        assert client.get("/dashboard/at-risk").status_code == 403  # no predictions:read
        revoke_key(store, "temp-analyst", NOW_US)
        assert client.get("/dashboard").status_code == 303


def test_override_form_checks_scope_token_and_input(server: str, customer_id: str, store) -> None:
    url = f"/dashboard/customers/{customer_id}/override"
    with logged_in(server, dash.ANALYST_KEY) as (analyst, analyst_token):
        page = analyst.get(f"/dashboard/customers/{customer_id}")
        assert page.status_code == 200 and 'id="override-form"' not in page.text
        refused = analyst.post(
            url, data={"tier": "VIP", "reason": "r", "csrf_token": analyst_token}
        )
        assert refused.status_code == 403
    with logged_in(server, support.ALL_KEY) as (admin, token):
        assert 'id="override-form"' in admin.get(f"/dashboard/customers/{customer_id}").text
        forged = admin.post(url, data={"tier": "VIP", "reason": "r", "csrf_token": "forged"})
        assert forged.status_code == 403
        empty = admin.post(url, data={"tier": "VIP", "reason": " ", "csrf_token": token})
        assert empty.status_code == 422 and "reason is required" in empty.text
        unknown = admin.post(url, data={"tier": "Platinum", "reason": "r", "csrf_token": token})
        assert unknown.status_code == 422 and "unknown tier" in unknown.text
        past = admin.post(
            url, data={"tier": "VIP", "reason": "r", "until": "2020-01-01", "csrf_token": token}
        )
        assert past.status_code == 422 and "not after now" in past.text
        assert export_audit(store).query("reason == 'override'").empty  # nothing written so far
        done = admin.post(
            url,
            data={
                "tier": "VIP",
                "reason": "retention offer",
                "until": "2026-01-01",
                "csrf_token": token,
            },
        )
        assert done.status_code == 303 and done.headers["location"].endswith("?done=override")
        page = admin.get(done.headers["location"])
        assert "Override saved." in page.text and "retention offer" in page.text
        cleared = admin.post(
            f"{url}/clear", data={"reason": "offer withdrawn", "csrf_token": token}
        )
        assert cleared.status_code == 303
    audit = export_audit(store)
    mine = audit[(audit["customer_id"] == customer_id) & (audit["reason"] == "override")]
    assert mine["actor"].tolist() == [dash.ADMIN_NAME, dash.ADMIN_NAME]
    assert mine["note"].tolist() == ["retention offer", "offer withdrawn"]
    assert mine["new_tier"].tolist() == ["VIP", "Gold"]


def test_unknown_customer_is_a_404_page(server: str) -> None:
    with browser_like(server) as client:
        response = client.get("/dashboard/customers/NOBODY", headers=support.headers())
    assert response.status_code == 404
    assert (
        "no customer &#39;NOBODY&#39;" in response.text
        and "text/html" in response.headers["content-type"]
    )


def test_without_a_model_the_pages_say_so_and_the_rest_works(server: str, customer_id: str) -> None:
    with logged_in(server, support.ALL_KEY) as (client, _):
        overview = client.get("/dashboard")
        assert "no prediction model is loaded" in overview.text
        assert 'class="chart pyramid"' in overview.text
        at_risk = client.get("/dashboard/at-risk")
        assert at_risk.status_code == 200 and "no prediction model is loaded" in at_risk.text
        assert client.get("/dashboard/at-risk.csv").status_code == 503
        customer = client.get(f"/dashboard/customers/{customer_id}")
        assert customer.status_code == 200
        assert 'id="prediction-note"' in customer.text and 'id="audit-trail"' in customer.text
        assert client.get("/dashboard/at-risk?min_probability=2").status_code == 200


def test_weekly_movements_agree_with_the_audit_log(store) -> None:
    policy = load_policy()
    weeks = weekly_movements(store, policy, NOW_US, weeks=40)
    assert len(weeks) == 40
    audit = export_audit(store)
    at = pd.to_datetime(audit["at"], utc=True)
    start = pd.Timestamp(weeks[0].label, tz="UTC")
    assert start.day_name() == "Monday"
    window = audit[(at >= start) & (at <= support.AS_OF) & audit["old_tier"].notna()]
    rank = {name: i for i, name in enumerate(policy.tier_names)}
    old, new = window["old_tier"].map(rank), window["new_tier"].map(rank)
    assert sum(w.upgrades for w in weeks) == int((new > old).sum()) > 0
    assert sum(w.downgrades for w in weeks) == int((new < old).sum())
    week_of = (at[window.index] - start).dt.days // 7
    per_week = (new > old).groupby(week_of).sum()
    assert [w.upgrades for w in weeks] == [int(per_week.get(i, 0)) for i in range(40)]


def test_session_settings(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s" * 32
    assert session_secret({"TIER_ML_SESSION_SECRET": secret}) == secret
    with caplog.at_level(logging.WARNING, logger="serving.web"):
        first, second = session_secret({}), session_secret({})
    assert first != second and len(first) >= 32
    assert "TIER_ML_SESSION_SECRET is not set" in caplog.text
    assert session_max_age({}) == 8 * 3600
    assert session_max_age({"TIER_ML_SESSION_MAX_AGE": "60"}) == 60
    with pytest.raises(ValueError, match="number of seconds"):
        session_max_age({"TIER_ML_SESSION_MAX_AGE": "soon"})


def test_auth_disabled_opens_the_pages_with_a_warning(small_store: str, tmp_path: Path) -> None:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with (
        dash.dashboard_server(
            small_store, tracking, load_models=False, auth_disabled=True
        ) as base_url,
        browser_like(base_url) as client,
    ):
        page = client.get("/dashboard")
    assert page.status_code == 200 and "Authentication is disabled" in page.text


#: Ids as retailers have them: Shopify's global ids hold slashes; others hold %, ?, #, spaces.
ODD_IDS = ["gid://shopify/Customer/7702", "50%/off?x#y", "Zoë Ø/ledger"]


def test_ids_holding_a_slash_or_reserved_characters_are_reachable(server: str, store) -> None:
    """Sent percent-encoded, every such id reaches the API and the pages whole (a real
    uvicorn server: routing sees the path as sent)."""
    order = {"event_type": "placed", "amount": "60000", "currency": "USD", "channel": "web",
             "region": "US", "occurred_at": "2025-05-01T09:00:00Z"}
    events = [
        {**order, "event_id": f"odd-{i}", "order_id": f"odd-{i}", "customer_id": customer_id}
        for i, customer_id in enumerate(ODD_IDS)
    ]
    with httpx.Client(base_url=server, headers=support.headers(), timeout=30) as api:
        sent = api.post("/v1/events", json={"events": events})
        assert sent.status_code == 200, sent.text
        assert {r["status"] for r in sent.json()["results"]} == {"accepted"}
        for customer_id in ODD_IDS:
            url = f"/v1/customers/{quote(customer_id, safe='')}"
            for path in (url, f"{url}/ledger"):
                got = api.get(path)
                assert got.status_code == 200, (path, got.text)
                assert got.json()["customer_id"] == customer_id
            put = api.put(f"{url}/override", json={"tier": "Silver", "reason": "odd id"})
            assert put.status_code == 200 and put.json()["override"]["tier"] == "Silver", put.text
            removed = api.delete(f"{url}/override", params={"reason": "odd id done"})
            assert removed.status_code == 200 and removed.json()["override"] is None
        # sent unencoded, the slash separates segments: no such endpoint
        assert api.get(f"/v1/customers/{ODD_IDS[0]}").status_code == 404
        metrics = api.get("/metrics").text  # the latency metric still names the route
        assert 'route="/v1/customers/{customer_id}/ledger",status="200"} 3.0' in metrics
    audit = export_audit(store)
    assert set(audit.query("note == 'odd id'")["customer_id"]) == set(ODD_IDS)
    with logged_in(server, support.ALL_KEY) as (admin, token):
        for customer_id in ODD_IDS:
            found = admin.get("/dashboard/customers", params={"customer_id": customer_id})
            assert found.status_code == 303
            page = admin.get(found.headers["location"])
            assert page.status_code == 200 and html.escape(customer_id) in page.text
            form = f"/dashboard/customers/{quote(customer_id, safe='')}/override"
            done = admin.post(form, data={"tier": "VIP", "reason": "page", "csrf_token": token})
            assert done.status_code == 303, done.text
            assert admin.get(done.headers["location"]).status_code == 200
    overrides = export_audit(store).query("note == 'page'")
    assert set(overrides["customer_id"]) == set(ODD_IDS)
