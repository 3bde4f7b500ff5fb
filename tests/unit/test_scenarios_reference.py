"""Every scenario of shared/scenarios through the reference path of the rules engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenarios import expected_rows, load_scenario, scenario_files
from tier_ml.events import parse_instant
from tier_ml.rules import classify


@pytest.mark.parametrize("path", scenario_files(), ids=lambda p: p.stem)
def test_scenario_reference_path(path: Path) -> None:
    scenario = load_scenario(path)
    for check in scenario.checks:
        result = classify(scenario.policy, scenario.events, parse_instant(check["as_of"]))
        got = {
            cid: (scenario.policy.tier_names[s.tier], s.qualifying_spend, s.pending_spend)
            for cid, s in result.tiers.items()
        }
        assert got == expected_rows(check), f"{scenario.name} as of {check['as_of']}"
