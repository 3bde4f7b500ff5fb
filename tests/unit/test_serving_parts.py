"""Pure parts of the service: env key parsing, policy field diffs, union error selection,
next-tier arithmetic (same as the store's export), model reasons parsing."""

from __future__ import annotations

import pandas as pd
import pytest

from serving.auth import parse_env_keys
from serving.errors import _one_union_branch
from serving.models import reasons_list
from serving.routers.policy import field_changes
from tier_ml.policy import load_policy
from tier_ml.store.apikeys import SCOPES, ApiKeyError, check_scopes, hash_key
from tier_ml.store.evaluation import TierState
from tier_ml.store.service import tiers_frame, typed_states
from tier_ml.store.views import next_tier_of


def test_env_keys_name_key_scopes() -> None:
    keys = parse_env_keys("crm:k1:tiers:read,predictions:read; ops:k2:all ;")
    assert keys[hash_key("k1")].name == "crm"
    assert keys[hash_key("k1")].scopes == {"tiers:read", "predictions:read"}
    assert keys[hash_key("k2")].scopes == frozenset(SCOPES)
    with pytest.raises(ApiKeyError, match="entry 1"):
        parse_env_keys("crm:k1")
    with pytest.raises(ApiKeyError, match="unknown scope"):
        parse_env_keys("crm:k1:tiers:write")
    with pytest.raises(ApiKeyError):
        check_scopes([" ", ""])


@pytest.mark.parametrize(
    ("scopes", "message"),
    [
        ("a,,", "unknown scope 'a'"),
        ("tiers:read,,", "scope 2 is empty"),
        ("tiers:read, ,admin", "scope 2 is empty"),
        (",tiers:read", "scope 1 is empty"),
        ("tiers:read,Admin", "unknown scope 'Admin'"),
        ("tiers :read", "unknown scope 'tiers :read'"),
    ],
)
def test_scopes_with_a_slip_are_refused_naming_it(scopes: str, message: str) -> None:
    """The same rule for the CLI and ``TIER_ML_API_KEYS``: an empty or unknown name is
    refused, naming it and listing the valid scopes; spaces around a name are fine."""
    with pytest.raises(ApiKeyError, match=message) as refused:
        check_scopes(scopes.split(","))
    assert "valid scopes: " + ", ".join(SCOPES) in str(refused.value)
    with pytest.raises(ApiKeyError, match=message):
        parse_env_keys(f"crm:k1:{scopes}")
    assert check_scopes([" tiers:read ", " admin "]) == {"tiers:read", "admin"}


def test_policy_field_changes_name_the_leaf() -> None:
    old = {"buffer_days": 14, "tiers": [{"name": "Silver"}, {"name": "Gold", "min_spend": 20000}]}
    new = {"buffer_days": 7, "tiers": [{"name": "Silver"}, {"name": "Gold", "min_spend": 18000}]}
    changes = {(c.path, c.old, c.new) for c in field_changes(old, new)}
    assert changes == {("buffer_days", 14, 7), ("tiers.1.min_spend", 20000, 18000)}
    grown = field_changes(old, {**old, "tiers": [*old["tiers"], {"name": "VIP"}]})
    assert [c.path for c in grown] == ["tiers"]
    assert field_changes(old, old) == []


def test_union_errors_keep_the_branch_the_body_meant() -> None:
    errors = [
        {"loc": ("body", "EventIn", "events"), "msg": "Extra inputs are not permitted"},
        {"loc": ("body", "list[EventIn]"), "msg": "Input should be a valid list"},
        {
            "loc": ("body", "EventBatch", "events", 0, "event_id"),
            "msg": "Input should be a valid string",
        },
    ]
    chosen = _one_union_branch(errors, {"events": [{"event_id": ["x"]}]})
    assert chosen == [
        {"loc": ("body", "events", 0, "event_id"), "msg": "Input should be a valid string"}
    ]
    as_list = _one_union_branch(errors, [])
    assert as_list == [{"loc": ("body",), "msg": "Input should be a valid list"}]
    plain = [{"loc": ("query", "limit"), "msg": "too small"}]
    assert _one_union_branch(plain, None) == plain


@pytest.mark.parametrize(
    ("tier", "qualifying_us", "region"),
    [
        ("Silver", 1_234_567_891, None),
        ("Gold", 20_000_000_000, "EU"),
        ("VIP", 90_000_000_000, None),
        ("Silver", 0, "US"),
    ],
)
def test_next_tier_matches_the_store_export(
    tier: str, qualifying_us: int, region: str | None
) -> None:
    policy = load_policy(None)
    state = TierState(
        "C1", tier, tier, tier, 0, qualifying_us, 0, 1, region, 0, None, None, 0, 0, None
    )
    export = tiers_frame(typed_states(pd.DataFrame([state.as_row()])), policy).iloc[0]
    mine = next_tier_of(policy, state)
    assert mine["next_tier"] == (None if pd.isna(export["next_tier"]) else export["next_tier"])
    expected = export["spend_to_next_tier"]
    assert mine["spend_to_next_tier"] == (None if pd.isna(expected) else expected)


