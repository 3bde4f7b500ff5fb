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
