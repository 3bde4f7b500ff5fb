"""The HTTP API in process (ASGI): the auth matrix (every endpoint x every scope), problem+json
errors, request limits, no-model behaviour, keys from the store, the ``apikey`` CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from serving.app import create_app
from serving.settings import ServingSettings
from tests.e2e import serving_support as support
from tier_ml.money import instant_to_micros
from tier_ml.store.service import apply_events, open_store

NOW_US = instant_to_micros(support.AS_OF)
EVENTS = [
    {
        "event_id": f"e{i}",
        "event_type": "placed",
        "order_id": f"o{i}",
        "customer_id": f"C{i % 3}",
        "occurred_at": f"2025-0{1 + i % 5}-1{i % 9}T10:00:00Z",
        "amount": "9000",
        "currency": "USD",
        "channel": "web",
        "region": "US",
    }
    for i in range(12)
]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('serving-api') / 'store.sqlite'}"
    engine = open_store(url)
    apply_events(engine, EVENTS, NOW_US)
    engine.dispose()
    return url


def settings(store_url: str, **extra: object) -> ServingSettings:
    values = {
        "database_url": store_url,
        # a registry that cannot exist: loading fails fast, as with no model registered
        "mlflow_tracking_uri": "sqlite:///"
        + str(Path(store_url.removeprefix("sqlite:///")).parent / "missing" / "mlflow.db"),
        "api_keys": support.ENV_KEYS,
        "now": support.AS_OF,
        "load_models": False,
        "key_cache_seconds": 0.0,
    }
    return ServingSettings(**{**values, **extra})


@pytest.fixture(scope="module")
def client(store_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings(store_url))) as test_client:
        yield test_client


# Every protected endpoint: (method, path, scope, request options).
ENDPOINTS = [
    ("POST", "/v1/events", "events:write", {"json": EVENTS[0]}),
    (
        "POST",
        "/v1/channels/{channel}/orders",
        "events:write",
        {"json": {"type": "order.created"}, "path": {"channel": "app"}},
    ),
    ("GET", "/v1/customers/{customer_id}", "tiers:read", {"path": {"customer_id": "C1"}}),
    ("GET", "/v1/customers/{customer_id}/ledger", "tiers:read", {"path": {"customer_id": "C1"}}),
    ("GET", "/v1/outbox", "admin", {}),
    ("POST", "/v1/outbox/retry", "admin", {"json": {}}),
    (
        "PUT",
        "/v1/customers/{customer_id}/override",
        "admin",
        {"json": {"tier": "Gold", "reason": "t"}, "path": {"customer_id": "C1"}},
    ),
    (
        "DELETE",
        "/v1/customers/{customer_id}/override",
        "admin",
        {"params": {"reason": "t"}, "path": {"customer_id": "C1"}},
    ),
    (
        "GET",
        "/v1/customers/{customer_id}/predictions",
        "predictions:read",
        {"path": {"customer_id": "C1"}},
    ),
    ("POST", "/v1/predictions", "predictions:read", {"json": {"customer_ids": ["C1"]}}),
    ("GET", "/v1/segments/gold-at-risk", "predictions:read", {}),
    ("GET", "/v1/segments/{tier}", "tiers:read", {"path": {"tier": "Gold"}}),
    ("GET", "/v1/support/priority", "tiers:read", {}),
    ("GET", "/v1/policy", "tiers:read", {}),
    ("POST", "/v1/policy", "admin", {"json": {"policy": {"tiers": [{"name": "Silver"}]}}}),
    ("POST", "/v1/jobs/reclassify", "admin", {"json": {}}),
    ("GET", "/v1/jobs/{job_id}", "admin", {"path": {"job_id": "nope"}}),
    ("GET", "/v1/audit", "audit:read", {}),
    ("GET", "/v1/rejects", "admin", {}),
    ("POST", "/v1/admin/models/reload", "admin", {}),
]
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}


def call(client: TestClient, method: str, path: str, options: dict, key: str | None) -> object:
    url = path.format(**options.get("path", {}))
    headers = {} if key is None else {"X-API-Key": key}
    return client.request(
        method, url, json=options.get("json"), params=options.get("params"), headers=headers
    )


def test_the_matrix_lists_every_endpoint(client: TestClient) -> None:
    paths = client.app.openapi()["paths"]
    routes = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    assert routes == {(m, p) for m, p, _, _ in ENDPOINTS} | PUBLIC


@pytest.mark.parametrize("scope", support.SCOPES)
@pytest.mark.parametrize(
    ("method", "path", "needed", "options"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS]
)
def test_auth_matrix(
    client: TestClient, scope: str, method: str, path: str, needed: str, options: dict
) -> None:
    response = call(client, method, path, options, support.KEYS[scope])
    if scope == needed:
        assert response.status_code not in {401, 403}, response.text
    else:
        assert response.status_code == 403, response.text
        assert needed in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "needed", "options"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS]
)
def test_no_key_or_a_wrong_key_is_401(
    client: TestClient, method: str, path: str, needed: str, options: dict
) -> None:
    for key in (None, "not-a-key"):
        response = call(client, method, path, options, key)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "WWW-Authenticate" in response.headers


def test_bearer_works_like_x_api_key(client: TestClient) -> None:
    response = client.get(
        "/v1/customers/C1", headers={"Authorization": f"Bearer {support.KEYS['tiers:read']}"}
    )
    assert response.status_code == 200


def test_without_models_predictions_are_503_and_tiers_serve(client: TestClient) -> None:
    key = {"X-API-Key": support.ALL_KEY}
    prediction = client.get("/v1/customers/C1/predictions", headers=key)
    assert prediction.status_code == 503
    assert "no prediction model is loaded" in prediction.json()["detail"]
    assert client.get("/v1/customers/C1", headers=key).status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["store"] == "ok"
    reload = client.post("/v1/admin/models/reload", headers=key).json()
    assert reload["ready"] is False and "could not be loaded" in reload["models"]["churn"]["error"]


def test_errors_are_problems_with_field_and_reason(client: TestClient) -> None:
    key = {"X-API-Key": support.ALL_KEY}
    wrong_type = client.post("/v1/events", json={"events": [{"event_id": ["x"]}]}, headers=key)
    assert wrong_type.status_code == 422
    assert wrong_type.json()["errors"][0]["field"].endswith("event_id")
    bad_json = client.post(
        "/v1/events", content=b"{", headers={**key, "content-type": "application/json"}
    )
    assert (
        bad_json.status_code == 422 and "not valid JSON" in bad_json.json()["errors"][0]["reason"]
    )
    unknown_field = client.post("/v1/events", json={"evnt_id": "x"}, headers=key)
    assert unknown_field.status_code == 422
    empty = client.post("/v1/events", json=[], headers=key)
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "events"
    limit = client.get("/v1/segments/gold", params={"limit": 0}, headers=key)
    assert limit.status_code == 422
    assert (
        limit.json()["errors"][0]["field"] == "limit" and limit.json()["errors"][0]["in"] == "query"
    )
    assert client.get("/v1/nothing-here").status_code == 404
    media = client.post(
        "/v1/channels/app/orders", content=b"x", headers={**key, "content-type": "application/xml"}
    )
    assert media.status_code == 415
    policy = client.post("/v1/policy", json={"policy": {"tiers": []}}, headers=key)
    assert policy.status_code == 422 and policy.json()["errors"][0]["field"] == "policy"


def test_segment_csv_cells_cannot_run_as_spreadsheet_formulas(client: TestClient) -> None:
    """Customer ids and regions come from shops: ``=HYPERLINK(...)`` must reach Excel as text,
    and an id that starts with a carriage return must stay one cell."""
    key = {"X-API-Key": support.ALL_KEY}
    rows = [{**EVENTS[0], "event_id": f"csv{i}", "order_id": f"csv-o{i}", "customer_id": cid, "region": region,
             "amount": "30000", "occurred_at": "2025-01-02T10:00:00Z"}
            for i, (cid, region) in enumerate([('=HYPERLINK("http://x","y")', "=cmd|' /C calc'!A0"), ("\rCR1", "US")])]
    assert client.post("/v1/events", json=rows, headers=key).status_code == 200
    answer = client.get("/v1/segments/gold", params={"format": "csv"}, headers=key)
    assert answer.status_code == 200
    import csv
    import io

    cells = {row["customer_id"]: row for row in csv.DictReader(io.StringIO(answer.text, newline=""))}
    assert cells['\'=HYPERLINK("http://x","y")']["region"] == "'=cmd|' /C calc'!A0"
    assert "'\rCR1" in cells  # quoted, one cell: the reader gives it back whole


def test_channel_payloads_a_sender_would_retry_or_that_broke_the_server(client: TestClient) -> None:
    """A Shopify test order converts to nothing: 200 (a 4xx makes Shopify retry for two days,
    then drop the subscription). Deep nesting was a 500; an unknown time zone rejected every row."""
    key = {"X-API-Key": support.ALL_KEY}
    test_order = client.post("/v1/channels/shopify/orders", headers={**key, "X-Shopify-Topic": "orders/create"},
                             json={"id": 1, "test": True, "total_price": "10.00", "currency": "USD"})
    assert test_order.status_code == 200 and test_order.json()["results"] == []
    assert test_order.json()["counts"] == {"accepted": 0, "duplicate": 0, "rejected": 0}
    nested = client.post("/v1/channels/app/orders", headers={**key, "content-type": "application/json"},
                         content=b"[" * 5000 + b"]" * 5000)
    assert nested.status_code == 422 and nested.json()["errors"][0]["field"] == "body"
    zone = client.post("/v1/channels/pos/orders", params={"timezone": "Mars/Olympus"},
                       headers={**key, "content-type": "text/csv"}, content="receipt_id\n")
    assert zone.status_code == 422 and zone.json()["errors"][0]["field"] == "timezone"


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("PUT", "/v1/customers/C2/override", "application/x-www-form-urlencoded"),  # curl -d
        ("PUT", "/v1/customers/C2/override", None),
        ("POST", "/v1/policy", "text/plain"),
        ("POST", "/v1/outbox/retry", "text/plain"),
    ],
)
def test_a_json_body_not_sent_as_json_is_415_and_changes_nothing(
    client: TestClient, method: str, path: str, content_type: str | None
) -> None:
    key = {"X-API-Key": support.ALL_KEY}
    before = client.get("/v1/customers/C2", headers=key).json()
    body = b'{"tier": "VIP", "reason": "goodwill", "policy": {"tiers": [{"name": "Silver"}]}}'
    headers = {**key, **({"content-type": content_type} if content_type else {})}
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    [error] = response.json()["errors"]
    assert error["field"] == "content-type" and error["in"] == "header"
    assert "application/json" in error["reason"]
    assert (content_type or "no Content-Type") in error["reason"]
    assert client.get("/v1/customers/C2", headers=key).json() == before


def test_a_policy_yaml_with_aliases_is_refused_before_they_expand(client: TestClient) -> None:
    key = {"X-API-Key": support.ALL_KEY}
    # 9 lines of YAML, a million values once the aliases are expanded ("billion laughs")
    laughs = ["a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    laughs += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]
    laughs += ["tiers:", "  - name: Silver", "    perks: {big: *a5}"]
    # merge keys double a mapping's entries per line inside the YAML parser itself
    merges = ["m0: &m0 {k: 1}"]
    merges += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, 40)]
    merges += ["tiers: [{name: Silver}]"]
    for path, lines in (("/v1/policy", laughs), ("/v1/jobs/reclassify", merges)):
        started = time.perf_counter()
        response = client.post(path, json={"policy_yaml": "\n".join(lines)}, headers=key)
        assert time.perf_counter() - started < 1.0
        assert response.status_code == 422, response.text[:300]
        [error] = response.json()["errors"]
        assert error["field"] == "policy_yaml" and "the alias *" in error["reason"]
    selfish = client.post("/v1/policy", json={"policy_yaml": "a: &a [*a]"}, headers=key)
    assert selfish.status_code == 422


def test_request_size_and_batch_limits(store_url: str) -> None:
    app = create_app(
        settings(store_url, max_body_bytes=2_000, max_events_per_request=2, max_prediction_ids=2)
    )
    key = {"X-API-Key": support.ALL_KEY}
    with TestClient(app) as small:
        big = small.post("/v1/events", json={"events": [EVENTS[0]] * 40}, headers=key)
        assert big.status_code == 413 and big.headers["content-type"].startswith(
            "application/problem+json"
        )
        streamed = small.post(
            "/v1/events",
            content=iter([b"[" + b" " * 1500, b" " * 1500 + b"]"]),
            headers={**key, "content-type": "application/json"},
        )
        assert streamed.status_code == 413
        many = small.post("/v1/events", json=[EVENTS[0]] * 3, headers=key)
        assert many.status_code == 413 and many.json()["errors"][0]["field"] == "events"


def test_no_keys_at_all_is_closed_unless_disabled(store_url: str) -> None:
    with TestClient(create_app(settings(store_url, api_keys=""))) as closed:
        refused = closed.get("/v1/customers/C1")
        assert refused.status_code == 401 and "tier-ml apikey create" in refused.json()["detail"]
    with TestClient(create_app(settings(store_url, api_keys="", auth_disabled=True))) as demo:
        assert demo.get("/v1/customers/C1").status_code == 200
        assert "disabled" in demo.get("/readyz").json()["auth"]


def test_store_keys_hashed_revocable_and_the_cli(store_url: str) -> None:
    from tier_ml.cli import app as cli

    runner = CliRunner()
    created = runner.invoke(
        cli, ["apikey", "create", "--name", "crm", "--scopes", "tiers:read", "--db", store_url]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    engine = open_store(store_url)
    stored = (
        engine.connect()
        .exec_driver_sql("SELECT key_hash, scopes FROM api_keys WHERE name = 'crm'")
        .fetchall()
    )
    engine.dispose()
    assert stored and key not in {value for row in stored for value in row}  # only the hash is kept
    with TestClient(create_app(settings(store_url, api_keys=""))) as app:
        assert app.get("/v1/customers/C1", headers={"X-API-Key": key}).status_code == 200
        assert app.get("/v1/audit", headers={"X-API-Key": key}).status_code == 403
        revoked = runner.invoke(cli, ["apikey", "revoke", "--name", "crm", "--db", store_url])
        assert revoked.exit_code == 0
        assert app.get("/v1/customers/C1", headers={"X-API-Key": key}).status_code == 401
    bad = runner.invoke(
        cli, ["apikey", "create", "--name", "x", "--scopes", "root", "--db", store_url]
    )
    assert bad.exit_code == 2 and "unknown scope" in bad.output


def test_bad_env_keys_fail_at_start(store_url: str) -> None:
    from tier_ml.store.apikeys import ApiKeyError

    with (
        pytest.raises(ApiKeyError, match="TIER_ML_API_KEYS entry 1"),
        TestClient(create_app(settings(store_url, api_keys="just-a-key"))),
    ):
        pass


def test_serve_refuses_bad_settings_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tier_ml.cli import app as cli

    runner = CliRunner()
    bad_db = runner.invoke(cli, ["serve", "--db", "nonsense://x"])
    assert bad_db.exit_code == 2 and "cannot open the store" in bad_db.output
    monkeypatch.setenv("TIER_ML_API_KEYS", "just-a-key")
    bad_keys = runner.invoke(cli, ["serve", "--db", f"sqlite:///{tmp_path / 's.sqlite'}"])
    assert bad_keys.exit_code == 2 and "three fields separated by colons" in bad_keys.output
    assert "Traceback" not in bad_db.output + bad_keys.output



def test_serve_refuses_an_unknown_log_level_with_one_line(tmp_path: Path) -> None:
    from tier_ml.cli import app as cli

    result = CliRunner().invoke(
        cli, ["serve", "--log-level", "chatty", "--db", f"sqlite:///{tmp_path / 's.sqlite'}"]
    )
    assert result.exit_code == 2, result.output
    assert "--log-level must be one of critical" in result.output and "'chatty'" in result.output
    assert "Traceback" not in result.output

def test_ledger_explains_the_tier_the_customer_endpoint_shows(client: TestClient) -> None:
    key = {"X-API-Key": support.KEYS["tiers:read"]}
    customer = client.get("/v1/customers/C1", headers=key).json()
    ledger = client.get("/v1/customers/C1/ledger", headers=key)
    assert ledger.status_code == 200
    body = ledger.json()
    assert body["customer_id"] == "C1"
    assert body["effective_tier"] == customer["tier"]
    missing = client.get("/v1/customers/nobody/ledger", headers=key)
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "customer_id"


def test_dead_letters_are_listed_and_retried_over_http(tmp_path: Path, monkeypatch) -> None:
    from tests.integration.notify_support import SECRET, SECRET_ENV, WebhookReceiver
    from tier_ml.notify.config import parse_channels
    from tier_ml.notify.dispatcher import dispatch
    from tier_ml.notify.senders import build_senders

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    engine = open_store(url)
    apply_events(engine, EVENTS[:1], NOW_US)  # one welcome message for C0
    monkeypatch.setenv(SECRET_ENV, SECRET)
    receiver = WebhookReceiver(fail_first=1, fail_status=410).start()  # 410: refused for good
    try:
        config = parse_channels(
            {"webhooks": [{"name": "crm", "url": receiver.url, "secret_env": SECRET_ENV}]}
        )
        assert dispatch(engine, config, build_senders(config), NOW_US).dead == 1
    finally:
        receiver.stop()
    engine.dispose()
    admin = {"X-API-Key": support.KEYS["admin"]}
    with TestClient(create_app(settings(url))) as client:
        page = client.get("/v1/outbox", params={"status": "dead"}, headers=admin).json()
        assert page["counts"]["dead"] == 1
        [message] = page["messages"]
        assert message["customer_id"] == "C0" and message["kind"] == "welcome"
        # a misspelt "ids" is refused, not read as "retry every dead letter"
        typo = client.post("/v1/outbox/retry", json={"id": [10**6]}, headers=admin)
        assert typo.status_code == 422 and typo.json()["errors"][0]["field"] == "id"
        # ids past 64 bits are a 422 on the field, not a database overflow (500)
        huge = client.post("/v1/outbox/retry", json={"ids": [2**63]}, headers=admin)
        assert huge.status_code == 422 and huge.json()["errors"][0]["field"] == "ids.0"
        far = client.get("/v1/outbox", params={"after_id": 2**64}, headers=admin)
        assert far.status_code == 422 and far.json()["errors"][0]["field"] == "after_id"
        still = client.get("/v1/outbox", params={"status": "dead"}, headers=admin).json()
        assert still["counts"]["dead"] == 1
        retried = client.post("/v1/outbox/retry", json={}, headers=admin).json()
        assert retried["retried"] == [message["id"]]
        after = client.get("/v1/outbox", params={"status": "dead"}, headers=admin).json()
        assert after["counts"]["dead"] == 0 and after["messages"] == []
        bad = client.get("/v1/outbox", params={"status": "lost"}, headers=admin)
        assert bad.status_code == 422