def test_reasons_cell_parsing() -> None:
    assert (
        reasons_list('[{"feature": "recency_days", "value": 3, "contribution": 0.2}]')[0]["feature"]
        == "recency_days"
    )
    assert (
        reasons_list(None) == []
        and reasons_list(float("nan")) == []
        and reasons_list("not json") == []
    )


def _per_row_answer(scored: pd.DataFrame, tier_of: dict[str, str]) -> list[dict]:
    """The batch answer as the per-row helpers build it (the single-prediction shape)."""
    from serving.intervals import interval_fields
    from serving.models import prediction_fields

    return [
        {
            "customer_id": str(row["customer_id"]),
            "as_of": "T",
            "tier": tier_of.get(str(row["customer_id"])),
            **prediction_fields(row),
            **interval_fields(row),
            "model_versions": {"churn": "1"},
            "model_kinds": {"churn": "lightgbm"},
        }
        for row in scored.to_dict("records")
    ]


@pytest.mark.parametrize("variant", ["plain", "intervals_and_reasons", "object_columns"])
def test_batch_answer_rows_equal_the_per_row_helpers(variant: str) -> None:
    """``serving.batch_answer.prediction_rows`` (column-wise) gives the per-row helpers' dicts,
    key order included: NaN and missing bounds as None, 1 - p_down for keeping the tier,
    reasons parsed (bad JSON as an empty list), tiers only for known customers."""
    import json
    import math

    import msgspec

    from serving.batch_answer import encode, prediction_rows

    scored = pd.DataFrame(
        {
            "customer_id": ["C2", "C1", "C3"],
            "churn_probability": [0.1, 0.2999999999999999, 1e-7],
            "p_down": [0.25, 0.1, 0.7],
            "p_same": [0.5, 0.8, 0.2],
            "p_up": [0.25, 0.1, 0.1],
        }
    )
    if variant != "plain":
        scored["churn_probability_low"] = [0.05, math.nan, 0.0]
        scored["churn_probability_high"] = [0.2, math.nan, 0.01]
        scored["p_down_low"] = [0.2, 0.05, math.nan]
        scored["p_down_high"] = [0.3, 0.15, math.nan]
        scored["p_up_high"] = [0.3, 0.12, 0.2]
        scored["churn_reasons"] = [
            json.dumps([{"feature": "recency_days", "value": 3.0, "contribution": 0.4}]),
            "not json",
            None,
        ]
    if variant == "object_columns":
        scored["p_up_low"] = pd.Series([None, "x", 0.05], dtype=object)
        scored["churn_probability_low"] = scored["churn_probability_low"].astype(object)
    tiers = {"C1": "Gold", "C3": "VIP"}
    rows = prediction_rows(scored, tiers, "T", {"churn": "1"}, {"churn": "lightgbm"})
    expected = _per_row_answer(scored, tiers)
    as_dicts = [msgspec.structs.asdict(r) for r in rows]
    assert [list(r) for r in as_dicts] == [list(e) for e in expected]  # key order
    assert [{k: list(v) if k.endswith("reasons") else v for k, v in r.items()} for r in as_dicts] == expected
    assert encode({"predictions": rows}) == encode({"predictions": expected})
    assert json.loads(encode({"predictions": rows})) == {"predictions": expected}


def test_batch_answer_in_request_order() -> None:
    from serving.batch_answer import in_request_order

    scored = pd.DataFrame({"customer_id": ["A", "B", "C"], "churn_probability": [1.0, 2.0, 3.0]})
    ordered = in_request_order(scored, ["C", "x", "A", "B"])
    assert ordered["customer_id"].tolist() == ["C", "A", "B"]
    assert ordered["churn_probability"].tolist() == [3.0, 1.0, 2.0]
    assert in_request_order(scored, ["B"])["customer_id"].tolist() == ["B", "A", "C"]


def test_settle_heap_freezes_what_is_alive() -> None:
    import gc

    from serving.models import settle_heap

    settle_heap()
    assert gc.get_freeze_count() > 0


def test_scoring_runs_at_most_the_configured_number_at_once() -> None:
    """Requests that score wait for a slot instead of all scoring on threads at once."""
    import threading
    import time
    from types import SimpleNamespace

    import anyio

    from serving.deps import run_scoring

    services = SimpleNamespace(settings=SimpleNamespace(scoring_concurrency=2), caches={})
    running, peak, lock = [0], [0], threading.Lock()

    def work(n: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return n * n

    async def main() -> list[int]:
        results = [0] * 6

        async def one(n: int) -> None:
            results[n] = await run_scoring(services, lambda: work(n))

        async with anyio.create_task_group() as group:
            for n in range(6):
                group.start_soon(one, n)
        return results

    assert anyio.run(main) == [n * n for n in range(6)]
    assert peak[0] == 2
