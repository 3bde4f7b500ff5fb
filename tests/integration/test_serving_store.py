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
