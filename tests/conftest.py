"""Shared fixtures: the scenario folder must exist in CI (it is the tier contract's checked cases)."""

from __future__ import annotations

import os

import pytest

from tests.scenarios import SCENARIO_DIR, scenario_files


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not scenario_files() and os.environ.get("CI"):
        raise pytest.UsageError(
            f"no scenario files in {SCENARIO_DIR}: shared/ must sit beside the repo"
        )
