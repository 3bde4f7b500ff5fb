"""Drift monitoring: does today's data still look like the data the champion learned from?

One Evidently report (data drift per feature, drift of the predicted probabilities,
and classification quality where the current data carries matured ``churned``
labels) plus a plain summary that the CLI, MLflow and the outbox event share:

- **reference**: a sample of the champion's training rows (``training.reference``,
  logged by every training run) found from a run id or a ``models:/`` URI, or a
  Parquet/CSV feature table. By default only its latest cutoff is compared: older
  cutoffs describe a younger customer base, and ageing is not drift.
- **current**: a feature table (``tier-ml features build``) or a scores file
  (``tier-ml score``); drift compares its latest cutoff, quality is computed for
  every labelled cutoff (quality over time).
- **drift share**: drifted columns over monitored columns (the model's features for a
  feature table; tier and the predicted probabilities for a scores file), each column
  judged by Evidently's default test for its type and size. Drift is *detected* when the
  share is at or above the threshold.

Time is passed in (``now``); nothing here reads the clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.reference import download_reference
from training.tracking import CHURN_MODEL_NAME, DEFAULT_EXPERIMENT, ensure_experiment, use_tracking

DEFAULT_THRESHOLD = 0.3
DEFAULT_MAX_ROWS = 50_000
PREDICTION_COLUMNS = ("churn_probability", "p_upgrade", "p_downgrade")
LABEL_COLUMN = "churned"
RECOMMENDATION = (
    "retrain: tier-ml train --events <recent events> --as-of <today>, then "
    "tier-ml promote --events <recent events> --as-of <today> (see docs/training.md)"
)


class MonitorError(ValueError):
    """Monitoring inputs that cannot be used, with a message a person can act on."""


@dataclass(frozen=True)
class Reference:
    """The reference rows and where they came from."""

    frame: pd.DataFrame
    source: str
    run_id: str | None = None
    experiment_id: str | None = None


@dataclass
class MonitorResult:
    """What a monitoring run found: the summary (JSON-ready) and the Evidently snapshot."""

    summary: dict[str, Any]
    snapshot: Any
    quality_by_cutoff: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def drift_share(self) -> float:
        return float(self.summary["drift_share"])

    @property
    def drift_detected(self) -> bool:
        return bool(self.summary["drift_detected"])

    @property
    def drifted_columns(self) -> list[str]:
        return [c["column"] for c in self.summary["columns"] if c["drifted"]]


# --- inputs ------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A Parquet or CSV table (features, scores or a reference sample)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".parquet", ".pq", ".csv"}:
        raise MonitorError(f"{path}: use a .parquet or .csv file")
    if not path.is_file():
        raise MonitorError(f"{path}: no such file")
    try:
        frame = pd.read_parquet(path) if suffix != ".csv" else pd.read_csv(path)
    except Exception as exc:  # any reader error: a file the user must fix
        raise MonitorError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
    if "cutoff" in frame.columns:
        frame["cutoff"] = pd.to_datetime(frame["cutoff"], utc=True)
    return frame


def resolve_reference(spec: str, tracking_uri: str | None = None) -> Reference:
    """``spec``: a Parquet/CSV file, an MLflow run id (or ``runs:/<id>``), ``models:/name@alias`` or
    ``models:/name/version`` (the version's run; its parent run holds the sample)."""
    if Path(spec).suffix.lower() in {".parquet", ".pq", ".csv"}:
        return Reference(read_table(spec), f"file {spec}")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    use_tracking(tracking_uri)
    client = MlflowClient()
    try:
        if spec.startswith("models:/"):
            run_id = _model_run_id(client, spec)
        else:
            run_id = spec.removeprefix("runs:/").split("/")[0]
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise MonitorError(f"--reference {spec!r}: {_first_line(exc)}") from None
    for candidate in (run.info.run_id, run.data.tags.get("mlflow.parentRunId")):
        if candidate is None:
            continue
        frame = download_reference(candidate, tracking_uri)
        if frame is not None:
            return Reference(frame, f"run {candidate} ({spec})", candidate, run.info.experiment_id)
    raise MonitorError(
        f"--reference {spec!r}: run {run.info.run_id} logged no reference data "
        "(reference/features.parquet); retrain with this version of tier-ml, or pass the "
        "training feature table as a Parquet file"
    )


def _model_run_id(client: Any, uri: str) -> str:
    """The run that logged the model version behind ``models:/name@alias`` or ``models:/name/N``."""
    body = uri.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in body:
        name, number = body.split("/", 1)
        version = client.get_model_version(name, number)
    else:
        raise MonitorError(f"--reference {uri!r}: use models:/<name>@<alias> or models:/<name>/<version>")
    if not version.run_id:
        raise MonitorError(f"--reference {uri!r}: the model version has no run")
    return str(version.run_id)


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def table_kind(frame: pd.DataFrame) -> str:
    """``features`` (every model input present) or ``scores`` (``churn_probability`` present)."""
    from features import FEATURE_COLUMNS

    if all(c in frame.columns for c in FEATURE_COLUMNS):
        return "features"
    if "churn_probability" in frame.columns:
        return "scores"
    missing = [c for c in FEATURE_COLUMNS if c not in frame.columns]
    raise MonitorError(
        "--current must be a feature table (tier-ml features build) or a scores file "
        f"(tier-ml score); it has neither churn_probability nor {', '.join(missing[:5])}"
        + (" ..." if len(missing) > 5 else "")
    )


def select_cutoffs(frame: pd.DataFrame, which: str, option: str) -> pd.DataFrame:
    """The rows of one cutoff: ``latest`` (default), ``all``, or a date (the latest cutoff at
    or before it). Frames without a ``cutoff`` column are taken whole."""
    if "cutoff" not in frame.columns or which == "all" or frame.empty:
        return frame
    cutoffs = frame["cutoff"]
    if which == "latest":
        chosen = cutoffs.max()
    else:
        try:
            limit = pd.Timestamp(which)
        except ValueError:
            raise MonitorError(f"{option} {which!r}: use latest, all or a date (2025-06-30)") from None
        limit = limit.tz_localize("UTC") if limit.tzinfo is None else limit.tz_convert("UTC")
        if limit.hour == limit.minute == limit.second == 0:
            limit = limit + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
        earlier = cutoffs[cutoffs <= limit]
        if earlier.empty:
            raise MonitorError(f"{option} {which!r}: no cutoff at or before it (first {cutoffs.min():%Y-%m-%d})")
        chosen = earlier.max()
    return frame[cutoffs == chosen].reset_index(drop=True)


def cutoff_names(frame: pd.DataFrame) -> list[str]:
    if "cutoff" not in frame.columns:
        return []
    return [f"{c:%Y-%m-%dT%H:%M:%SZ}" for c in sorted(frame["cutoff"].dropna().unique())]


def sample_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` seeded rows (drift tests need a sample, not millions)."""
    if max_rows <= 0 or len(frame) <= max_rows:
        return frame
    return frame.sample(max_rows, random_state=seed).reset_index(drop=True)


def add_predictions(frame: pd.DataFrame, models: Any) -> pd.DataFrame:
    """The frame with the champion's ``churn_probability``, ``p_upgrade`` and ``p_downgrade``."""
    from training.scoring import score_features

    if frame.empty:
        return frame.assign(**{c: pd.Series(dtype=float) for c in PREDICTION_COLUMNS})
    scores = score_features(frame, models)
    out = frame.drop(columns=[c for c in PREDICTION_COLUMNS if c in frame.columns]).reset_index(drop=True)
    for column in PREDICTION_COLUMNS:
        out[column] = scores[column].to_numpy()
    return out


# --- the report ---------------------------------------------------------------------------------


def monitored_columns(kind: str, current: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """The columns whose drift makes up the drift share."""
    from features import FEATURE_COLUMNS

    if kind == "features":
        return list(FEATURE_COLUMNS)
    wanted = ["tier", *PREDICTION_COLUMNS]
    return [c for c in wanted if c in current.columns and c in reference.columns]


def _has_labels(frame: pd.DataFrame) -> bool:
    return (
        LABEL_COLUMN in frame.columns
        and "churn_probability" in frame.columns
        and frame[LABEL_COLUMN].notna().any()
        and frame.loc[frame[LABEL_COLUMN].notna(), LABEL_COLUMN].nunique() == 2
    )


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame[frame[LABEL_COLUMN].notna()].copy()
    rows[LABEL_COLUMN] = rows[LABEL_COLUMN].astype(int)
    return rows


def build_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    predictions: list[str],
    threshold: float,
    with_quality: bool,
) -> Any:
    """Run the Evidently report: the drift preset over ``columns``, a value drift per prediction
    column not among them, and the classification preset when both sides are labelled."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset, DataDriftPreset

    from features import CATEGORICAL_COLUMNS

    extra = [c for c in predictions if c not in columns]
    used = [*columns, *extra]
    categorical = [c for c in used if c in CATEGORICAL_COLUMNS]
    numerical = [c for c in used if c not in categorical]
    classification = None
    if with_quality:
        used = [*used, LABEL_COLUMN]
        categorical = [*categorical, LABEL_COLUMN]
        classification = [
            BinaryClassification(target=LABEL_COLUMN, prediction_probas="churn_probability", pos_label=1)
        ]
    definition = DataDefinition(
        numerical_columns=numerical, categorical_columns=categorical, classification=classification
    )
    items: list[Any] = [DataDriftPreset(columns=columns, drift_share=threshold)]
    items += [ValueDrift(column=c) for c in extra]
    if with_quality:
        items.append(ClassificationPreset())
    report = Report(items, include_tests=True)
    return report.run(
        Dataset.from_pandas(_evidently_frame(current[used]), data_definition=definition),
        Dataset.from_pandas(_evidently_frame(reference[used]), data_definition=definition),
    )


def _evidently_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain numpy dtypes (Evidently 0.7 trips over pandas' nullable and string dtypes)."""
    out = frame.reset_index(drop=True).copy()
    for column in out.columns:
        if pd.api.types.is_bool_dtype(out[column]) or pd.api.types.is_integer_dtype(out[column]):
            out[column] = out[column].astype("float64") if out[column].isna().any() else out[column].astype("int64")
        elif pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].astype("float64")
        else:
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out


def column_drift(snapshot: Any) -> dict[str, dict[str, Any]]:
    """Per column: Evidently's method, threshold, score and verdict (its value-drift tests)."""
    document = json.loads(snapshot.json())  # plain JSON values (test status as text)
    scores: dict[str, dict[str, Any]] = {}
    for metric in document["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith(":ValueDrift"):
            scores[config["column"]] = {
                "column": config["column"],
                "method": config.get("method"),
                "threshold": config.get("threshold"),
                "score": _number(metric.get("value")),
                "drifted": False,
            }
    for test in document.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith(":ValueDrift") and params.get("column") in scores:
            scores[params["column"]]["drifted"] = str(test.get("status", "")).upper() == "FAIL"
    return scores


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def quality(frame: pd.DataFrame) -> dict[str, float]:
    """ROC AUC, PR AUC, Brier score, base rate and mean predicted churn of labelled rows."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    rows = _labelled(frame)
    y, p = rows[LABEL_COLUMN].to_numpy(), rows["churn_probability"].to_numpy(dtype=float)
    both = len(np.unique(y)) == 2
    return {
        "rows": len(rows),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)) if len(rows) else float("nan"),
        "churn_rate": float(y.mean()) if len(rows) else float("nan"),
        "mean_churn_probability": float(p.mean()) if len(rows) else float("nan"),
    }


def quality_by_cutoff(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`quality` per cutoff, oldest first (one row when there is no cutoff column)."""
    if not _has_labels(frame):
        return pd.DataFrame()
    labelled = _labelled(frame)
    if "cutoff" not in labelled.columns:
        return pd.DataFrame([{"cutoff": None, **quality(labelled)}])
    rows = [{"cutoff": cutoff, **quality(part)} for cutoff, part in labelled.groupby("cutoff", sort=True)]
    return pd.DataFrame(rows)


# --- the whole run ------------------------------------------------------------------------------


def run_monitor(
    reference: Reference,
    current: pd.DataFrame,
    now: datetime,
    *,
    models: Any = None,
    threshold: float = DEFAULT_THRESHOLD,
    reference_cutoff: str = "latest",
    current_cutoff: str = "latest",
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    current_source: str = "",
) -> MonitorResult:
    """Compare ``current`` with ``reference``; ``models`` (``training.scoring.LoadedModels``,
    the champion) scores both sides for prediction drift, or None to skip it."""
    if not 0 < threshold <= 1:
        raise MonitorError(f"--threshold {threshold}: use a share in (0, 1]")
    kind = table_kind(current)
    if table_kind(reference.frame) != "features":
        raise MonitorError(f"the reference ({reference.source}) is not a feature table")
    ref = sample_rows(select_cutoffs(reference.frame, reference_cutoff, "--reference-cutoff"), max_rows, seed)
    cur = sample_rows(select_cutoffs(current, current_cutoff, "--current-cutoff"), max_rows, seed)
    if ref.empty or cur.empty:
        raise MonitorError("nothing to compare: " + ("the reference" if ref.empty else "--current") + " has no rows")
    if kind == "scores" and models is None:
        raise MonitorError("a scores file is compared through the champion's predictions; no model to score the reference")
    labelled = current if LABEL_COLUMN in current.columns else None
    if models is not None:
        ref = add_predictions(ref, models)
        if kind == "features":
            cur = add_predictions(cur, models)
            if labelled is not None:
                labelled = add_predictions(sample_rows(labelled, max_rows, seed), models)
    columns = monitored_columns(kind, cur, ref)
    predictions = [c for c in PREDICTION_COLUMNS if c in cur.columns and c in ref.columns]
    with_quality = all(_has_labels(f) and f[LABEL_COLUMN].notna().all() for f in (cur, ref))
    snapshot = build_report(ref, cur, columns, predictions, threshold, with_quality)
    drift = column_drift(snapshot)
    monitored = [drift[c] for c in columns if c in drift]
    drifted = [c for c in monitored if c.get("drifted")]
    share = len(drifted) / len(monitored) if monitored else 0.0
    over_time = quality_by_cutoff(labelled) if labelled is not None else pd.DataFrame()
    summary = {
        "generated_at": f"{pd.Timestamp(now).tz_convert('UTC'):%Y-%m-%dT%H:%M:%SZ}",
        "kind": kind,
        "threshold": threshold,
        "drift_share": share,
        "drifted_features": len(drifted),
        "monitored_columns": len(monitored),
        "drift_detected": share >= threshold,
        "recommendation": RECOMMENDATION if share >= threshold else None,
        "reference": {
            "source": reference.source,
            "run_id": reference.run_id,
            "rows": len(ref),
            "cutoffs": cutoff_names(ref),
        },
        "current": {"source": current_source, "rows": len(cur), "cutoffs": cutoff_names(cur)},
        "model": _model_info(models),
        "columns": sorted(monitored, key=lambda c: (not c.get("drifted"), -(c["score"] or 0.0))),
        "prediction_drift": [
            {**drift[c], **_means(ref, cur, c)} for c in predictions if c in drift
        ],
        "quality": _quality_summary(ref, cur, over_time, with_quality),
    }
    return MonitorResult(summary, snapshot, over_time)


def _means(ref: pd.DataFrame, cur: pd.DataFrame, column: str) -> dict[str, float]:
    return {
        "reference_mean": float(ref[column].mean()),
        "current_mean": float(cur[column].mean()),
    }


def _model_info(models: Any) -> dict[str, Any] | None:
    if models is None:
        return None
    return {
        "churn_model": CHURN_MODEL_NAME,
        "churn_version": getattr(models, "churn_version", None),
        "tier_change_version": getattr(models, "tier_change_version", None),
    }


def _quality_summary(
    ref: pd.DataFrame, cur: pd.DataFrame, over_time: pd.DataFrame, with_quality: bool
) -> dict[str, Any] | None:
    if over_time.empty and not with_quality:
        return None
    by_cutoff = [
        {k: (f"{v:%Y-%m-%dT%H:%M:%SZ}" if isinstance(v, pd.Timestamp) else _json_number(v)) for k, v in row.items()}
        for row in over_time.to_dict("records")
    ]
    return {
        "reference": _clean(quality(ref)) if _has_labels(ref) else None,
        "current": _clean(quality(cur)) if _has_labels(cur) else None,
        "by_cutoff": by_cutoff,
    }


def _json_number(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _json_number(v) for k, v in values.items()}


# --- outputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    summary: Path
    evidently: Path
    quality_plot: Path | None = None


def report_paths(out: Path) -> tuple[Path, Path, Path]:
    """``report.html`` → ``report.json`` (the summary) and ``report.evidently.json``."""
    return out, out.with_suffix(".json"), out.with_name(f"{out.stem}.evidently.json")


def write_report(result: MonitorResult, out: Path) -> ReportFiles:
    """The Evidently HTML, the summary JSON, the Evidently snapshot JSON (and a quality plot)."""
    html, summary, evidently = report_paths(out)
    html.parent.mkdir(parents=True, exist_ok=True)
    result.snapshot.save_html(str(html))
    summary.write_text(json.dumps(result.summary, indent=2, sort_keys=False))
    result.snapshot.save_json(str(evidently))
    plot = None
    if len(result.quality_by_cutoff) > 1:
        plot = out.with_name(f"{out.stem}.quality.png")
        _quality_plot(result.quality_by_cutoff, plot)
    return ReportFiles(html, summary, evidently, plot)


def _quality_plot(over_time: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for column in ("roc_auc", "pr_auc", "brier"):
        ax.plot(over_time["cutoff"], over_time[column], marker="o", label=column)
    ax.set_title("Churn model quality by cutoff (matured labels)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.autofmt_xdate()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def log_to_mlflow(
    result: MonitorResult,
    files: ReportFiles,
    now: datetime,
    experiment_id: str | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
) -> tuple[str, str]:
    """A run ``monitor-<date>`` with the drift metrics and the report files; returns
    (run id, experiment id). The experiment: ``experiment`` by name if given, else
    ``experiment_id`` (the model's), else the default experiment."""
    import mlflow

    uri = use_tracking(tracking_uri)
    if experiment is not None or experiment_id is None:
        experiment_id = ensure_experiment(experiment or DEFAULT_EXPERIMENT, uri)
    summary = result.summary
    metrics = {
        "drift_share": summary["drift_share"],
        "drifted_features": summary["drifted_features"],
        "drift_detected": float(summary["drift_detected"]),
    }
    for column in summary["columns"]:
        if column["score"] is not None:
            metrics[f"drift_score_{column['column']}"] = column["score"]
    for column in summary["prediction_drift"]:
        if column["score"] is not None:
            metrics[f"prediction_drift_{column['column']}"] = column["score"]
        metrics[f"current_mean_{column['column']}"] = column["current_mean"]
    quality_now = (summary.get("quality") or {}).get("current") or {}
    metrics |= {f"current_{k}": v for k, v in quality_now.items() if isinstance(v, float)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor-{now:%Y-%m-%d}") as run:
        mlflow.set_tags(
            {
                "tier_ml.kind": "monitor",
                "tier_ml.drift_detected": str(summary["drift_detected"]).lower(),
                "tier_ml.reference": summary["reference"]["source"],
            }
        )
        model = summary.get("model") or {}
        mlflow.log_params(
            {
                "threshold": summary["threshold"],
                "kind": summary["kind"],
                "reference_run_id": summary["reference"]["run_id"] or "",
                "reference_rows": summary["reference"]["rows"],
                "current": summary["current"]["source"][:490],
                "current_rows": summary["current"]["rows"],
                "churn_model_version": model.get("churn_version") or "",
            }
        )
        mlflow.log_metrics(metrics)
        for step, row in enumerate(result.quality_by_cutoff.to_dict("records")):
            stamp = int(pd.Timestamp(row["cutoff"]).timestamp() * 1000) if row["cutoff"] is not None else None
            for name in ("roc_auc", "pr_auc", "brier", "churn_rate", "mean_churn_probability"):
                value = _json_number(row[name])
                if value is not None:
                    mlflow.log_metric(f"quality_{name}", value, step=step, timestamp=stamp)
        summary["mlflow_run_id"] = run.info.run_id
        files.summary.write_text(json.dumps(summary, indent=2))
        for path in (files.html, files.summary, files.evidently, files.quality_plot):
            if path is not None:
                mlflow.log_artifact(str(path), artifact_path="monitor")
        return run.info.run_id, experiment_id


def model_experiment_id(tracking_uri: str | None, alias: str = "champion") -> str | None:
    """The experiment of the run behind ``tier-ml-churn@alias`` (None without one)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    use_tracking(tracking_uri)
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(CHURN_MODEL_NAME, alias)
        return client.get_run(version.run_id).info.experiment_id
    except MlflowException:
        return None
