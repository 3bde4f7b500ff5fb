"""Loading the hand-checked tier scenarios of ``shared/scenarios`` (one YAML file each)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tier_ml.policy import Policy, parse_policy

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENARIO_DIR = Path(os.environ.get("TIER_ML_SCENARIOS", REPO_ROOT.parent / "shared" / "scenarios"))


@dataclass(frozen=True)
class Scenario:
    name: str
    policy: Policy
    events: list[dict[str, Any]]
    checks: list[dict[str, Any]]


def scenario_files() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.yaml")) if SCENARIO_DIR.is_dir() else []


def load_scenario(path: Path) -> Scenario:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return Scenario(
        name=data.get("name", path.stem),
        policy=parse_policy(data["policy"], source=str(path)),
        events=[{k: ("" if v is None else str(v)) for k, v in e.items()} for e in data["events"]],
        checks=data["checks"],
    )


def expected_rows(check: dict[str, Any]) -> dict[str, tuple[str, float, float]]:
    return {
        customer: (
            row["tier"],
            round(float(row["qualifying_spend"]), 2),
            round(float(row["pending_spend"]), 2),
        )
        for customer, row in check["expect"].items()
    }
