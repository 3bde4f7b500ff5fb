"""Shared fixtures: the scenario folder must exist in CI (it is the tier contract's checked cases)."""

from __future__ import annotations

import os

import pytest

from tests.scenarios import SCENARIO_DIR, scenario_files

# The trained-models session fixtures, registered once for the whole suite so every module
# shares one training run (importing them into several modules would train once per module).
pytest_plugins = ["tests.integration.training_fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not scenario_files() and os.environ.get("CI"):
        raise pytest.UsageError(
            f"no scenario files in {SCENARIO_DIR}: shared/ must sit beside the repo"
        )
