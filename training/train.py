"""``train_models``: features and labels → two LightGBM models → MLflow runs and registry.

One parent run per training (data, cutoffs, policy and code version as
parameters) with a nested child run per model: its LightGBM parameters, the
metrics of the model and of every baseline on the same validation rows, the
plots, the feature list and schema, and the pyfunc model with its signature
and input example. Each model is registered as a new version aliased
``challenger`` (and ``champion`` when the registered model has none yet).

Small shops (training.small_shop): below the data-size thresholds, or when the
labelled cutoffs are too few for early stopping and calibration, the BTYD
fallback is trained instead (training.fallback); runs and versions carry
``tier_ml.model_kind`` (``lightgbm`` or ``btyd_fallback``) and the reason.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tier_ml.policy import Policy
from training import plots
from training.data import (
    EventsSource,
    TrainingDataError,
    build_dataset,
    data_gap_note,
    events_source,
    fingerprint,
    first_event_time,
    part,
    purged_split,
    training_cutoffs,
)
from training.evaluate import Evaluation, evaluate_churn, evaluate_tier_change
from training.fit import BoosterConfig, fit_churn, fit_tier_change, make_encoder
from training.metrics import TIER_CHANGE_CLASSES
from training.model import ChurnModel, TierChangeModel
from training.small_shop import (
    LIGHTGBM,
    MODEL_KIND_TAG,
    SmallShopThresholds,
    data_sizes,
    label_reason,
    size_reason,
)
from training.tracking import (
    DEFAULT_EXPERIMENT,
    MODEL_NAMES,
    code_version,
    ensure_experiment,
    use_tracking,
)

Progress = Callable[[str], None]
SHAP_SAMPLE = 1000
INPUT_EXAMPLE_ROWS = 5


@dataclass
class TrainResult:
    """What a training produced: run ids, registered versions, headline metrics."""

    experiment_id: str
    parent_run_id: str
    run_ids: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    champions: dict[str, bool] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    model_uris: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    #: The validation rows' keys and labels (customer_id, cutoff, tier, churned, tier_change).
    validation: pd.DataFrame | None = None
    seconds: float = 0.0
    #: ``lightgbm`` or ``btyd_fallback`` (small-shop mode), and why the fallback was taken.
    model_kind: str = LIGHTGBM
    fallback_reason: str | None = None
    data_sizes: dict[str, float] = field(default_factory=dict)
    #: What the user should know about the run (events that end a few days before as_of).
    notes: list[str] = field(default_factory=list)


def _as_utc(as_of: datetime) -> datetime:
    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware, got {as_of!r}")
    return as_of


def train_models(
    events: EventsSource,
    policy: Policy,
    as_of: datetime,
    horizon_days: float = 90,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    seed: int = 0,
    config: BoosterConfig | None = None,
    max_cutoffs: int = 24,
    validation_cutoffs: int = 2,
    calibration_cutoffs: int = 2,
    register: bool = True,
    plots: bool = True,
    on_progress: Progress | None = None,
    small_shop: SmallShopThresholds | None = None,
) -> TrainResult:
    """Train, evaluate against the baselines, log to MLflow and register both models.

    Only events at or before ``as_of`` are used: cutoffs end at ``as_of - horizon``
    and labels are computed with the data's end set to ``as_of``; events that end more
    than a week before ``as_of`` are refused (``training.data.data_gap_note``). Small data (see
    ``small_shop``, default :class:`SmallShopThresholds`) gets the BTYD fallback.
    """
    import mlflow

    started = time.perf_counter()
    config = config or BoosterConfig()
    thresholds = small_shop or SmallShopThresholds()
    as_of = _as_utc(as_of)
    say = on_progress or (lambda _stage: None)
    source = events_source(events)
    first = first_event_time(source)
    if first is None or first > pd.Timestamp(as_of):
        raise TrainingDataError(f"no event with a readable time at or before {as_of:%Y-%m-%d}")
    notes = [note] if (note := data_gap_note(source, policy, as_of)) else []
    sizes = data_sizes(source, as_of)
    reason = size_reason(sizes, thresholds)
    if reason is None:
        cutoffs = training_cutoffs(first, as_of, horizon_days, max_cutoffs=max_cutoffs)
        try:
            split = purged_split(cutoffs, horizon_days, validation_cutoffs, calibration_cutoffs)
        except TrainingDataError as exc:
            if thresholds.mode == "off":
                raise
            reason = f"too few labelled cutoffs for LightGBM ({exc})"
    if reason is None:
        used = sorted({*split.train, *split.calibration, *split.validation})
        data = build_dataset(source, policy, used, horizon_days, as_of, on_progress=say)
        train, calibration, validation = (
            part(data, split.train),
            part(data, split.calibration),
            part(data, split.validation),
        )
        reason = label_reason(
            {"train": train, "calibration": calibration, "validation": validation}, thresholds
        )
    if reason is not None:
        from training.fallback import train_fallback

        say(f"small shop: {reason}")
        label = str(events) if not isinstance(events, pd.DataFrame) else "<frame>"
        fallback = train_fallback(
            source, label, policy, as_of, horizon_days, experiment, tracking_uri, seed,
            register, reason, sizes, thresholds, say,
        )  # fmt: skip
        fallback.notes = notes
        return fallback
    for name, rows in (("train", train), ("calibration", calibration), ("validation", validation)):
        if rows.empty or rows["churned"].nunique() < 2:
            raise TrainingDataError(
                f"the {name} cutoffs need customers who churned and who did not; "
                "use more customers or a longer history"
            )
    say("data ready")

    from features import CATEGORICAL_COLUMNS, FEATURE_COLUMNS

    encoder = make_encoder(
        train,
        FEATURE_COLUMNS,
        CATEGORICAL_COLUMNS,
        horizon_days,
        config.use_bgnbd_features,
    )
    uri = use_tracking(tracking_uri)
    experiment_id = ensure_experiment(experiment, uri)
    shared_params = {
        "as_of": as_of.isoformat(),
        "horizon_days": horizon_days,
        "seed": seed,
        "policy_fingerprint": policy.fingerprint,
        "data_fingerprint": fingerprint(data),
        "code_version": code_version(),
        "events": str(events) if not isinstance(events, pd.DataFrame) else "<frame>",
        "rows_train": len(train),
        "rows_calibration": len(calibration),
        "rows_validation": len(validation),
        **split.as_params(),
        "model_kind": LIGHTGBM,
        **sizes.as_params(),
    }
    result = TrainResult(experiment_id=experiment_id, parent_run_id="", notes=notes)
    result.data_sizes = {"customers": sizes.customers, "history_days": sizes.history_days}
    result.rows = {"train": len(train), "calibration": len(calibration), "validation": len(validation)}
    result.validation = validation[["customer_id", "cutoff", "tier", "churned", "tier_change"]].copy()
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"train {as_of:%Y-%m-%d} h{horizon_days:g}"
    ) as parent:
        result.parent_run_id = parent.info.run_id
        mlflow.log_params(shared_params)
        mlflow.set_tags({"tier_ml.kind": "train", "tier_ml.policy_fingerprint": policy.fingerprint,
                         MODEL_KIND_TAG: LIGHTGBM})  # fmt: skip
        # the monitor's reference data (tier-ml monitor): a sample of these rows, by cutoff
        from training.reference import log_reference

        log_reference(data, {"train": split.train, "calibration": split.calibration,
                             "validation": split.validation}, seed)  # fmt: skip

        churn = fit_churn(encoder, train, calibration, config, seed)
        say("churn model fitted")
        churn_eval = evaluate_churn(churn, train, validation, horizon_days)
        churn_eval.metrics.update(interval_coverage(churn, validation))
        logged = _log_model_run(
            "churn", churn, churn_eval, validation, shared_params, config, seed, experiment_id,
            register, plots,
        )  # fmt: skip
        _keep(result, "churn", logged, churn_eval.metrics)
        say("churn model logged")

        tier_change = fit_tier_change(encoder, train, calibration, config, seed)
        say("tier-change model fitted")
        change_eval = evaluate_tier_change(tier_change, train, validation)
        logged = _log_model_run(
            "tier_change", tier_change, change_eval, validation, shared_params, config, seed,
            experiment_id, register, plots,
        )  # fmt: skip
        _keep(result, "tier_change", logged, change_eval.metrics)
        say("tier-change model logged")

        mlflow.log_metrics(_headline(result.metrics))
        mlflow.set_tags({f"tier_ml.version.{k}": v for k, v in result.versions.items()})
    result.seconds = time.perf_counter() - started
    return result


def interval_coverage(model: ChurnModel, rows: pd.DataFrame, groups: int = 10) -> dict[str, float]:
    """How often the realised churn rate of a predicted-probability decile of the validation
    rows lies inside the decile's mean 90 % interval, and the mean interval width.

    Realised rates carry sampling noise, and the validation months may sit in another
    season than the calibration months: a share well below 0.9 says the intervals are too
    narrow for this shop (docs/training.md)."""
    out = model.predict(None, rows)
    if "churn_probability_low" not in out or len(rows) < groups:
        return {}
    scored = out.assign(y=rows["churned"].to_numpy())
    rank = scored["churn_probability"].rank(method="first")
    means = scored.assign(g=pd.qcut(rank, groups, labels=False)).groupby("g").mean()
    inside = (means["churn_probability_low"] <= means["y"]) & (
        means["y"] <= means["churn_probability_high"]
    )
    width = scored["churn_probability_high"] - scored["churn_probability_low"]
    return {"val_interval_decile_coverage": float(inside.mean()),
            "val_interval_mean_width": float(width.mean())}  # fmt: skip


def _headline(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """The parent run's summary: the numbers a reviewer compares first."""
    wanted = {
        "churn": ("val_roc_auc", "val_roc_auc_gold", "val_ece", "baseline_bgnbd_val_roc_auc"),
        "tier_change": ("val_macro_auc", "val_ece", "baseline_rfm_logistic_val_macro_auc"),
    }
    return {
        f"{kind}_{name}": metrics[kind][name]
        for kind, names in wanted.items()
        for name in names
        if name in metrics.get(kind, {})
    }


