"""The store parts the service adds (migration 0003: API keys and jobs; the read views), on
SQLite and PostgreSQL: the same answers as the store's own exports."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import inspect

from tests.integration.store.conftest import (  # noqa: F401  (fixtures)
    backend,
    engine,
    new_store_url,
    postgres_schema_url,
    store_url,
)
from tier_ml.money import instant_to_micros
from tier_ml.store import jobs
from tier_ml.store.apikeys import create_key, find_key, list_keys, revoke_key
from tier_ml.store.service import apply_events, export_tiers, set_override
from tier_ml.store.views import customer_view, ledger_rows, segment_page, support_priority

NOW = instant_to_micros(pd.Timestamp("2025-07-01T00:00:00Z").to_pydatetime())
EVENTS = [
    {
        "event_id": f"e{i}",
        "event_type": "placed",
        "order_id": f"o{i}",
        "customer_id": f"C{i % 4}",
        "occurred_at": f"2025-0{1 + i % 6}-1{i % 9}T10:00:00Z",
        "amount": str(3000 + 1500 * (i % 4)),
        "currency": "USD",
        "channel": "web",
        "region": "US",
    }
    for i in range(24)
] + [
    {
        "event_id": "late",
        "event_type": "placed",
        "order_id": "o-late",
        "customer_id": "C1",
        "occurred_at": "2025-06-25T10:00:00Z",
        "amount": "400",
        "currency": "USD",
        "channel": "web",
        "region": "US",
    }
]


def test_migration_0003_keys_and_jobs(engine) -> None:  # noqa: F811
    tables = set(inspect(engine).get_table_names())
    assert {"api_keys", "jobs"} <= tables
    key, _ = create_key(engine, "crm", ["tiers:read"], NOW)
    assert find_key(engine, key).scopes == {"tiers:read"}
    assert find_key(engine, key + "x") is None
    assert revoke_key(engine, "crm", NOW + 1) == 1
    assert find_key(engine, key) is None and list_keys(engine)[0].revoked_at_us == NOW + 1
    job = jobs.create_job(engine, "reclassify", {"as_of": "x"}, "ops", NOW)
    jobs.mark_running(engine, job.id, NOW + 1)
    assert jobs.get_job(engine, job.id).status == "running"
    assert jobs.fail_interrupted(engine, NOW + 2) == 1
    failed = jobs.get_job(engine, job.id)
    assert failed.status == "failed" and "interrupted" in failed.error


def test_views_agree_with_the_store_export(engine) -> None:  # noqa: F811
    apply_events(engine, EVENTS, NOW)
    set_override(engine, "C0", "VIP", "ops", "goodwill", NOW)
    later = NOW + 10 * 86_400_000_000  # pending orders mature in between: evaluated in memory
    export = export_tiers(engine, later).set_index("customer_id")
    for customer_id in export.index:
        view = customer_view(engine, customer_id, later)
        assert view.state.tier == export.loc[customer_id, "tier"]
        assert view.state.qualifying_us / 1e6 == pytest.approx(
            export.loc[customer_id, "qualifying_spend"], abs=0.01
        )
        assert sum(p.pending_us for p in view.pending_orders) == view.state.pending_us
    assert customer_view(engine, "C0", later).override.tier == "VIP"
    assert customer_view(engine, "nobody", later) is None
    for tier in ("Silver", "Gold", "VIP"):
        page, _ = segment_page(engine, tier, later)
        assert page["customer_id"].tolist() == sorted(export.index[export["tier"] == tier])
    first, _ = segment_page(engine, "Gold", later, limit=1)
    rest, _ = segment_page(engine, "Gold", later, after=first["customer_id"].iloc[-1])
    assert first["customer_id"].tolist() + rest["customer_id"].tolist() == sorted(
        export.index[export["tier"] == "Gold"]
    )
    queue = support_priority(engine, later)
    rank = {"Silver": 0, "Gold": 1, "VIP": 2}
    keys = [(-rank[t], -s) for t, s in zip(queue["tier"], queue["qualifying_spend"], strict=True)]
    assert keys == sorted(keys) and len(queue) == len(export)
    rows = ledger_rows(engine, ["C1"])
    assert sorted(rows["event_id"]) == sorted(
        e["event_id"] for e in EVENTS if e["customer_id"] == "C1"
    )


def test_store_batch_features_equal_the_ledger_path(engine) -> None:  # noqa: F811
    """``features.store_batch_features`` (typed ledger, stored states, one statement per table)
    gives ``build_features``' rows over the same ledger rows, on SQLite and PostgreSQL: with the
    stored states current, with most of them due (replayed), and before the evaluation instant;
    an overridden customer and unknown ids included. The service's ``effective_tiers`` equals
    ``customer_tiers``."""
    import features
    from serving.scoring import effective_tiers
    from tests.integration.ledger_reference import ledger_batch_features
    from tests.unit.test_features import assert_same_features
    from tier_ml.events import frame_records
    from tier_ml.simulate import SimulationConfig, simulate
    from tier_ml.store.service import active_policy
    from tier_ml.store.views import customer_tiers

    events = simulate(SimulationConfig(customers=80, seed=5)).events
    rows = frame_records(events)
    now = max(instant_to_micros(pd.Timestamp(r["occurred_at"]).to_pydatetime()) for r in rows) + 1
    apply_events(engine, rows, now)
    ids = export_tiers(engine, now)["customer_id"].astype(str).tolist()
    set_override(engine, ids[0], "VIP", "ops", "goodwill", now, None)
    policy = active_policy(engine).policy
    asked = [*ids, "nobody", "x" * 300]
    day = 86_400_000_000
    for at in (now, now + 40 * day, now - 120 * day):
        fast = features.store_batch_features(engine, asked, policy, at)
        assert_same_features(ledger_batch_features(engine, asked, policy, at), fast)
        assert len(fast) > 0
        slow = customer_tiers(engine, asked, at)
        assert effective_tiers(engine, asked, at) == dict(zip(slow["customer_id"], slow["tier"], strict=True))
    assert features.store_batch_features(engine, ["nobody"], policy, now).empty


def test_store_batch_features_under_a_grandfathered_policy(engine) -> None:  # noqa: F811
    """After a stricter policy applied with grandfathering (members keep their tier as a
    floor, which changes the effective tier and its ``since``), the store path still equals
    the canonical path: states held up by a floor are replayed, not reused."""
    import features
    from serving.scoring import effective_tiers
    from tests.integration.ledger_reference import ledger_batch_features
    from tests.unit.test_features import assert_same_features
    from tier_ml.events import frame_records
    from tier_ml.policy import load_policy, parse_policy
    from tier_ml.simulate import SimulationConfig, simulate
    from tier_ml.store.service import active_policy, apply_policy
    from tier_ml.store.views import customer_tiers

    rows = frame_records(simulate(SimulationConfig(customers=60, seed=8)).events)
    now = max(instant_to_micros(pd.Timestamp(r["occurred_at"]).to_pydatetime()) for r in rows) + 1
    apply_events(engine, rows, now)
    data = load_policy().model_dump(mode="json")
    for tier in data["tiers"][1:]:
        tier["min_spend"] = tier["min_spend"] * 3
    day = 86_400_000_000
    result = apply_policy(
        engine, parse_policy(data, source="test"), "ops", now + 1, grandfather_until_us=now + 60 * day
    )
    assert result.preview is not None and result.preview.grandfathered > 0
    policy = active_policy(engine).policy
    ids = [*export_tiers(engine, now + 1)["customer_id"].astype(str), "nobody"]
    for at in (now + 1, now + 30 * day, now + 90 * day):
        assert_same_features(
            ledger_batch_features(engine, ids, policy, at),
            features.store_batch_features(engine, ids, policy, at),
        )
        slow = customer_tiers(engine, ids, at)
        assert effective_tiers(engine, ids, at) == dict(zip(slow["customer_id"], slow["tier"], strict=True))


def test_store_batch_features_with_awkward_ledger_text(engine) -> None:  # noqa: F811
    """Ledger text as delivered: amounts with spaces or an exponent, currencies and channels
    in odd case and padding, a cancel whose amount is not a number (ignored, as the rules
    ignore it), and ids and channels holding the packed read's separator (SQLite then reads
    rows instead). The store path still equals the canonical path."""
    import features
    from features.store_batch import _EVENTS, _among, _ledger_columns, _packed_ledger
    from tests.integration.ledger_reference import ledger_batch_features
    from tests.unit.test_features import assert_same_features
    from tier_ml.store.service import active_policy
    from tier_ml.store.unit_of_work import UnitOfWork

    def event(i: int, customer: str, kind: str = "placed", **fields: str) -> dict[str, str]:
        base = {"event_id": f"w{i}", "event_type": kind, "order_id": f"w{i}", "customer_id": customer,
                "occurred_at": f"2025-0{1 + i % 5}-1{i % 9}T08:00:00Z", "amount": "120.10",
                "currency": "USD", "channel": "web", "region": "US"}  # fmt: skip
        return {**base, **fields}

    plain = [
        event(1, "P1", amount=" 12.50 ", currency=" usd ", channel=" Web "),
        event(2, "P1", amount="1.5e3", channel="POS"),
        event(3, "P2", amount="99.999999", channel=""),
        event(4, "P2", "cancelled", order_id="w3", amount="n/a", currency=""),
        event(5, "P1", "refunded", order_id="w2", amount="2e2"),
    ]
    odd = [
        event(6, "S1", order_id="o,1\x1fx", channel="app\x1fweb"),
        event(7, "S1", "refunded", order_id="o,1\x1fx", amount="20"),
    ]
    apply_events(engine, plain + odd, NOW)
    policy = active_policy(engine).policy
    for ids in (["P1", "P2"], ["P1", "P2", "S1", "nobody"]):
        fast = features.store_batch_features(engine, ids, policy, NOW)
        assert_same_features(ledger_batch_features(engine, ids, policy, NOW), fast)
        assert sorted(fast["customer_id"]) == sorted(set(ids) - {"nobody"})
    if engine.dialect.name == "sqlite":
        with UnitOfWork(engine, read_only=True) as uow:
            connection = uow.repo.connection
            assert _packed_ledger(connection, ["P1", "S1"], scan=True) is None  # separator inside
            packed = _packed_ledger(connection, ["P1", "P2"], scan=False)
            sql, params = _among("sqlite", "order_events", _EVENTS, ["P1", "P2"])
            rows = connection.exec_driver_sql(sql, params).fetchall()
        assert packed is not None and [c.to_pylist() for c in packed] == [
            c.to_pylist() for c in _ledger_columns([tuple(r) for r in rows])
        ]


def test_nul_characters_are_refused_whole_before_the_store(engine, store_url, tmp_path) -> None:  # noqa: F811
    """PostgreSQL text cannot hold NUL: the store raised (a 500). The API refuses such input
    with a 422 naming the field, and applies nothing. (Events are the exception: the store
    rejects one holding NUL on its own; see test_serving_bad_text.py.)"""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import ServingSettings
    from tests.e2e import serving_support as support

    apply_events(engine, EVENTS[:4], NOW)
    settings = ServingSettings(
        database_url=store_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_keys=support.ENV_KEYS,
        now=pd.Timestamp("2025-07-01T00:00:00Z").to_pydatetime(),
        load_models=False,
    )
    key = {"X-API-Key": support.ALL_KEY}
    cases = [
        ("GET", "/v1/customers/C1%00", {}, "customer_id", "path"),
        (
            "PUT",
            "/v1/customers/C1/override",
            {"json": {"tier": "VIP", "reason": "ticket\x00 9"}},
            "reason",
            "body",
        ),
        ("GET", "/v1/segments/Gold", {"params": {"cursor": "\x00"}}, "cursor", "query"),
        (
            "POST",
            "/v1/policy",
            {"json": {"policy_yaml": 'tiers:\n  - name: "Sil\\0ver"\n'}},
            "policy_yaml",
            "body",
        ),
    ]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for method, path, options, field, where in cases:
            response = client.request(method, path, headers=key, **options)
            assert response.status_code == 422, (path, response.text)
            [error] = response.json()["errors"]
            assert (error["field"], error["in"]) == (field, where), response.text
            assert "NUL" in error["reason"]
        assert client.get("/v1/customers/C1", headers=key).json()["override"] is None
