"""``tier-ml monitor`` on a real MLflow store: no drift on a same-distribution sample, drift when
the simulator's customers buy less, prediction drift, quality over time, the outbox event."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from features import FEATURE_COLUMNS, build_features, build_training_set
from tests.integration.training_fixtures import (
    HORIZON_DAYS,
    TRAINING_CUSTOMERS,
    TRAINING_END,
    TRAINING_START,
    TrainedModels,
)
from tier_ml.cli import app
from tier_ml.simulate import SimulationConfig, simulate
from tier_ml.store.service import export_outbox, open_store
from training.reference import REFERENCE_ARTIFACT, ROWS_PER_CUTOFF, download_reference
from training.score_history import read_history

NOW = "2025-07-15T08:00:00Z"
#: The shift: the same customers, half the purchase rate (the simulator's knob).
SHIFTED_ORDERS_PER_YEAR = 6.0

pytestmark = pytest.mark.slow  # one Evidently report is 5-20 s on 2 busy cores
runner = CliRunner()


@dataclass(frozen=True)
class MonitorCase:
    store_uri: str
    reference_run: str
    same: Path  # seed 12, same config: features + labels at two cutoffs (the latest = reference's)
    shifted: Path  # seed 12, fewer orders: features at the reference's latest cutoff
    folder: Path


def _store_copy(trained: TrainedModels, folder: Path) -> str:
    """A private copy of the session's tracking database (monitor runs do not leak)."""
    shutil.copy(trained.store / "mlflow.db", folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="module")
def case(trained_models: TrainedModels, tmp_path_factory: pytest.TempPathFactory) -> MonitorCase:
    folder = tmp_path_factory.mktemp("monitor")
    uri = _store_copy(trained_models, folder)
    parent = trained_models.result.parent_run_id
    reference = download_reference(parent, uri)
    assert reference is not None, "the training run logs its reference sample"
    latest = reference["cutoff"].max().to_pydatetime()
    policy = trained_models.data.policy

    def events(**knobs: float) -> pd.DataFrame:
        config = SimulationConfig(
            customers=TRAINING_CUSTOMERS, start=TRAINING_START, end=TRAINING_END, seed=12, **knobs
        )
        return simulate(config).events

    same = build_training_set(
        events(), policy, [latest - timedelta(days=30), latest], HORIZON_DAYS,
        data_end=trained_models.data.as_of,
    )  # fmt: skip
    same.to_parquet(folder / "same.parquet", index=False)
    shifted = build_features(events(orders_per_year=SHIFTED_ORDERS_PER_YEAR), policy, latest)
    shifted.to_parquet(folder / "shifted.parquet", index=False)
    return MonitorCase(uri, parent, folder / "same.parquet", folder / "shifted.parquet", folder)


def _monitor(case: MonitorCase, current: Path, name: str, *extra: str):
    out = case.folder / name / "report.html"
    result = runner.invoke(
        app,
        ["monitor", "--reference", "models:/tier-ml-churn@champion", "--current", str(current),
         "--out", str(out), "--tracking-uri", case.store_uri, "--now", NOW, *extra],
    )  # fmt: skip
    summary = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else None
    return result, out, summary


@pytest.fixture(scope="module")
def same_run(case: MonitorCase):
    return _monitor(case, case.same, "same")


@pytest.fixture(scope="module")
def shifted_run(case: MonitorCase):
    db = f"sqlite:///{case.folder / 'store.sqlite'}"
    result, out, summary = _monitor(case, case.shifted, "shifted", "--db", db)
    return result, out, summary, db


def test_training_logs_a_reference_sample_by_cutoff_and_part(trained_models: TrainedModels) -> None:
    reference = download_reference(trained_models.result.parent_run_id, trained_models.tracking_uri)
    assert reference is not None
    assert [c for c in FEATURE_COLUMNS if c not in reference.columns] == []
    assert {"customer_id", "cutoff", "part", "churned"} <= set(reference.columns)
    assert set(reference["part"]) == {"train", "calibration", "validation"}
    assert reference.groupby("cutoff").size().max() <= ROWS_PER_CUTOFF
    # the latest cutoff is the validation cutoff: as_of minus the horizon
    latest = reference["cutoff"].max()
    assert latest == pd.Timestamp(trained_models.data.as_of) - pd.Timedelta(days=HORIZON_DAYS)
    assert set(reference.loc[reference["cutoff"] == latest, "part"]) == {"validation"}
    # the child (model) runs do not duplicate it: the monitor finds it through the parent
    assert download_reference(trained_models.result.run_ids["churn"], trained_models.tracking_uri) is None
    assert REFERENCE_ARTIFACT == "reference/features.parquet"


def test_same_distribution_sample_is_not_drift(same_run) -> None:
    result, out, summary = same_run
    assert result.exit_code == 0, result.output
    assert summary["kind"] == "features"
    assert summary["drift_share"] < summary["threshold"] == 0.3
    assert summary["drift_detected"] is False and summary["recommendation"] is None
    assert summary["monitored_columns"] == len(FEATURE_COLUMNS)
    assert len(summary["current"]["cutoffs"]) == 1  # drift looks at the latest cutoff only
    assert summary["current"]["cutoffs"] == summary["reference"]["cutoffs"]
    churn = next(c for c in summary["prediction_drift"] if c["column"] == "churn_probability")
    assert churn["drifted"] is False
    assert abs(churn["current_mean"] - churn["reference_mean"]) < 0.05
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:2000].lower()
    assert out.with_name("report.evidently.json").exists()


