"""``tier-ml campaigns run`` scoring with the champion model from a real MLflow registry.

The registry (SQLite tracking store in a tmp dir) holds two small pyfunc
models with the contract's inputs and outputs (FEATURE_COLUMNS in; churn
probability / tier-change probabilities out), aliased ``champion``: what is
tested is the wiring (store ledger -> features -> registry -> selection ->
recorded run), not the model's skill, which the training tests own.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.integration.notify_support import isolate_mlflow
from tests.integration.store.support import END_OF_SIMULATION, simulated
from tier_ml.cli import app
from tier_ml.events import frame_records
from tier_ml.notify.service import campaign_runs, campaign_selections
from tier_ml.policy import load_policy
from tier_ml.store import service

pytestmark = pytest.mark.slow


class RecencyChurn(mlflow.pyfunc.PythonModel):
    """P(churn) rises with days since the last order."""

    def predict(self, context, model_input, params=None):
        recency = model_input["recency_days"].astype(float).to_numpy()
        return pd.DataFrame({"churn_probability": 1.0 / (1.0 + np.exp(-(recency - 60.0) / 20.0))})


class FlatTierChange(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        n = len(model_input)
        return pd.DataFrame({"p_down": [0.2] * n, "p_same": [0.7] * n, "p_up": [0.1] * n})


def register_champions(tracking_uri: str, inputs: pd.DataFrame) -> str:
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = mlflow.set_experiment("notify-tests")
    versions = {}
    for name, model in (
        ("tier-ml-churn", RecencyChurn()),
        ("tier-ml-tier-change", FlatTierChange()),
    ):
        signature = infer_signature(inputs, model.predict(None, inputs))
        with mlflow.start_run(experiment_id=experiment.experiment_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=model, signature=signature, pip_requirements=["mlflow"]
            )
        registered = mlflow.register_model(info.model_uri, name)
        client.set_registered_model_alias(name, "champion", registered.version)
        versions[name] = str(registered.version)
    return versions["tier-ml-churn"]


@pytest.fixture(autouse=True)
def _mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_mlflow(monkeypatch)


def test_campaign_scores_gold_customers_with_the_champion(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("training.scoring")
    from features import FEATURE_COLUMNS, build_features

    events, _ = simulated(150)
    policy = load_policy(None)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    engine = service.open_store(url)
    service.apply_events(engine, frame_records(events), END_OF_SIMULATION, policy)
    as_of = service.micros_to_instant(END_OF_SIMULATION)
    features = build_features(events, policy, as_of)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = register_champions(tracking_uri, features[FEATURE_COLUMNS].head(20))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.chdir(tmp_path)

    now = service.iso_instant(END_OF_SIMULATION)
    args = ["campaigns", "run", "--now", now, "--threshold", "0.5", "--control-share", "0.2"]
    result = CliRunner().invoke(app, [*args, "--tracking-uri", tracking_uri, "--db", url])
    assert result.exit_code == 0, result.output

    [run] = campaign_runs(engine)
    assert run["model_version"] == version and run["source"] == "model:champion"
    chosen = campaign_selections(engine, run["id"])
    tiers = service.export_tiers(engine).set_index("customer_id")["tier"]
    recency = features.set_index("customer_id")["recency_days"]
    expected = recency[(tiers.reindex(recency.index) == "Gold") & (recency >= 60)]
    assert sorted(chosen["customer_id"]) == sorted(expected.index)  # p >= 0.5 <=> recency >= 60
    assert len(chosen) > 0 and set(chosen["tier"]) == {"Gold"}
    assert int(chosen["control"].sum()) == round(0.2 * len(chosen))
    engine.dispose()