def _keep(
    result: TrainResult,
    kind: str,
    logged: tuple[str, str, str | None, bool],
    metrics: dict[str, float],
) -> None:
    """Record one model's run, URI and metrics, and its version and champion flag if registered."""
    result.run_ids[kind], result.model_uris[kind], version, champion = logged
    result.metrics[kind] = metrics
    if version:
        result.versions[kind], result.champions[kind] = version, champion


def _log_model_run(
    kind: str,
    model: ChurnModel | TierChangeModel,
    evaluation: Evaluation,
    validation: pd.DataFrame,
    shared_params: dict[str, Any],
    config: BoosterConfig,
    seed: int,
    experiment_id: str,
    register: bool,
    plots: bool,
) -> tuple[str, str, str | None, bool]:
    """A nested run for one model: params, metrics, plots, schema, model; then the registry."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id, run_name=kind, nested=True) as run:
        booster = model.booster
        params = {
            **{f"lgbm_{k}": v for k, v in config.lightgbm_params(seed).items()},
            "objective": booster.params.get("objective", ""),
            "best_iteration": booster.best_iteration,
            "num_trees": booster.num_trees(),
            "calibration": "vector_scaling" if kind == "tier_change" else config.calibration,
            "calibration_data": (
                "out_of_fold_train+calibration_cutoffs"
                if kind == "churn" and config.out_of_fold_calibration
                else "calibration_cutoffs"
            ),
            "class_weighting": config.class_weighting,
            "early_stopping_rounds": config.early_stopping_rounds,
            "max_rounds": config.max_rounds,
            "horizon_days": shared_params["horizon_days"],
            "policy_fingerprint": shared_params["policy_fingerprint"],
            "data_fingerprint": shared_params["data_fingerprint"],
            "code_version": shared_params["code_version"],
            "validation_cutoffs": shared_params["validation_cutoffs"],
            "model_kind": LIGHTGBM,
        }
        if kind == "churn":
            params["interval_draws"] = config.interval_draws
        if model.encoder.bgnbd is not None:
            params |= {f"bgnbd_{k}": v for k, v in model.encoder.bgnbd.as_dict().items()}
        mlflow.log_params(params)
        mlflow.set_tags({"tier_ml.kind": kind, "tier_ml.model_name": MODEL_NAMES[kind],
                         MODEL_KIND_TAG: LIGHTGBM})  # fmt: skip
        mlflow.log_metrics(evaluation.metrics)
        with tempfile.TemporaryDirectory() as folder:
            if plots:
                _write_plots(kind, model, evaluation, validation, Path(folder))
            _write_schema(model, Path(folder) / "features.json")
            mlflow.log_artifacts(folder)
        info = _log_pyfunc(model, validation, MODEL_NAMES[kind] if register else None,
                           {MODEL_KIND_TAG: LIGHTGBM})  # fmt: skip
        version, champion = None, False
        if register and info.registered_model_version is not None:
            from mlflow import MlflowClient

            from training.registry import mark_new_version

            version = str(info.registered_model_version)
            client = MlflowClient()
            client.set_model_version_tag(MODEL_NAMES[kind], version, MODEL_KIND_TAG, LIGHTGBM)
            champion = mark_new_version(client, MODEL_NAMES[kind], version)
            mlflow.set_tags({"tier_ml.registered_version": version})
        return run.info.run_id, info.model_uri, version, champion


def model_input_example(frame: pd.DataFrame, rows: int = INPUT_EXAMPLE_ROWS) -> pd.DataFrame:
    """Feature columns with the dtypes of the feature registry (what ``features`` builds)."""
    from features import FEATURE_COLUMNS, FEATURES

    example = frame[FEATURE_COLUMNS].head(rows).copy()
    for feature in FEATURES:
        kind = str if feature.kind == "category" else feature.dtype
        example[feature.name] = example[feature.name].astype(kind)
    return example.reset_index(drop=True)


def model_signature(example: pd.DataFrame, output: pd.DataFrame):
    """Inputs: FEATURE_COLUMNS with the registry's types; params: ``top_reasons`` (default 0)."""
    from mlflow.models import infer_signature

    return infer_signature(example, output, params={"top_reasons": 0})