def test_quality_over_time_where_labels_matured(same_run, case: MonitorCase) -> None:
    _result, out, summary = same_run
    by_cutoff = summary["quality"]["by_cutoff"]
    assert len(by_cutoff) == 2  # both labelled cutoffs of --current
    assert [row["cutoff"] for row in by_cutoff] == sorted(row["cutoff"] for row in by_cutoff)
    for row in by_cutoff:
        assert row["rows"] > 1000
        assert 0.6 < row["roc_auc"] <= 1.0, row
        assert 0 < row["churn_rate"] < 1
    assert summary["quality"]["reference"]["roc_auc"] > 0.6
    assert out.with_name("report.quality.png").exists()
    client = MlflowClient(case.store_uri)
    history = client.get_metric_history(summary["mlflow_run_id"], "quality_roc_auc")
    assert [m.step for m in history] == [0, 1]


def test_monitor_run_is_logged_under_the_models_experiment(same_run, case: MonitorCase) -> None:
    _result, _out, summary = same_run
    client = MlflowClient(case.store_uri)
    run = client.get_run(summary["mlflow_run_id"])
    model_run = client.get_run(
        client.get_model_version_by_alias("tier-ml-churn", "champion").run_id
    )
    assert run.info.experiment_id == model_run.info.experiment_id
    assert run.info.run_name == "monitor-2025-07-15"
    assert run.data.metrics["drift_share"] == pytest.approx(summary["drift_share"])
    assert run.data.metrics["drifted_features"] == summary["drifted_features"]
    assert run.data.tags["tier_ml.kind"] == "monitor"
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "monitor")}
    assert {"report.html", "report.json", "report.evidently.json"} <= logged


def test_lower_purchase_rates_are_detected_with_exit_1_and_an_event(shifted_run) -> None:
    result, _out, summary, db = shifted_run
    assert result.exit_code == 1, result.output
    assert summary["drift_detected"] is True
    assert summary["drift_share"] >= 0.3
    drifted = {c["column"] for c in summary["columns"] if c["drifted"]}
    assert {"orders_365d", "orders_per_month"} <= drifted
    churn = next(c for c in summary["prediction_drift"] if c["column"] == "churn_probability")
    assert churn["current_mean"] > churn["reference_mean"] + 0.05  # fewer orders: more churn risk
    assert "retrain" in result.output and "tier-ml train" in result.output
    assert summary["quality"] is None  # no labels in a features-only table
    engine = open_store(db)
    try:
        outbox = export_outbox(engine)
    finally:
        engine.dispose()
    events = outbox[outbox["kind"] == "drift_detected"]
    assert len(events) == 1
    payload = json.loads(events["payload"].iloc[0])
    assert events["customer_id"].iloc[0] == "model:tier-ml-churn"
    assert payload["drift_share"] == pytest.approx(summary["drift_share"])
    assert payload["mlflow_run_id"] and "retrain" in payload["recommendation"]


def test_a_scores_file_is_checked_through_prediction_drift(case: MonitorCase, shifted_run) -> None:
    from training.scoring import load_models, score_features

    mlflow.set_tracking_uri(case.store_uri)
    scores = score_features(pd.read_parquet(case.shifted), load_models("champion", case.store_uri))
    path = case.folder / "scores.csv"
    scores.to_csv(path, index=False)
    out = case.folder / "scores" / "report.html"
    result = runner.invoke(
        app,
        ["monitor", "-r", case.reference_run, "-c", str(path), "-o", str(out),
         "--tracking-uri", case.store_uri, "--now", NOW, "--no-log"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["kind"] == "scores"
    assert {c["column"] for c in summary["columns"]} == {"tier", "churn_probability", "p_upgrade", "p_downgrade"}
    assert "churn_probability" in {c["column"] for c in summary["columns"] if c["drifted"]}
    assert "mlflow_run_id" not in summary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-r", "missing.parquet", "-c", "{same}"], "no such file"),
        (["-r", "0123456789abcdef0123456789abcdef", "-c", "{same}"], "--reference"),
        (["-r", "models:/no-such-model@champion", "-c", "{same}"], "--reference"),
        (["-r", "{run}", "-c", "{bad}"], "feature table"),
        (["-r", "{run}", "-c", "{same}", "--out", "report.txt"], ".html"),
        (["-r", "{run}", "-c", "{same}", "--reference-cutoff", "soon"], "--reference-cutoff"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case: MonitorCase, args: list[str], message: str) -> None:
    bad = case.folder / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    filled = [a.format(same=case.same, run=case.reference_run, bad=bad) for a in args]
    command = ["monitor", *filled, "--tracking-uri", case.store_uri, "--no-log"]
    if "--out" not in filled:
        command += ["--out", str(case.folder / "bad" / "report.html")]
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


# --- score history: tier-ml score --keep-history (here: it needs the trained models) ---------


def test_score_command_keeps_history(trained_models: TrainedModels, tmp_path: Path) -> None:
    shutil.copy(trained_models.store / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "scores"
    for as_of in ("2025-05-31T23:59:59Z", "2025-06-30T23:59:59Z", "2025-06-30T23:59:59Z"):
        result = runner.invoke(
            app,
            ["score", "--events", str(trained_models.data.events), "--as-of", as_of,
             "--out", str(tmp_path / "scores.parquet"), "--tracking-uri", uri,
             "--keep-history", str(folder)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "score history" in result.output
    history = read_history(folder)
    latest = pd.read_parquet(tmp_path / "scores.parquet")
    assert sorted(history["date"].unique()) == ["2025-05-31", "2025-06-30"]
    june = history[history["date"] == "2025-06-30"]
    assert len(june) == len(latest)  # the repeated run replaced its file
    assert set(june["model_version"]) == set(latest["churn_model_version"].astype(str))
    assert history.groupby("date")["customer_id"].nunique().is_monotonic_increasing
