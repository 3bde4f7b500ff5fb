"""Training, registry, pyfunc contract, scoring, promotion and leakage, on a real MLflow store."""

from __future__ import annotations

import json
import re
import shutil
from datetime import timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from features import FEATURE_COLUMNS, build_features
from tests.integration.training_fixtures import HORIZON_DAYS, TrainedModels, small_booster_config
from tier_ml.cli import app
from training.registry import alias_version
from training.tracking import CHURN_MODEL_NAME, TIER_CHANGE_MODEL_NAME, ensure_experiment

AS_OF_TEXT = "2025-06-30T23:59:59Z"


def client_for(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


def copy_store(trained: TrainedModels, tmp_path: Path) -> str:
    """A private copy of the session store, for tests that move aliases."""
    shutil.copy(trained.store / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# --- one training: runs, metrics, artifacts, registry ------------------------------------------


def test_training_logs_parent_and_child_runs_with_comparable_metrics(
    trained_models: TrainedModels,
) -> None:
    client = client_for(trained_models.tracking_uri)
    result = trained_models.result
    parent = client.get_run(result.parent_run_id)
    for name in ("horizon_days", "policy_fingerprint", "data_fingerprint", "code_version",
                 "train_cutoffs", "validation_cutoffs", "calibration_cutoffs"):  # fmt: skip
        assert parent.data.params[name], name
    assert parent.data.params["policy_fingerprint"] == trained_models.data.policy.fingerprint
    churn = client.get_run(result.run_ids["churn"])
    assert churn.data.tags["mlflow.parentRunId"] == result.parent_run_id
    metrics = churn.data.metrics
    for prefix in ("val_", "baseline_recency_val_", "baseline_rfm_logistic_val_",
                   "baseline_bgnbd_val_"):  # fmt: skip
        for name in ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "top_decile_lift"):
            assert f"{prefix}{name}" in metrics, f"{prefix}{name}"
            assert f"{prefix}{name}_gold" in metrics, f"{prefix}{name}_gold"
    assert churn.data.params["lgbm_seed"] == "0"
    assert float(churn.data.params["bgnbd_r"]) > 0
    change = client.get_run(result.run_ids["tier_change"]).data.metrics
    assert "val_macro_auc" in change and "baseline_rfm_logistic_val_macro_auc" in change
    assert change["baseline_class_prior_val_macro_auc"] == pytest.approx(0.5)


def test_churn_model_is_useful_on_unseen_cutoffs(trained_models: TrainedModels) -> None:
    metrics = trained_models.result.metrics["churn"]
    assert metrics["val_roc_auc"] > 0.75
    assert metrics["val_roc_auc"] > metrics["baseline_rfm_logistic_val_roc_auc"] - 0.02
    assert metrics["val_ece"] < 0.1
    change = trained_models.result.metrics["tier_change"]
    assert change["val_macro_auc"] > change["baseline_class_prior_val_macro_auc"]


def test_artifacts_hold_plots_schema_and_model(trained_models: TrainedModels) -> None:
    client = client_for(trained_models.tracking_uri)
    result = trained_models.result
    churn_files = {a.path for a in client.list_artifacts(result.run_ids["churn"])}
    assert {"calibration_curve.png", "gains_lift.png", "feature_importance.png",
            "shap_summary.png", "features.json"} <= churn_files  # fmt: skip
    change_files = {a.path for a in client.list_artifacts(result.run_ids["tier_change"])}
    assert {"confusion_matrix.png", "calibration_curve_up.png", "features.json"} <= change_files
    local = client.download_artifacts(result.run_ids["churn"], "features.json")
    schema = json.loads(Path(local).read_text())
    assert schema["feature_columns"] == FEATURE_COLUMNS
    assert schema["bgnbd"]["alpha"] > 0
    info = mlflow.models.get_model_info(result.model_uris["churn"])
    assert [c["name"] for c in info.signature.inputs.to_dict()] == FEATURE_COLUMNS
    assert info.signature.params.to_dict()[0]["name"] == "top_reasons"


def test_first_versions_are_challenger_and_champion(trained_models: TrainedModels) -> None:
    client = client_for(trained_models.tracking_uri)
    for name in (CHURN_MODEL_NAME, TIER_CHANGE_MODEL_NAME):
        assert alias_version(client, name, "challenger") == "1"
        assert alias_version(client, name, "champion") == "1"


# --- the pyfunc contract ------------------------------------------------------------------------


def test_pyfunc_outputs_follow_the_contract(trained_models: TrainedModels) -> None:
    client_for(trained_models.tracking_uri)
    data = trained_models.data
    frame = build_features(data.events, data.policy, data.as_of).head(50)
    churn = mlflow.pyfunc.load_model(f"models:/{CHURN_MODEL_NAME}@champion")
    plain = churn.predict(frame)
    assert list(plain.columns) == [
        "churn_probability", "churn_probability_low", "churn_probability_high",
    ]  # fmt: skip
    assert plain["churn_probability"].between(0, 1).all()
    # the 90 % interval (bootstrap of the calibration) contains the point and is not empty
    assert (plain["churn_probability_low"] <= plain["churn_probability"]).all()
    assert (plain["churn_probability"] <= plain["churn_probability_high"]).all()
    assert (plain["churn_probability_high"] - plain["churn_probability_low"]).mean() > 0
    assert churn.metadata.metadata["tier_ml.model_kind"] == "lightgbm"
    explained = churn.predict(frame, params={"top_reasons": 3})
    np.testing.assert_allclose(explained["churn_probability"], plain["churn_probability"])
    for text in explained["reasons"]:
        reasons = json.loads(text)
        assert len(reasons) == 3
        assert set(reasons[0]) == {"feature", "value", "contribution"}
        sizes = [abs(r["contribution"]) for r in reasons]
        assert sizes == sorted(sizes, reverse=True)
    change = mlflow.pyfunc.load_model(f"models:/{TIER_CHANGE_MODEL_NAME}@champion")
    proba = change.predict(frame[FEATURE_COLUMNS], params={"top_reasons": 2})
    assert list(proba.columns) == ["p_down", "p_same", "p_up", "reasons"]
    np.testing.assert_allclose(proba[["p_down", "p_same", "p_up"]].sum(axis=1), 1.0, atol=1e-9)
    assert all(len(json.loads(text)) == 2 for text in proba["reasons"])


# --- CLI: score, promote, errors ------------------------------------------------------------------


def test_score_writes_one_row_per_customer_with_versions(
    trained_models: TrainedModels, tmp_path: Path
) -> None:
    data = trained_models.data
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        app,
        ["score", "--events", str(data.events), "--as-of", AS_OF_TEXT, "--out", str(out),
         "--tracking-uri", trained_models.tracking_uri],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out, dtype={"churn_model_version": str, "tier_change_model_version": str})
    assert list(scores.columns) == [
        "customer_id", "tier", "churn_probability", "p_upgrade", "p_downgrade",
        "churn_model_version", "tier_change_model_version",
        "churn_probability_low", "churn_probability_high", "churn_model_kind",
    ]  # fmt: skip
    assert (scores["churn_model_kind"] == "lightgbm").all()
    assert (scores["churn_probability_low"] <= scores["churn_probability"]).all()
    assert (scores["churn_probability"] <= scores["churn_probability_high"]).all()
    expected = build_features(data.events, data.policy, data.as_of)
    assert sorted(scores["customer_id"]) == sorted(expected["customer_id"])
    assert scores["customer_id"].is_unique
    assert (scores["churn_model_version"] == "1").all()
    assert scores[["churn_probability", "p_upgrade", "p_downgrade"]].stack().between(0, 1).all()
    # Gold customers cannot be downgraded with lifetime spend and grace: p_down stays tiny.
    assert set(scores["tier"]) <= set(data.policy.tier_names)


