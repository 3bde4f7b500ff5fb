"""Every scenario of shared/scenarios through the store: events applied in time order, then a
sweep at each check's instant, gives the expected tiers (and exactly what ``classify`` gives)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.store.support import assert_same_tiers
from tests.scenarios import expected_rows, load_scenario, scenario_files
from tier_ml.events import parse_instant
from tier_ml.rules import classify
from tier_ml.store import service


@pytest.mark.parametrize("path", scenario_files(), ids=lambda p: p.stem)
def test_scenario_through_the_store(path: Path, new_store_url) -> None:
    scenario = load_scenario(path)
    engine = service.open_store(new_store_url())
    try:
        applied: set[int] = set()
        for check in sorted(scenario.checks, key=lambda c: parse_instant(c["as_of"])):
            as_of = parse_instant(check["as_of"])
            due = [
                i
                for i, event in enumerate(scenario.events)
                if i not in applied and (parse_instant(event.get("occurred_at")) or 0) <= as_of
            ]
            service.apply_events(engine, [scenario.events[i] for i in due], as_of, scenario.policy)
            applied.update(due)
            service.sweep(engine, as_of)
            tiers = service.export_tiers(engine, as_of)
            got = {
                row.customer_id: (
                    row.tier,
                    round(row.qualifying_spend, 2),
                    round(row.pending_spend, 2),
                )
                for row in tiers.itertuples()
            }
            assert got == expected_rows(check), f"{scenario.name} as of {check['as_of']}"
            assert_same_tiers(tiers, classify(scenario.policy, scenario.events, as_of).frame())
    finally:
        engine.dispose()


@pytest.mark.parametrize("path", scenario_files(), ids=lambda p: p.stem)
def test_scenario_in_one_backfill_batch(path: Path, new_store_url) -> None:
    """All events at once, evaluated at each check instant in turn (the clock moves forward)."""
    scenario = load_scenario(path)
    engine = service.open_store(new_store_url())
    try:
        checks = sorted(scenario.checks, key=lambda c: parse_instant(c["as_of"]))
        first = parse_instant(checks[0]["as_of"])
        service.apply_events(engine, scenario.events, first, scenario.policy)
        for check in checks:
            as_of = parse_instant(check["as_of"])
            service.sweep(engine, as_of)
            tiers = service.export_tiers(engine, as_of)
            assert_same_tiers(tiers, classify(scenario.policy, scenario.events, as_of).frame())
    finally:
        engine.dispose()
