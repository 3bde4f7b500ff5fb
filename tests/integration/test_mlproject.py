"""The MLproject entry points run with `mlflow run . --env-manager local` (simulate + train)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from training.registry import alias_version
from training.tracking import CHURN_MODEL_NAME, TIER_CHANGE_MODEL_NAME

ROOT = Path(__file__).resolve().parents[2]


def mlflow_run(entry: str, params: dict[str, str], env: dict[str, str]) -> None:
    args = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", entry,
            "--env-manager", "local", "--experiment-name", "projects"]  # fmt: skip
    for name, value in params.items():
        args += ["-P", f"{name}={value}"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_simulate_and_train_entry_points(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    MlflowClient(uri).create_experiment("projects", (tmp_path / "project-runs").as_uri())
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    events = tmp_path / "events.parquet"
    mlflow_run("simulate", {"customers": "1500", "start": "2024-01-01", "end": "2025-06-30",
                            "seed": "5", "out": str(events)}, env)  # fmt: skip
    assert events.is_file()
    mlflow_run("train", {"events": str(events), "as_of": "2025-06-30T23:59:59Z",
                         "max_rounds": "40", "experiment": "tier-ml-project"}, env)  # fmt: skip
    client = MlflowClient(uri, uri)
    for name in (CHURN_MODEL_NAME, TIER_CHANGE_MODEL_NAME):
        assert alias_version(client, name, "champion") == "1"
    runs = mlflow.search_runs(experiment_names=["tier-ml-project"], output_format="list")
    assert {run.info.run_name for run in runs} >= {"churn", "tier_change"}