class Inverted(mlflow.pyfunc.PythonModel):
    """A deliberately bad challenger: the champion's probabilities turned upside down."""

    def __init__(self, inner: mlflow.pyfunc.PythonModel) -> None:
        self.inner = inner

    def predict(self, context, model_input, params=None):
        out = self.inner.predict(context, model_input, params)
        if "churn_probability" in out:
            out["churn_probability"] = 1 - out["churn_probability"]
        else:
            out[["p_down", "p_same", "p_up"]] = out[["p_up", "p_same", "p_down"]].to_numpy()
        return out


def register_inverted(uri: str, name: str) -> str:
    client = client_for(uri)
    inner = mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model()
    with mlflow.start_run(run_name="inverted", experiment_id=ensure_experiment("bad", uri)):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Inverted(inner), registered_model_name=name
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, "challenger", version)
    return version


def promote_cli(uri: str, events: Path, *extra: str):
    return CliRunner().invoke(
        app,
        ["promote", "--events", str(events), "--as-of", AS_OF_TEXT, "--tracking-uri", uri,
         "--experiment", "promotions", *extra],
    )  # fmt: skip


@pytest.mark.slow
def test_promote_keeps_a_better_champion_and_records_the_comparison(
    trained_models: TrainedModels, tmp_path: Path
) -> None:
    uri = copy_store(trained_models, tmp_path)
    bad = register_inverted(uri, CHURN_MODEL_NAME)
    result = promote_cli(uri, trained_models.data.events, "--model", "churn")
    assert result.exit_code == 0, result.output
    assert "kept champion" in result.output
    client = client_for(uri)
    assert alias_version(client, CHURN_MODEL_NAME, "champion") == "1"
    runs = mlflow.search_runs(experiment_names=["promotions"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["tier_ml.decision"] == "kept"
    assert run.data.params["challenger_version"] == bad
    assert run.data.metrics["challenger_val_roc_auc"] < run.data.metrics["champion_val_roc_auc"]

    forced = promote_cli(uri, trained_models.data.events, "--model", "churn", "--force")
    assert forced.exit_code == 0, forced.output
    assert alias_version(client, CHURN_MODEL_NAME, "champion") == bad


@pytest.mark.slow
def test_promote_moves_champion_to_a_better_challenger(
    trained_models: TrainedModels, tmp_path: Path
) -> None:
    uri = copy_store(trained_models, tmp_path)
    client = client_for(uri)
    bad = register_inverted(uri, TIER_CHANGE_MODEL_NAME)
    client.set_registered_model_alias(TIER_CHANGE_MODEL_NAME, "champion", bad)
    client.set_registered_model_alias(TIER_CHANGE_MODEL_NAME, "challenger", "1")
    result = promote_cli(uri, trained_models.data.events, "--model", "tier_change")
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output
    assert alias_version(client, TIER_CHANGE_MODEL_NAME, "champion") == "1"


def test_user_errors_are_one_line_with_exit_2(
    trained_models: TrainedModels, tmp_path: Path
) -> None:
    runner = CliRunner()
    empty_store = f"sqlite:///{tmp_path / 'empty.db'}"
    events = str(trained_models.data.events)
    cases = [
        ["train", "--events", str(tmp_path / "missing.parquet"), "--as-of", AS_OF_TEXT,
         "--tracking-uri", empty_store],
        ["train", "--events", events, "--as-of", "2024-05-01", "--tracking-uri", empty_store,
         "--small-shop", "off"],
        ["train", "--events", events, "--as-of", AS_OF_TEXT, "--small-shop", "sometimes"],
        ["train", "--events", events, "--as-of", "yesterday"],
        ["score", "--events", events, "--as-of", AS_OF_TEXT, "--tracking-uri", empty_store,
         "--out", str(tmp_path / "s.csv")],
        ["score", "--events", events, "--as-of", AS_OF_TEXT, "--out", str(tmp_path / "s.txt")],
        ["promote", "--events", events, "--as-of", AS_OF_TEXT, "--model", "nope"],
    ]  # fmt: skip
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output, args



def test_a_tracking_uri_mlflow_cannot_use_is_one_line(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    pd.DataFrame(
        {"event_id": ["e1"], "event_type": ["placed"], "order_id": ["o1"], "customer_id": ["c1"],
         "occurred_at": ["2025-01-01"], "amount": ["10"], "currency": ["USD"]}
    ).to_csv(events, index=False)  # fmt: skip
    common = ["--events", str(events), "--as-of", AS_OF_TEXT, "--tracking-uri", "nosuchscheme://x"]
    for args in (["score", *common, "--out", str(tmp_path / "s.csv")], ["promote", *common]):
        result = CliRunner().invoke(app, args)
        said = " ".join(result.output.split())
        assert result.exit_code == 2, (args, result.output)
        assert "unsupported URI 'nosuchscheme://x'" in said and "Traceback" not in result.output

# --- leakage: events after as_of change nothing -------------------------------------------------


@pytest.mark.slow
def test_events_after_as_of_change_neither_model_nor_scores(
    trained_models: TrainedModels, tmp_path: Path
) -> None:
    from training.scoring import LoadedModels, score_features
    from training.train import train_models

    data = trained_models.data
    as_of = data.as_of - timedelta(days=45)
    events = pd.read_parquet(data.events)
    before = tmp_path / "before.parquet"
    events[events["occurred_at"].isna() | (events["occurred_at"] <= as_of)].to_parquet(before)
    assert (events["occurred_at"] > as_of).sum() > 100  # the full file does reach past as_of

    def train_and_score(path: Path, name: str) -> pd.DataFrame:
        uri = f"sqlite:///{tmp_path / name}.db"
        result = train_models(path, data.policy, as_of, HORIZON_DAYS, "leakage", uri, seed=3,
                              config=small_booster_config(), max_cutoffs=10, register=False,
                              plots=False)  # fmt: skip
        client_for(uri)
        models = LoadedModels(
            mlflow.pyfunc.load_model(result.model_uris["churn"]),
            mlflow.pyfunc.load_model(result.model_uris["tier_change"]),
            "x",
            "x",
        )
        features = build_features(path, data.policy, as_of)
        scored = score_features(features, models)
        params = MlflowClient(uri).get_run(result.parent_run_id).data.params
        return scored.assign(fingerprint=params["data_fingerprint"])

    full = train_and_score(data.events, "full")
    cut = train_and_score(before, "cut")
    pd.testing.assert_frame_equal(full, cut)


@pytest.mark.slow
def test_tune_logs_trials_as_nested_runs(trained_models: TrainedModels, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'tune.db'}"
    result = CliRunner().invoke(
        app,
        ["tune", "--events", str(trained_models.data.events), "--as-of", AS_OF_TEXT,
         "--tracking-uri", uri, "--trials", "2", "--experiment", "tuning"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    tuned = re.findall(r"(--[a-z][a-z0-9-]*) ([0-9][0-9.e+-]*)", said.split("ROC AUC", 1)[1])
    assert {name for name, _ in tuned} == {
        "--learning-rate", "--num-leaves", "--min-data-in-leaf", "--feature-fraction", "--lambda-l2"}
    trained = CliRunner().invoke(
        app,
        ["train", "--events", str(trained_models.data.events), "--as-of", AS_OF_TEXT, "--tracking-uri", uri,
         "--experiment", "tuned", "--no-register", "--max-rounds", "5", *[x for pair in tuned for x in pair]],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output  # what tune prints, train takes as it is
    client_for(uri)
    runs = mlflow.search_runs(experiment_names=["tuning"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(trials) == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    assert 0.5 < parents[0].data.metrics["best_calibration_roc_auc"] <= 1
