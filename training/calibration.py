"""Probability calibration fitted on held-out cutoffs.

Why: the boosters are trained with class weights (so rare churners and tier
moves are learned), which bends their raw probabilities. A small map fitted on
cutoffs the booster never trained on turns raw scores back into frequencies a
campaign can budget with. Platt scaling (a logistic on the raw log-odds) keeps
the ranking, so AUC is unchanged; isotonic is available for large data sets.
For the multiclass model, the same idea: a multinomial logistic on the raw
log-probabilities ("vector scaling").

:class:`CalibrationBands` gives every calibrated churn probability an interval: the
calibrator refitted on bootstrap resamples of the held-out (raw score, label) pairs,
frozen as lookup tables so serving pays a few vectorised interpolations.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

METHODS = ("platt", "isotonic")
_CLIP = 1e-6
#: Nominal coverage of every churn interval (both model kinds).
INTERVAL_LEVEL = 0.90


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


class CalibrationBands:
    """The central ``level`` range of the calibration map over bootstrap refits.

    Why: the booster's ranking is fixed at serving time, but the map from its raw score
    to a probability is estimated from the held-out cutoffs, and with few churners at a
    score the estimate is uncertain; the base rate also moves from month to month (the
    season), and a prediction is for a month the calibration never saw. Resampling the
    cutoffs, then the (raw, label) pairs within them, and refitting the same calibrator
    measures both. Each refit is frozen as a monotone table (isotonic:
    its thresholds; Platt: the map sampled on a grid of raw scores), so a prediction
    costs ``n_draws`` interpolations of a short table. This is calibration uncertainty
    only; the booster itself is taken as given (docs/training.md).
    """

    def __init__(self, method: str = "isotonic", n_draws: int = 100,
                 level: float = INTERVAL_LEVEL, seed: int = 0) -> None:  # fmt: skip
        self.method = method
        self.n_draws = n_draws
        self.level = level
        self.seed = seed

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "tables_")

    def fit(
        self, raw: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None
    ) -> CalibrationBands:
        """``groups`` (e.g. the cutoff of each row): resample whole groups first, then rows
        within them, so month-to-month shifts of the base rate count as uncertainty."""
        raw, y = np.asarray(raw, dtype=float), np.asarray(y, dtype=int)
        rng = np.random.default_rng(self.seed)
        grid = np.unique(np.quantile(raw, np.linspace(0.0, 1.0, 101)))
        members = None
        if groups is not None:
            _, codes = np.unique(np.asarray(groups), return_inverse=True)
            members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
        tables = []
        while len(tables) < self.n_draws:
            if members is not None and len(members) > 1:
                chosen = rng.integers(0, len(members), len(members))
                rows = np.concatenate([members[g] for g in chosen])
                pick = rows[rng.integers(0, len(rows), len(rows))]
            else:
                pick = rng.integers(0, len(raw), len(raw))
            if len(np.unique(y[pick])) < 2:
                continue
            calibrator = BinaryCalibrator(self.method).fit(raw[pick], y[pick])
            if self.method == "isotonic":
                xs, ys = calibrator.mapper_.X_thresholds_, calibrator.mapper_.y_thresholds_
            else:
                xs, ys = grid, calibrator.transform(grid)
            tables.append((np.asarray(xs, dtype=float), np.clip(np.asarray(ys, float), 0.0, 1.0)))
        self.tables_ = tables
        return self

    def draws(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probability of every row under every refit: (n_draws, rows)."""
        raw = np.asarray(raw, dtype=float)
        return np.vstack([np.interp(raw, xs, ys) for xs, ys in self.tables_])

    def transform(self, raw: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds per row, widened to contain ``point``."""
        tail = (1.0 - self.level) / 2.0
        low, high = np.quantile(self.draws(raw), [tail, 1.0 - tail], axis=0)
        return np.minimum(low, point), np.maximum(high, point)
