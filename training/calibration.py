"""Probability calibration fitted on held-out cutoffs.

Why: the boosters are trained with class weights (so rare churners and tier
moves are learned), which bends their raw probabilities. A small map fitted on
cutoffs the booster never trained on turns raw scores back into frequencies a
campaign can budget with. Platt scaling (a logistic on the raw log-odds) keeps
the ranking, so AUC is unchanged; isotonic is available for large data sets.
For the multiclass model, the same idea: a multinomial logistic on the raw
log-probabilities ("vector scaling").
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

METHODS = ("platt", "isotonic")
_CLIP = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _CLIP, 1 - _CLIP)
    return np.log(p / (1 - p))


class BinaryCalibrator:
    """Maps raw probabilities to calibrated ones (``platt`` or ``isotonic``)."""

    def __init__(self, method: str = "platt") -> None:
        if method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
        self.method = method

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "mapper_")

    def fit(self, raw: np.ndarray, y: np.ndarray) -> BinaryCalibrator:
        y = np.asarray(y, dtype=int)
        if len(np.unique(y)) < 2:
            raise ValueError("calibration needs both classes in the held-out cutoffs")
        if self.method == "platt":
            self.mapper_ = LogisticRegression(C=1e6, max_iter=1000).fit(
                _logit(raw).reshape(-1, 1), y
            )
        else:
            self.mapper_ = IsotonicRegression(
                y_min=0.0, y_max=1.0, out_of_bounds="clip"
            ).fit(np.asarray(raw, dtype=float), y)
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        if not self.__sklearn_is_fitted__():
            raise RuntimeError("calibrator is not fitted")
        if self.method == "platt":
            return self.mapper_.predict_proba(_logit(raw).reshape(-1, 1))[:, 1]
        return np.clip(self.mapper_.predict(np.asarray(raw, dtype=float)), 0.0, 1.0)


class MulticlassCalibrator:
    """Vector scaling: a multinomial logistic on log raw probabilities; rows sum to 1.

    Classes absent from the held-out rows keep their raw share (re-normalised), so
    a rare class never disappears from the output. With fewer than two classes held
    out (a shop where nobody changed tier) there is nothing to fit: the raw
    probabilities pass through (``identity_`` is True).
    """

    def __init__(self, n_classes: int = 3) -> None:
        self.n_classes = n_classes

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "mapper_")

    def fit(self, raw: np.ndarray, labels: np.ndarray) -> MulticlassCalibrator:
        labels = np.asarray(labels, dtype=int)
        self.classes_ = np.unique(labels)
        self.identity_ = len(self.classes_) < 2
        self.mapper_ = (
            None
            if self.identity_
            else LogisticRegression(C=1e4, max_iter=2000).fit(self._inputs(raw), labels)
        )
        return self

    def _inputs(self, raw: np.ndarray) -> np.ndarray:
        return np.log(np.clip(np.asarray(raw, dtype=float), _CLIP, 1.0))

    def transform(self, raw: np.ndarray) -> np.ndarray:
        if not self.__sklearn_is_fitted__():
            raise RuntimeError("calibrator is not fitted")
        raw = np.asarray(raw, dtype=float)
        if getattr(self, "identity_", False):
            return raw / raw.sum(axis=1, keepdims=True)
        fitted = self.mapper_.predict_proba(self._inputs(raw))
        out = np.zeros((len(raw), self.n_classes))
        covered = raw[:, self.classes_].sum(axis=1, keepdims=True)
        out[:, self.classes_] = fitted * covered
        missing = np.setdiff1d(np.arange(self.n_classes), self.classes_)
        out[:, missing] = raw[:, missing]
        return out / out.sum(axis=1, keepdims=True)
