"""Honest baselines, scored on the same validation rows as the models in every run.

Why: a churn model is only worth its upkeep if it beats what a marketer could do
with a spreadsheet (recency), a textbook model (logistic regression on RFM) and
the standard BTYD model (BG/NBD). All follow the scikit-learn estimator shape:
``fit(frame, y)`` on feature frames, ``predict_proba(frame)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.bgnbd import BGNBD
from training.rfm import rfm_inputs


def _rfm_matrix(frame: pd.DataFrame) -> np.ndarray:
    rfm = rfm_inputs(frame)
    return np.column_stack(
        [
            np.log1p(rfm["days_since_last"]),
            np.log1p(rfm["frequency"]),
            np.log1p(rfm["monetary"]),
            np.log1p(rfm["age"]),
        ]
    )


class RecencyHeuristic:
    """"Long time no order = churned": days since the last order, mapped monotonically to a
    probability (isotonic on the training rows), so it can be judged on calibration too."""

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "mapper_")

    def fit(self, frame: pd.DataFrame, y: np.ndarray) -> RecencyHeuristic:
        recency = rfm_inputs(frame)["days_since_last"].to_numpy()
        self.mapper_ = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(recency, y)
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        p = self.mapper_.predict(rfm_inputs(frame)["days_since_last"].to_numpy())
        return np.clip(p, 0.0, 1.0)


class RFMLogistic:
    """Logistic regression on log recency, frequency, monetary and tenure (the textbook model)."""

    def __init__(self, multiclass: bool = False, with_tier: bool = False) -> None:
        self.multiclass = multiclass
        self.with_tier = with_tier

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        matrix = _rfm_matrix(frame)
        if self.with_tier:
            extra = [
                pd.to_numeric(frame[c], errors="coerce").fillna(0).to_numpy(dtype=float)
                for c in ("tier_rank", "in_grace")
                if c in frame.columns
            ]
            matrix = np.column_stack([matrix, *extra])
        return matrix

    def fit(self, frame: pd.DataFrame, y: np.ndarray) -> RFMLogistic:
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:  # one class only (nobody moved tier): predict it
            self.model_ = None
            return self
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        self.model_.fit(self._matrix(frame), y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, frame: pd.DataFrame, n_classes: int = 3) -> np.ndarray:
        if self.model_ is None:
            proba = np.ones((len(frame), 1))
        else:
            proba = self.model_.predict_proba(self._matrix(frame))
        if not self.multiclass:
            return proba[:, list(self.classes_).index(1)] if 1 in self.classes_ else proba[:, 0] * 0
        out = np.zeros((len(frame), n_classes))
        out[:, self.classes_.astype(int)] = proba
        return out


class BGNBDBaseline:
    """P(no order in the horizon) from BG/NBD, fitted unsupervised on the scored cross-section.

    BG/NBD needs no labels: it is fitted by maximum likelihood on the histories of
    the customers it scores (what a BTYD user does), which only uses events at or
    before the cutoff.
    """

    def __init__(self, horizon_days: float) -> None:
        self.horizon_days = horizon_days

    def fit(self, frame: pd.DataFrame, y: np.ndarray | None = None) -> BGNBDBaseline:
        rfm = rfm_inputs(frame)
        self.model_ = BGNBD().fit(rfm["frequency"], rfm["recency"], rfm["age"])
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        rfm = rfm_inputs(frame)
        return self.model_.p_no_purchase(
            rfm["frequency"], rfm["recency"], rfm["age"], self.horizon_days
        )


class ClassPrior:
    """Tier change without a model: every customer gets the training class shares."""

    def fit(self, frame: pd.DataFrame, labels: np.ndarray, n_classes: int = 3) -> ClassPrior:
        counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
        self.shares_ = counts / counts.sum()
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return np.tile(self.shares_, (len(frame), 1))
