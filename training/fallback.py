"""Training the small-shop (BTYD) models: one BG/NBD fit, posterior draws, two pyfunc models.

Why no labels: a shop with 90 days of history has no labelled 90-day window at all, so
nothing supervised can be fitted or calibrated honestly. BG/NBD is fitted by maximum
likelihood (with a weak prior on the log parameters, so a few hundred customers cannot
run it to the bounds) on every customer's history as of ``as_of``. Draws from the
Laplace approximation of the posterior (seeded) give the churn intervals: one Hessian,
so fitting stays well under a second (the bootstrap over customers, BGNBD.bootstrap,
agrees but costs one refit per draw). When the data
has one labelled cutoff (``as_of - horizon``), the same recipe fitted at that cutoff is
judged on it and logged as the validation metrics (``val_*``), so runs and ``promote``
can compare it with LightGBM.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd

from tier_ml.policy import Policy
from training.bgnbd import BGNBD
from training.btyd_model import BTYDChurnModel, BTYDTierChangeModel
from training.calibration import INTERVAL_LEVEL
from training.data import EventsSource, TrainingDataError
from training.rfm import rfm_inputs
from training.small_shop import (
    BTYD_FALLBACK,
    FALLBACK_REASON_TAG,
    MODEL_KIND_TAG,
    DataSizes,
    SmallShopThresholds,
)
from training.tracking import MODEL_NAMES, code_version, ensure_experiment, use_tracking
from training.train import TrainResult, _log_pyfunc

#: sd of the Gaussian prior on the log parameters: weak (a factor e^2 is one sd).
LOG_PRIOR_SD = 2.0
POSTERIOR_DRAWS = 200
#: The labelled cutoff is judged only with at least this much history before it.
HOLDOUT_MIN_HISTORY_DAYS = 30


def fit_btyd(
    features: pd.DataFrame, horizon_days: float, seed: int, draws: int = POSTERIOR_DRAWS
) -> tuple[BTYDChurnModel, BTYDTierChangeModel, BGNBD]:
    """Both small-shop models from one regularised BG/NBD fit and its posterior draws."""
    rfm = rfm_inputs(features)
    fitted = BGNBD(log_prior_sd=LOG_PRIOR_SD).fit(rfm["frequency"], rfm["recency"], rfm["age"])
    sampled = fitted.laplace(draws, seed)
    reference = {
        "frequency": float(np.median(rfm["frequency"])),
        "days_since_last": float(np.median(rfm["days_since_last"])),
        "age": float(np.median(rfm["age"])),
    }
    churn = BTYDChurnModel(fitted.params_, sampled, horizon_days, reference, INTERVAL_LEVEL)
    change = BTYDTierChangeModel(fitted.params_, sampled, horizon_days, INTERVAL_LEVEL)
    return churn, change, fitted


def holdout_metrics(
    source: EventsSource, policy: Policy, as_of: datetime, horizon_days: float, seed: int
) -> tuple[dict[str, float], pd.DataFrame | None]:
    """The recipe fitted at ``as_of - horizon`` and judged on that cutoff's labels, if any."""
    from training.data import first_event_time
    from training.evaluate import churn_model_metrics
    from training.promote import holdout

    first = first_event_time(source)
    cutoff = pd.Timestamp(as_of) - pd.Timedelta(days=horizon_days)
    if first is None or cutoff < first + pd.Timedelta(days=HOLDOUT_MIN_HISTORY_DAYS):
        return {}, None  # no labelled window with a history worth judging
    try:
        data = holdout(source, policy, as_of, horizon_days)
    except TrainingDataError:
        return {}, None
    churn, _, _ = fit_btyd(data, horizon_days, seed, draws=20)
    scored = churn.predict(None, data)
    y = data["churned"].to_numpy(dtype=int)
    tiers = data["tier"].astype(str).to_numpy()
    metrics = churn_model_metrics(scored["churn_probability"].to_numpy(), y, tiers, "val_")
    inside = (scored["churn_probability_low"] <= y.mean()) & (y.mean() <= scored["churn_probability_high"])
    metrics["val_rows"] = float(len(data))
    metrics["val_churn_rate"] = float(y.mean())
    metrics["val_mean_churn_probability"] = float(scored["churn_probability"].mean())
    metrics["val_rate_inside_interval_share"] = float(inside.mean())
    return metrics, data


