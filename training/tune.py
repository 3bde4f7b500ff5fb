"""Optional hyper-parameter search for the churn booster with Optuna, trials as nested runs.

Why judged on the calibration cutoffs: the validation cutoffs must stay unseen by
every choice made during training, tuning included, or the validation metrics of
the final run would flatter it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sklearn.metrics import roc_auc_score

from tier_ml.policy import Policy
from training.data import (
    EventsSource,
    build_dataset,
    data_gap_note,
    events_source,
    first_event_time,
    part,
    purged_split,
    training_cutoffs,
)
from training.fit import BoosterConfig, fit_churn, make_encoder
from training.tracking import ensure_experiment, use_tracking

CLI_OPTIONS = ("learning_rate", "num_leaves", "min_data_in_leaf", "feature_fraction", "lambda_l2")


@dataclass
class TuneResult:
    value: float
    params: dict[str, Any]
    cli_options: dict[str, Any] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)


def tune_churn(
    events: EventsSource,
    policy: Policy,
    as_of: datetime,
    horizon_days: float = 90,
    experiment: str = "tier-ml-tune",
    tracking_uri: str | None = None,
    trials: int = 20,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> TuneResult:
    import mlflow
    import optuna

    from features import CATEGORICAL_COLUMNS, FEATURE_COLUMNS

    say = on_progress or (lambda _stage: None)
    source = events_source(events)
    first = first_event_time(source)
    if first is None:
        from training.data import TrainingDataError

        raise TrainingDataError("no event with a readable time")
    data_gap_note(source, policy, as_of)
    split = purged_split(training_cutoffs(first, as_of, horizon_days), horizon_days)
    data = build_dataset(
        source, policy, sorted({*split.train, *split.calibration}), horizon_days, as_of, say
    )
    train, calibration = part(data, split.train), part(data, split.calibration)
    base = BoosterConfig()
    encoder = make_encoder(
        train, FEATURE_COLUMNS, CATEGORICAL_COLUMNS, horizon_days, True
    )
    inputs = encoder.transform(calibration)
    y = calibration["churned"].to_numpy(dtype=int)
    uri = use_tracking(tracking_uri)
    experiment_id = ensure_experiment(experiment, uri)

    def objective(trial: optuna.Trial) -> float:
        config = replace(
            base,
            learning_rate=trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            num_leaves=trial.suggest_int("num_leaves", 7, 127, log=True),
            min_data_in_leaf=trial.suggest_int("min_data_in_leaf", 20, 500, log=True),
            feature_fraction=trial.suggest_float("feature_fraction", 0.5, 1.0),
            lambda_l2=trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
        )
        model = fit_churn(encoder, train, calibration, config, seed)
        value = float(roc_auc_score(y, model.raw(inputs)))
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"trial {trial.number}", nested=True
        ):
            mlflow.log_params(trial.params)
            mlflow.log_metrics(
                {"calibration_roc_auc": value, "best_iteration": model.booster.best_iteration}
            )
        say(f"trial {trial.number + 1}/{trials}: {value:.4f}")
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"tune churn {as_of:%Y-%m-%d}"):
        mlflow.log_params({"trials": trials, "seed": seed, "horizon_days": horizon_days,
                           **split.as_params()})  # fmt: skip
        study.optimize(objective, n_trials=trials)
        mlflow.log_metric("best_calibration_roc_auc", study.best_value)
        mlflow.log_params({f"best_{k}": v for k, v in study.best_params.items()})
    best = dict(study.best_params)
    return TuneResult(
        value=float(study.best_value),
        params=best,
        cli_options={k: best[k] for k in CLI_OPTIONS},
        other={k: v for k, v in best.items() if k not in CLI_OPTIONS},
    )


__all__ = ["TuneResult", "tune_churn"]
