"""Evaluation of the models and the baselines on the same validation rows.

Metric names (docs/training.md): ``val_<metric>`` for the model overall,
``val_<metric>_<tier>`` on the customers of one tier at the cutoff (``_gold`` is
the slice the business watches), ``baseline_<name>_val_<metric>[_<tier>]`` for
each baseline. Churn metrics: roc_auc, pr_auc, brier, log_loss, ece,
top_decile_lift; tier change: macro_auc, roc_auc_<class>, log_loss, brier, ece,
accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from training.baselines import BGNBDBaseline, ClassPrior, RecencyHeuristic, RFMLogistic
from training.metrics import binary_metrics, multiclass_metrics, prefixed

CHURN_BASELINES = ("recency", "rfm_logistic", "bgnbd")
TIER_CHANGE_BASELINES = ("class_prior", "rfm_logistic")


@dataclass
class Evaluation:
    """Metrics by name, and the validation scores per scorer (for the plots)."""

    metrics: dict[str, float] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    tiers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))


def slug(name: str) -> str:
    """A tier name as a metric suffix: ``Gold`` → ``gold``."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower())


def _tiers(frame: pd.DataFrame) -> np.ndarray:
    return frame["tier"].astype(str).to_numpy()


def churn_model_metrics(p: np.ndarray, y: np.ndarray, tiers: np.ndarray, prefix: str) -> dict:
    """Overall and per-tier binary metrics, prefixed."""
    out = prefixed(binary_metrics(y, p), prefix)
    for tier in sorted(set(tiers)):
        rows = tiers == tier
        out |= prefixed(binary_metrics(y[rows], p[rows]), prefix, f"_{slug(tier)}")
    return out


def tier_change_model_metrics(
    proba: np.ndarray, labels: np.ndarray, tiers: np.ndarray, prefix: str
) -> dict:
    """Overall and per-tier multiclass metrics, prefixed."""
    out = prefixed(multiclass_metrics(labels, proba), prefix)
    for tier in sorted(set(tiers)):
        rows = tiers == tier
        out |= prefixed(multiclass_metrics(labels[rows], proba[rows]), prefix, f"_{slug(tier)}")
    return out


def predict(model, frame: pd.DataFrame) -> pd.DataFrame:
    """Predictions of an in-memory model (PythonModel) or a loaded pyfunc, the same way."""
    from mlflow.pyfunc import PythonModel

    if isinstance(model, PythonModel):
        return model.predict(None, frame)
    return model.predict(frame)


def churn_probability(model, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(predict(model, frame)["churn_probability"], dtype=float)


def tier_change_probability(model, frame: pd.DataFrame) -> np.ndarray:
    return predict(model, frame)[["p_down", "p_same", "p_up"]].to_numpy(dtype=float)


def churn_baseline_scores(
    train: pd.DataFrame, validation: pd.DataFrame, horizon_days: float
) -> dict[str, np.ndarray]:
    y_train = train["churned"].to_numpy(dtype=int)
    return {
        "recency": RecencyHeuristic().fit(train, y_train).predict_proba(validation),
        "rfm_logistic": RFMLogistic().fit(train, y_train).predict_proba(validation),
        "bgnbd": BGNBDBaseline(horizon_days).fit(validation).predict_proba(validation),
    }


def evaluate_churn(
    model, train: pd.DataFrame, validation: pd.DataFrame, horizon_days: float
) -> Evaluation:
    """The model and every churn baseline on the validation rows."""
    y = validation["churned"].to_numpy(dtype=int)
    tiers = _tiers(validation)
    scores = {"model": churn_probability(model, validation)}
    scores |= churn_baseline_scores(train, validation, horizon_days)
    metrics = churn_model_metrics(scores["model"], y, tiers, "val_")
    for name in CHURN_BASELINES:
        metrics |= churn_model_metrics(scores[name], y, tiers, f"baseline_{name}_val_")
    return Evaluation(metrics, scores, y, tiers)


def evaluate_tier_change(
    model, train: pd.DataFrame, validation: pd.DataFrame
) -> Evaluation:
    """The model and the tier-change baselines on the validation rows."""
    labels = validation["tier_change_index"].to_numpy(dtype=int)
    tiers = _tiers(validation)
    y_train = train["tier_change_index"].to_numpy(dtype=int)
    scores = {
        "model": tier_change_probability(model, validation),
        "class_prior": ClassPrior().fit(train, y_train).predict_proba(validation),
        "rfm_logistic": RFMLogistic(multiclass=True, with_tier=True)
        .fit(train, y_train)
        .predict_proba(validation),
    }
    metrics = tier_change_model_metrics(scores["model"], labels, tiers, "val_")
    for name in TIER_CHANGE_BASELINES:
        metrics |= tier_change_model_metrics(scores[name], labels, tiers, f"baseline_{name}_val_")
    return Evaluation(metrics, scores, labels, tiers)