def _log_pyfunc(
    model: Any,
    validation: pd.DataFrame,
    registered_name: str | None,
    metadata: dict[str, str] | None = None,
):
    """Log (and register) the pyfunc; ``metadata`` lands in its MLmodel file, which serving
    reads (e.g. ``tier_ml.model_kind``) without the registry."""
    import mlflow

    example = model_input_example(validation)
    output = model.predict(None, example, params={"top_reasons": 3})
    with warnings.catch_warnings():
        # The registry's integer features are never missing (features.schema checks it).
        warnings.filterwarnings("ignore", message=".*integer column.*", category=UserWarning)
        signature = model_signature(example, output)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=signature,
            input_example=example,
            registered_model_name=registered_name,
            pip_requirements=_requirements(),
            metadata=metadata,
        )


def _requirements() -> list[str]:
    from importlib.metadata import version

    names = ("mlflow", "lightgbm", "scikit-learn", "scipy", "pandas", "numpy", "duckdb")
    return [f"{name}=={version(name)}" for name in names]


def _write_schema(model: ChurnModel | TierChangeModel, path: Path) -> None:
    """The feature list and schema, and the state frozen at fit time, for serving."""
    from features import FEATURES

    encoder = model.encoder
    schema = {
        "feature_columns": encoder.feature_columns,
        "categorical_columns": encoder.categorical_columns,
        "model_columns": encoder.model_columns,
        "categories": encoder.categories,
        "bgnbd": encoder.bgnbd.as_dict() if encoder.bgnbd is not None else None,
        "horizon_days": encoder.horizon_days,
        "features": [
            {
                "name": f.name,
                "kind": f.kind,
                "nullable": f.nullable,
                "low": f.low if np.isfinite(f.low) else None,
                "high": f.high if np.isfinite(f.high) else None,
                "description": f.description,
            }
            for f in FEATURES
        ],
        "output": list(
            ("churn_probability", "churn_probability_low", "churn_probability_high")
            if model.kind == "churn"
            else ("p_down", "p_same", "p_up")
        ),
        "model_kind": LIGHTGBM,
    }
    path.write_text(json.dumps(schema, indent=2))