def train_fallback(
    source: EventsSource,
    events_label: str,
    policy: Policy,
    as_of: datetime,
    horizon_days: float,
    experiment: str,
    tracking_uri: str | None,
    seed: int,
    register: bool,
    reason: str,
    sizes: DataSizes,
    thresholds: SmallShopThresholds,
    on_progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fit, log and register the BTYD models; the run and the versions say why."""
    import mlflow

    from features import build_features

    started = time.perf_counter()
    say = on_progress or (lambda _stage: None)
    features = build_features(source, policy, as_of)
    if len(features) < thresholds.fallback_min_customers:
        raise TrainingDataError(
            f"{len(features):,} customers with an order at {as_of:%Y-%m-%d}: even the small-shop "
            f"model needs {thresholds.fallback_min_customers:,}"
        )
    say("small shop: fitting BG/NBD")
    fit_started = time.perf_counter()
    churn, change, fitted = fit_btyd(features, horizon_days, seed)
    fit_seconds = time.perf_counter() - fit_started
    metrics, _ = holdout_metrics(source, policy, as_of, horizon_days, seed)
    say("small shop: BG/NBD fitted")
    scored = churn.predict(None, features)
    summary = {
        "fit_seconds": fit_seconds,
        "bgnbd_log_likelihood": float(fitted.log_likelihood_),
        "mean_churn_probability": float(scored["churn_probability"].mean()),
        "mean_interval_width": float(
            (scored["churn_probability_high"] - scored["churn_probability_low"]).mean()
        ),
    }
    uri = use_tracking(tracking_uri)
    experiment_id = ensure_experiment(experiment, uri)
    tags = {MODEL_KIND_TAG: BTYD_FALLBACK, FALLBACK_REASON_TAG: reason[:4000]}
    params = {
        "as_of": as_of.isoformat(),
        "horizon_days": horizon_days,
        "seed": seed,
        "policy_fingerprint": policy.fingerprint,
        "code_version": code_version(),
        "events": events_label,
        "model_kind": BTYD_FALLBACK,
        "fallback_reason": reason[:500],
        "rows_fit": len(features),
        **sizes.as_params(),
        **thresholds.as_params(),
    }
    model_params = {
        **{f"bgnbd_{k}": v for k, v in fitted.params_.as_dict().items()},
        "bgnbd_log_prior_sd": LOG_PRIOR_SD,
        "interval_method": "laplace_posterior",
        "posterior_draws": POSTERIOR_DRAWS,
        "interval_level": INTERVAL_LEVEL,
        "bgnbd_converged": fitted.converged_,
    }
    result = TrainResult(experiment_id=experiment_id, parent_run_id="")
    result.model_kind, result.fallback_reason = BTYD_FALLBACK, reason
    result.data_sizes = {"customers": sizes.customers, "history_days": sizes.history_days}
    result.rows = {"fit": len(features)}
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"train {as_of:%Y-%m-%d} h{horizon_days:g} (small shop)"
    ) as parent:
        result.parent_run_id = parent.info.run_id
        mlflow.log_params(params)
        mlflow.set_tags({"tier_ml.kind": "train", "tier_ml.policy_fingerprint": policy.fingerprint,
                         **tags})  # fmt: skip
        for kind, model, kind_metrics in (
            ("churn", churn, {**metrics, **summary}),
            ("tier_change", change, {}),
        ):
            with mlflow.start_run(experiment_id=experiment_id, run_name=kind, nested=True) as run:
                mlflow.log_params({**model_params, "horizon_days": horizon_days})
                mlflow.set_tags({"tier_ml.kind": kind, "tier_ml.model_name": MODEL_NAMES[kind],
                                 **tags})  # fmt: skip
                if kind_metrics:
                    mlflow.log_metrics(kind_metrics)
                info = _log_pyfunc(model, features, MODEL_NAMES[kind] if register else None,
                                   {MODEL_KIND_TAG: BTYD_FALLBACK})  # fmt: skip
                version, champion = _register(kind, info, register, tags)
                result.run_ids[kind], result.model_uris[kind] = run.info.run_id, info.model_uri
                result.metrics[kind] = kind_metrics
                if version:
                    result.versions[kind], result.champions[kind] = version, champion
                    mlflow.set_tags({"tier_ml.registered_version": version})
            say(f"small shop: {kind} model logged")
        mlflow.set_tags({f"tier_ml.version.{k}": v for k, v in result.versions.items()})
    result.seconds = time.perf_counter() - started
    return result


def _register(kind: str, info, register: bool, tags: dict[str, str]) -> tuple[str | None, bool]:
    """The new version's number and champion flag, its aliases and model-kind tags set."""
    if not register or info.registered_model_version is None:
        return None, False
    from mlflow import MlflowClient

    from training.registry import mark_new_version

    client, name = MlflowClient(), MODEL_NAMES[kind]
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return version, mark_new_version(client, name, version)
