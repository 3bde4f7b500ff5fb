"""Evaluation metrics with one naming scheme, for models and baselines alike.

Why: reviewers compare runs side by side in MLflow, so every number has a
stable name: ``{prefix}roc_auc``, ``{prefix}roc_auc_gold``, ... where the
prefix says whose number it is (``val_``, ``baseline_bgnbd_val_``, ...).
Metrics that are undefined on a slice (one class only) are left out rather
than logged as NaN.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

TIER_CHANGE_CLASSES = ("down", "same", "up")
_CLIP = 1e-7


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE: the row-weighted mean |observed rate − mean prediction| over equal-width bins."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if len(y) == 0:
        return math.nan
    index = np.minimum((p * bins).astype(int), bins - 1)
    np.bincount(index, minlength=bins)
    observed = np.bincount(index, weights=y, minlength=bins)
    predicted = np.bincount(index, weights=p, minlength=bins)
    return float(np.abs(observed - predicted).sum() / len(y))


def top_decile_lift(y: np.ndarray, p: np.ndarray) -> float:
    """Positive rate among the 10 % highest scores divided by the overall positive rate."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    base = y.mean() if len(y) else 0.0
    if base == 0:
        return math.nan
    top = max(1, math.ceil(0.1 * len(y)))
    order = np.argsort(-p, kind="stable")[:top]
    return float(y[order].mean() / base)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), _CLIP, 1 - _CLIP)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, Brier, log loss, ECE, top-decile lift, positive rate and rows."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    result: dict[str, float] = {"rows": float(len(y))}
    if len(y) == 0:
        return result
    result["positive_rate"] = float(y.mean())
    result["mean_prediction"] = float(p.mean())
    result["brier"] = float(np.mean((p - y) ** 2))
    result["log_loss"] = log_loss(y, p)
    result["ece"] = expected_calibration_error(y, p)
    if 0 < y.sum() < len(y):
        result["roc_auc"] = float(roc_auc_score(y, p))
        result["pr_auc"] = float(average_precision_score(y, p))
        result["top_decile_lift"] = top_decile_lift(y, p)
    return result


def multiclass_metrics(labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Macro one-vs-rest ROC AUC, per-class AUC, log loss, Brier, mean per-class ECE, accuracy.

    ``labels`` are class indices into :data:`TIER_CHANGE_CLASSES`; ``proba`` has one
    column per class, rows summing to 1.
    """
    labels = np.asarray(labels, dtype=int)
    proba = np.asarray(proba, dtype=float)
    result: dict[str, float] = {"rows": float(len(labels))}
    if len(labels) == 0:
        return result
    onehot = np.eye(len(TIER_CHANGE_CLASSES))[labels]
    result["log_loss"] = float(
        -np.mean(np.log(np.clip(proba[np.arange(len(labels)), labels], _CLIP, 1)))
    )
    result["brier"] = float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))
    result["accuracy"] = float(np.mean(proba.argmax(axis=1) == labels))
    aucs, eces = [], []
    for k, name in enumerate(TIER_CHANGE_CLASSES):
        y = onehot[:, k]
        result[f"rate_{name}"] = float(y.mean())
        eces.append(expected_calibration_error(y, proba[:, k]))
        if 0 < y.sum() < len(y):
            auc = float(roc_auc_score(y, proba[:, k]))
            result[f"roc_auc_{name}"] = auc
            aucs.append(auc)
    result["ece"] = float(np.mean(eces))
    if aucs:
        result["macro_auc"] = float(np.mean(aucs))
    return result


def prefixed(metrics: dict[str, float], prefix: str, suffix: str = "") -> dict[str, float]:
    """``{prefix}{name}{suffix}`` for every finite metric (MLflow rejects NaN poorly)."""
    return {
        f"{prefix}{name}{suffix}": value
        for name, value in metrics.items()
        if value is not None and math.isfinite(value)
    }