def _save(fig, path: Path, tight: bool = False) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight" if tight else None)
    plots.close(fig)


def _shap_sample(validation: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    if len(validation) <= SHAP_SAMPLE:
        return validation
    return validation.sample(SHAP_SAMPLE, random_state=seed)


def _write_plots(
    kind: str,
    model: ChurnModel | TierChangeModel,
    evaluation: Evaluation,
    validation: pd.DataFrame,
    folder: Path,
) -> None:
    names = model.encoder.model_columns
    gains = model.booster.feature_importance(importance_type="gain")
    _save(plots.feature_importance(names, gains), folder / "feature_importance.png")
    sample = _shap_sample(validation)
    inputs = model.encoder.transform(sample)
    if kind == "churn":
        y, scores = evaluation.labels, evaluation.scores
        _save(plots.calibration_curve(y, scores, title="Churn: calibration (validation)"),
              folder / "calibration_curve.png")  # fmt: skip
        gold = evaluation.tiers == "Gold"
        if gold.any():
            _save(
                plots.calibration_curve(
                    y[gold], {k: v[gold] for k, v in scores.items()}, title="Churn: calibration, Gold"
                ),
                folder / "calibration_curve_gold.png",
            )
            _save(
                plots.gains_and_lift(y[gold], {k: v[gold] for k, v in scores.items()}, "Gold"),
                folder / "gains_lift_gold.png",
            )
        _save(plots.gains_and_lift(y, scores, "Churn (validation)"), folder / "gains_lift.png")
        _save(plots.shap_summary(model.contributions(inputs), inputs, "Churn: SHAP"),
              folder / "shap_summary.png", tight=True)  # fmt: skip
        return
    labels, proba = evaluation.labels, evaluation.scores["model"]
    _save(
        plots.confusion_matrix(labels, proba.argmax(axis=1), TIER_CHANGE_CLASSES),
        folder / "confusion_matrix.png",
    )
    contributions = model.contributions(inputs)
    for index, name in ((0, "down"), (2, "up")):
        y = (labels == index).astype(int)
        scores = {k: v[:, index] for k, v in evaluation.scores.items()}
        _save(plots.calibration_curve(y, scores, title=f"Tier change: calibration of p_{name}"),
              folder / f"calibration_curve_{name}.png")  # fmt: skip
        _save(plots.gains_and_lift(y, scores, f"Tier change: {name}"),
              folder / f"gains_lift_{name}.png")  # fmt: skip
        _save(plots.shap_summary(contributions[:, index, :], inputs, f"Tier change: SHAP for {name}"),
              folder / f"shap_summary_{name}.png", tight=True)  # fmt: skip
