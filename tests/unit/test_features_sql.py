"""The feature SQL stays portable (a Spark job runs the same text) and the docs list the real features."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from features.registry import markdown_table
from features.sql import batch_events_sql, batch_removals_sql, behaviour_sql, features_sql
from tier_ml.policy import load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]

# DuckDB spellings that Spark SQL does not accept, with the portable form used instead.
NOT_PORTABLE = {
    r"::": "CAST(x AS type)",
    r"\bFILTER\s*\(": "sum(CASE WHEN ... END)",
    r"\bQUALIFY\b": "a filtering subquery",
    r"\b(arg_max|arg_min|max_by|min_by|list_\w+|epoch_us|make_timestamp|strftime|date_diff)\s*\(": "plain arithmetic",
    r"\bmedian\s*\(": "an exact statistic",
    r"//": "integer division written out",
    r"\bILIKE\b": "lower() LIKE",
}


@pytest.mark.parametrize(
    "policy",
    [load_policy(), parse_policy({"tiers": [{"name": "A"}, {"name": "B", "min_spend": 10}],
                                  "regions": {"EU": {"B": 8}}, "window_days": 365})],
)
def test_feature_sql_uses_only_portable_constructs(policy) -> None:
    text = behaviour_sql("events", 1_700_000_000_000_000) + features_sql(
        policy, 1_700_000_000_000_000, "behaviour", "tiers"
    ) + batch_events_sql() + batch_removals_sql(1_700_000_000_000_000)
    for pattern, instead in NOT_PORTABLE.items():
        assert not re.search(pattern, text, flags=re.IGNORECASE), f"{pattern} in the feature SQL: use {instead}"


def test_docs_list_every_feature_as_the_registry_does() -> None:
    assert markdown_table() in (ROOT / "docs" / "features.md").read_text(encoding="utf-8")
