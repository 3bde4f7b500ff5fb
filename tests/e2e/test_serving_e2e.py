"""End to end: a real uvicorn server on 127.0.0.1, a real SQLite store with simulated history,
and models from a real (temporary) MLflow registry, over real HTTP."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.e2e import serving_support as support
from tier_ml.money import instant_to_micros
from tier_ml.store.service import create_store_engine, export_audit, export_rejects, export_tiers

pytestmark = pytest.mark.slow  # the session fixture trains the models (~30 s once)
NOW_US = instant_to_micros(support.AS_OF)
PAYLOADS = Path(__file__).parents[1] / "fixtures" / "payloads"


@pytest.fixture(scope="module")
def client(serving_live: tuple[str, str]) -> httpx.Client:
    base_url, _ = serving_live
    with httpx.Client(base_url=base_url, headers=support.headers(), timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def store(serving_live: tuple[str, str]):
    engine = create_store_engine(serving_live[1])
    yield engine
    engine.dispose()


def tiers_now(store) -> pd.DataFrame:
    return export_tiers(store, NOW_US).set_index("customer_id")


def test_ready_with_the_registry_versions(client: httpx.Client, serving_prepared) -> None:
    _, _, versions = serving_prepared
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["models"] == {
        "churn": versions["tier-ml-churn"],
        "tier_change": versions["tier-ml-tier-change"],
    }


def test_customer_view_matches_the_store(client: httpx.Client, store) -> None:
    tiers = tiers_now(store)
    for customer_id in tiers.index[:5].tolist() + tiers[tiers["tier"] == "Gold"].index[:3].tolist():
        body = client.get(f"/v1/customers/{customer_id}").json()
        row = tiers.loc[customer_id]
        assert body["tier"] == row["tier"]
        assert body["qualifying_spend"] == pytest.approx(row["qualifying_spend"])
        assert body["pending_spend"] == pytest.approx(row["pending_spend"])
        assert body["spend_to_next_tier"] == (
            None if pd.isna(row["spend_to_next_tier"]) else pytest.approx(row["spend_to_next_tier"])
        )
        assert sum(p["amount"] for p in body["pending_orders"]) == pytest.approx(
            row["pending_spend"], abs=0.02
        )
        if body["pending_orders"]:
            assert body["pending_matures_at"] == min(
                p["matures_at"] for p in body["pending_orders"]
            )
        assert body["history"] and body["history"][-1]["new_tier"] == row["tier"]
        assert body["perks"] is not None
    missing = client.get("/v1/customers/no-such-customer")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_events_are_idempotent_report_rejects_and_return_the_tier(client: httpx.Client) -> None:
    base = {
        "order_id": "web-1",
        "customer_id": "NEW-1",
        "amount": "30000",
        "currency": "USD",
        "channel": "web",
        "region": "US",
    }
    good = {
        **base,
        "event_id": "new-e1",
        "event_type": "placed",
        "occurred_at": "2025-05-01T09:00:00Z",
    }
    bad = {
        **base,
        "event_id": "new-e2",
        "event_type": "placed",
        "order_id": "web-2",
        "occurred_at": "yesterday",
    }
    first = client.post("/v1/events", json={"events": [good, bad]})
    assert first.status_code == 200, first.text
    results = first.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert results[1]["reason"] == "unparseable_time"
    assert results[0]["tier"] == "Gold"  # 30,000 matured after the 14-day buffer
    again = client.post("/v1/events", json=good)
    assert again.json()["results"][0]["status"] == "duplicate"
    assert again.json()["counts"] == {"accepted": 0, "duplicate": 1, "rejected": 0}


def test_channel_payload_through_its_adapter(client: httpx.Client) -> None:
    payload = (PAYLOADS / "shopify_orders_create.json").read_text()
    sent = client.post(
        "/v1/channels/shopify/orders",
        content=payload,
        headers={"content-type": "application/json", "X-Shopify-Topic": "orders/create"},
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["counts"]["accepted"] >= 1
    again = client.post(
        "/v1/channels/shopify/orders", content=payload, headers={"content-type": "application/json"}
    )
    assert again.json()["counts"]["accepted"] == 0
    pos = client.post(
        "/v1/channels/pos/orders",
        content=(PAYLOADS / "pos_export.csv").read_bytes(),
        headers={"content-type": "text/csv"},
    )
    assert pos.status_code == 200 and pos.json()["counts"]["accepted"] >= 1


def test_prediction_is_the_model_on_the_online_features(
    client: httpx.Client, store, serving_prepared
) -> None:
    import mlflow

    import features
    from tier_ml.policy import load_policy

    _, tracking_uri, versions = serving_prepared
    tiers = tiers_now(store)
    customer_id = tiers[tiers["tier"] == "Gold"].index[0]
    body = client.get(f"/v1/customers/{customer_id}/predictions").json()
    row = features.store_customer_features(store, customer_id, load_policy(None), support.AS_OF)
    mlflow.set_tracking_uri(tracking_uri)
    churn = mlflow.pyfunc.load_model(f"models:/tier-ml-churn/{versions['tier-ml-churn']}")
    change = mlflow.pyfunc.load_model(
        f"models:/tier-ml-tier-change/{versions['tier-ml-tier-change']}"
    )
    inputs = row[features.FEATURE_COLUMNS]
    assert body["churn_probability"] == pytest.approx(
        churn.predict(inputs)["churn_probability"].iloc[0]
    )
    expected = change.predict(inputs).iloc[0]
    assert body["p_downgrade"] == pytest.approx(expected["p_down"])
    assert body["p_upgrade"] == pytest.approx(expected["p_up"])
    assert body["p_downgrade"] + body["p_same"] + body["p_upgrade"] == pytest.approx(1.0)
    assert len(body["churn_reasons"]) == 3 and len(body["tier_change_reasons"]) == 3
    assert all(r["feature"] for r in body["churn_reasons"])  # inputs or model-derived (BG/NBD)
    contributions = [abs(r["contribution"]) for r in body["churn_reasons"]]
    assert contributions == sorted(contributions, reverse=True)
    assert body["model_versions"] == {
        "churn": versions["tier-ml-churn"],
        "tier_change": versions["tier-ml-tier-change"],
    }
    assert body["tier"] == "Gold"
    batch = client.post("/v1/predictions", json={"customer_ids": [customer_id, "nobody"]}).json()
    assert batch["missing"] == ["nobody"]
    assert batch["predictions"][0]["churn_probability"] == pytest.approx(body["churn_probability"])


def test_gold_at_risk_json_pages_and_csv(client: httpx.Client, store) -> None:
    tiers = tiers_now(store)
    gold = set(tiers[tiers["tier"] == "Gold"].index)
    seen, cursor = [], None
    while True:
        params = {"min_probability": 0.2, "limit": 7} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/segments/gold-at-risk", params=params).json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == page["total"] > 0
    assert {i["customer_id"] for i in seen} <= gold
    probabilities = [i["churn_probability"] for i in seen]
    assert probabilities == sorted(probabilities, reverse=True) and min(probabilities) >= 0.2
    download = client.get(
        "/v1/segments/gold-at-risk", params={"min_probability": 0.2, "format": "csv"}
    )
    assert download.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert [r["customer_id"] for r in rows] == [i["customer_id"] for i in seen]


def test_segment_pages_cover_the_tier(client: httpx.Client, store) -> None:
    tiers = tiers_now(store)
    expected = sorted(tiers[tiers["tier"] == "Silver"].index)
    got, cursor = [], None
    while True:
        page = client.get(
            "/v1/segments/silver", params={"limit": 50} | ({"cursor": cursor} if cursor else {})
        ).json()
        got.extend(i["customer_id"] for i in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert got == expected
    download = client.get("/v1/segments/Silver", headers={"accept": "text/csv"})
    assert pd.read_csv(io.StringIO(download.text))["customer_id"].astype(str).tolist() == expected
    assert client.get("/v1/segments/platinum").status_code == 404


def test_support_priority_orders_tiers_then_value(client: httpx.Client, store) -> None:
    tiers = tiers_now(store)
    queue = tiers.groupby("tier").head(3).index.tolist()
    items = client.get("/v1/support/priority", params={"customer_id": [*queue, "nobody"]}).json()
    rank = {"Silver": 0, "Gold": 1, "VIP": 2}
    keys = [(-rank[i["tier"]], -i["qualifying_spend"]) for i in items["items"]]
    assert keys == sorted(keys)
    assert len(items["items"]) == len(queue) and items["missing"] == ["nobody"]


def test_override_is_audited_with_the_key_name(client: httpx.Client, store) -> None:
    tiers = tiers_now(store)
    customer_id = tiers[tiers["tier"] == "Silver"].index[0]
    put = client.put(
        f"/v1/customers/{customer_id}/override", json={"tier": "VIP", "reason": "goodwill 4411"}
    )
    assert put.status_code == 200, put.text
    assert put.json()["tier"] == "VIP" and put.json()["override"]["actor"] == "ops"
    removed = client.delete(
        f"/v1/customers/{customer_id}/override", params={"reason": "ticket closed"}
    )
    assert removed.json()["tier"] == "Silver" and removed.json()["override"] is None
    audit = export_audit(store)
    mine = audit[(audit["customer_id"] == customer_id) & (audit["reason"] == "override")]
    assert mine["actor"].tolist() == ["ops", "ops"]
    assert mine["note"].tolist() == ["goodwill 4411", "ticket closed"]
    unknown = client.put(
        f"/v1/customers/{customer_id}/override", json={"tier": "Diamond", "reason": "x"}
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "tier"


def test_audit_export_csv_and_jsonl(client: httpx.Client, store) -> None:
    expected = export_audit(store)
    lines = client.get("/v1/audit", params={"format": "jsonl"}).text.splitlines()
    assert [json.loads(line)["id"] for line in lines] == expected["id"].tolist()
    table = pd.read_csv(io.StringIO(client.get("/v1/audit").text))
    assert table["id"].tolist() == expected["id"].tolist()
    assert client.get("/v1/audit", params={"since": "not a time"}).status_code == 422


def test_rejects_export_filters_by_reason_and_refuses_bad_parameters(client: httpx.Client, store) -> None:
    expected = export_rejects(store)
    assert len(expected) > 0  # the simulated stream has malformed rows
    lines = client.get("/v1/rejects", params={"format": "jsonl"}).text.splitlines()
    assert [json.loads(line) for line in lines] == expected.to_dict("records")
    reason = str(expected["reason"].iloc[0])
    table = pd.read_csv(io.StringIO(client.get("/v1/rejects", params={"reason": reason}).text), dtype=str)
    assert set(table["reason"]) == {reason} and len(table) == int((expected["reason"] == reason).sum())
    for params, field in (({"reason": "too_expensive"}, "reason"), ({"since": "yesterday"}, "since")):
        refused = client.get("/v1/rejects", params=params)
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"].startswith(field)


def test_policy_preview_apply_and_reclassify_job(client: httpx.Client) -> None:
    current = client.get("/v1/policy").json()
    policy = json.loads(json.dumps(current["policy"]))
    policy["tiers"][1]["min_spend"] = 15000
    preview = client.post("/v1/policy", json={"policy": policy}).json()
    assert preview["dry_run"] and preview["version"] is None
    assert {"path": "tiers.1.min_spend", "old": 20000.0, "new": 15000.0} in preview["changes"]
    assert client.get("/v1/policy").json()["version"] == current["version"]
    started = client.post("/v1/jobs/reclassify", json={"policy": policy})
    assert started.status_code == 202
    location = started.headers["location"]
    deadline = time.monotonic() + 60
    while (job := client.get(location).json())["status"] in {"queued", "running"}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert job["result"]["changed"] == preview["changed"]
    assert client.get("/v1/policy").json()["version"] == current["version"] + 1


def test_metrics_count_what_happened(client: httpx.Client, serving_prepared) -> None:
    text = client.get("/metrics").text
    assert 'tier_ml_events_ingested_total{status="accepted"}' in text
    assert (
        'tier_ml_http_request_duration_seconds_count{method="GET",route="/v1/customers/{customer_id}",status="200"}'
        in text
    )
    version = float(serving_prepared[2]["tier-ml-churn"])
    assert f'tier_ml_model_version{{alias="champion",model="tier-ml-churn"}} {version}' in text
    assert "tier_ml_predictions_total" in text


def test_reload_picks_up_a_new_champion(serving_prepared, tmp_path: Path) -> None:
    import shutil

    from fastapi.testclient import TestClient
    from mlflow import MlflowClient

    from serving.app import create_app

    store_url, tracking_uri, versions = serving_prepared
    registry_copy = tmp_path / "mlflow.db"  # the shared registry stays as the fixture made it
    shutil.copyfile(tracking_uri.removeprefix("sqlite:///"), registry_copy)
    copy_uri = f"sqlite:///{registry_copy}"
    app = create_app(
        support.settings_for(support.copy_store(store_url, tmp_path / "s.sqlite"), copy_uri)
    )
    with TestClient(app, headers=support.headers()) as local:
        assert local.get("/readyz").json()["models"]["churn"] == versions["tier-ml-churn"]
        registry = MlflowClient(tracking_uri=copy_uri, registry_uri=copy_uri)
        current = registry.get_model_version_by_alias("tier-ml-churn", "champion")
        newer = registry.create_model_version(
            "tier-ml-churn", current.source, run_id=current.run_id
        )
        registry.set_registered_model_alias("tier-ml-churn", "champion", newer.version)
        reloaded = local.post("/v1/admin/models/reload").json()
        assert reloaded["ready"] and reloaded["models"]["churn"]["version"] == str(newer.version)
        assert local.get("/readyz").json()["models"]["churn"] == str(newer.version)


def test_tier_ml_serve_runs_uvicorn(tmp_path: Path, serving_prepared) -> None:
    import os
    import subprocess
    import sys

    store_url, _, _ = serving_prepared
    own = support.copy_store(store_url, tmp_path / "store.sqlite")
    port = support.free_port()
    env = {
        **os.environ,
        "TIER_ML_API_KEYS": f"cli:{support.ALL_KEY}:tiers:read",
        "TIER_ML_LOAD_MODELS": "0",  # tiers only: predictions answer 503
    }
    command = [
        str(Path(sys.executable).with_name("tier-ml")),
        "serve",
        "--port",
        str(port),
        "--db",
        own,
        "--now",
        support.AS_OF_TEXT,
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        tiers = httpx.get(f"{base}/v1/segments/vip?limit=1", headers=support.headers()).json()
        assert tiers["items"][0]["tier"] == "VIP"
        assert (
            httpx.get(f"{base}/v1/customers/x/predictions", headers=support.headers()).status_code
            == 403
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_predictions_carry_the_chance_to_keep_or_reach_a_tier(client: httpx.Client, store) -> None:
    tiers = tiers_now(store)
    for customer_id in tiers[tiers["tier"] == "Gold"].index[:3].tolist():
        body = client.get(f"/v1/customers/{customer_id}/predictions").json()
        assert body["p_keep_tier"] == pytest.approx(1 - body["p_downgrade"])
        assert body["p_reach_next_tier"] == pytest.approx(body["p_upgrade"])


def test_gold_at_risk_filters_on_predicted_chances(client: httpx.Client) -> None:
    def rows(params: dict) -> list[dict]:
        download = client.get("/v1/segments/gold-at-risk", params=params | {"format": "csv"})
        return list(csv.DictReader(io.StringIO(download.text)))

    items = [
        {
            **r,
            "p_reach_next_tier": float(r["p_reach_next_tier"]),
            "p_keep_tier": float(r["p_keep_tier"]),
        }
        for r in rows({"min_probability": 0})
    ]
    assert items
    cut = sorted(i["p_reach_next_tier"] for i in items)[len(items) // 2]
    keep_cut = sorted(i["p_keep_tier"] for i in items)[len(items) // 2]
    params = {"min_probability": 0, "min_p_upgrade": cut, "max_p_keep": keep_cut}
    expected = [
        i["customer_id"]
        for i in items
        if i["p_reach_next_tier"] >= cut and i["p_keep_tier"] <= keep_cut
    ]
    assert [r["customer_id"] for r in rows(params)] == expected
    page = client.get("/v1/segments/gold-at-risk", params=params | {"limit": 5}).json()
    assert page["total"] == len(expected) < len(items)
    assert [i["customer_id"] for i in page["items"]] == expected[:5]


def test_tier_segment_filters_on_predicted_chances(client: httpx.Client, store) -> None:
    tiers = tiers_now(store)
    silver = sorted(tiers[tiers["tier"] == "Silver"].index)
    scored = client.post("/v1/predictions", json={"customer_ids": silver, "top_reasons": 0}).json()
    chance = {p["customer_id"]: p["p_reach_next_tier"] for p in scored["predictions"]}
    cut = sorted(chance.values())[len(chance) * 3 // 4]
    expected = sorted(c for c, p in chance.items() if p >= cut)
    assert 0 < len(expected) < len(silver)
    got, cursor = [], None
    while True:
        params = {"min_p_upgrade": cut, "limit": 7} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/segments/silver", params=params).json()
        assert all(i["tier"] == "Silver" for i in page["items"])
        got.extend(i["customer_id"] for i in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert got == expected
    download = client.get("/v1/segments/silver", params={"min_p_upgrade": cut, "format": "csv"})
    assert pd.read_csv(io.StringIO(download.text))["customer_id"].astype(str).tolist() == expected
    bad = client.get("/v1/segments/silver", params={"min_p_upgrade": 2})
    assert bad.status_code == 422
    tiers_only = support.headers(support.KEYS["tiers:read"])
    refused = client.get("/v1/segments/silver", params={"max_p_keep": 0.5}, headers=tiers_only)
    assert refused.status_code == 403
    assert client.get("/v1/segments/silver", headers=tiers_only).status_code == 200
