"""The models as MLflow pyfunc: frozen input encoding + LightGBM booster + calibrator.

Why one wrapper: serving, scoring and campaigns load ``models:/tier-ml-churn@champion``
and call ``predict(frame, params={"top_reasons": k})`` without importing training
code paths or knowing LightGBM. Everything needed to rebuild the model's inputs
from ``features.FEATURE_COLUMNS`` is frozen inside at fit time: the category
lists of the string columns and the BG/NBD parameters behind the derived
``bgnbd_*`` inputs.

Output contract (docs/training.md, helpers' contracts):

- churn: ``churn_probability`` (calibrated); tier change: ``p_down, p_same, p_up``
  (calibrated, rows sum to 1);
- churn also ``churn_probability_low`` / ``churn_probability_high``: the central 90 %
  range of the calibrated probability over bootstrap refits of the calibration map
  (training.calibration.CalibrationBands); models trained before the bands existed
  lack the two columns;
- with ``top_reasons = k > 0`` also ``reasons``: a JSON list of
  ``{"feature", "value", "contribution"}`` (TreeSHAP log-odds contributions of
  the booster, largest |contribution| first). For tier change the reasons
  explain the more likely of the two moves (down or up).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd

from training.bgnbd import BGNBDParams, p_alive, p_no_purchase
from training.calibration import BinaryCalibrator, CalibrationBands, MulticlassCalibrator
from training.rfm import rfm_inputs

BGNBD_COLUMNS = ("bgnbd_p_alive", "bgnbd_p_no_purchase")
CHURN_OUTPUT = ("churn_probability",)
CHURN_INTERVAL = ("churn_probability_low", "churn_probability_high")
TIER_CHANGE_OUTPUT = ("p_down", "p_same", "p_up")


@dataclass
class InputEncoder:
    """Features frame → the booster's numeric matrix, with everything frozen at fit time.

    String columns become category codes from the lists seen in training (unknown
    values → missing); the BG/NBD posteriors are added from frozen parameters.
    """

    feature_columns: list[str]
    categorical_columns: list[str]
    horizon_days: float
    categories: dict[str, list[str]] = field(default_factory=dict)
    bgnbd: BGNBDParams | None = None

    def fit(self, frame: pd.DataFrame, bgnbd: BGNBDParams | None) -> InputEncoder:
        for name in self.categorical_columns:
            values = frame[name].dropna().astype(str).unique().tolist()
            self.categories[name] = sorted(values)
        self.bgnbd = bgnbd
        return self

    @property
    def model_columns(self) -> list[str]:
        extra = list(BGNBD_COLUMNS) if self.bgnbd is not None else []
        return [*self.feature_columns, *extra]

    @property
    def categorical_indices(self) -> list[int]:
        return [self.feature_columns.index(name) for name in self.categorical_columns]

    def _category_index(self, name: str) -> pd.Index:
        """The training categories of ``name`` as an index (built once, then reused)."""
        cache = self.__dict__.setdefault("_indexes", {})
        if name not in cache:
            cache[name] = pd.Index(self.categories[name], dtype=object)
        return cache[name]

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        missing = [name for name in self.feature_columns if name not in frame.columns]
        if missing:
            raise ValueError(f"model input lacks feature columns {missing}")
        names = self.model_columns
        # One float block: the numeric columns in one conversion when their dtypes allow
        # it (the serving path scores one row at a time, so per-column work dominates).
        matrix = np.empty((len(frame), len(names)))
        numeric = [j for j, name in enumerate(self.feature_columns) if name not in self.categorical_columns]
        numeric_names = [self.feature_columns[j] for j in numeric]
        block = frame[numeric_names]
        if all(pd.api.types.is_numeric_dtype(dtype) for dtype in block.dtypes):
            matrix[:, numeric] = block.to_numpy(dtype=float, na_value=np.nan)
        else:
            for j, name in zip(numeric, numeric_names, strict=True):
                matrix[:, j] = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        for name in self.categorical_columns:
            codes = self._category_index(name).get_indexer(frame[name].astype(object)).astype(float)
            codes[codes < 0] = np.nan  # unknown or missing
            matrix[:, self.feature_columns.index(name)] = codes
        if self.bgnbd is not None:
            rfm = rfm_inputs(frame)
            args = (rfm["frequency"], rfm["recency"], rfm["age"])
            at = names.index("bgnbd_p_alive")
            matrix[:, at] = p_alive(self.bgnbd, *args)
            matrix[:, at + 1] = p_no_purchase(self.bgnbd, *args, self.horizon_days)
        return pd.DataFrame(matrix, columns=names, index=frame.index, copy=False)


def _top_reasons(
    contributions: np.ndarray, inputs: pd.DataFrame, encoder: InputEncoder, k: int
) -> list[str]:
    """One JSON list per row: the k inputs with the largest |contribution|."""
    names = encoder.model_columns
    shown = inputs.to_numpy(dtype=float)
    cats = {encoder.feature_columns.index(c): encoder.categories[c] for c in encoder.categorical_columns}
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :k]
    result = []
    for row, picks in enumerate(order):
        items = []
        for j in picks:
            value: Any = shown[row, j]
            if j in cats:
                value = cats[j][int(value)] if not math.isnan(value) else None
            elif math.isnan(value):
                value = None
            items.append(
                {
                    "feature": names[j],
                    "value": value,
                    "contribution": round(float(contributions[row, j]), 6),
                }
            )
        result.append(json.dumps(items))
    return result


def _top_k(params: dict[str, Any] | None) -> int:
    value = (params or {}).get("top_reasons", 0)
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        raise ValueError(f"top_reasons must be an integer, got {value!r}") from None


class _BoostedModel(mlflow.pyfunc.PythonModel):
    """Frozen encoder + booster + calibrator: what both models hold and how they run the booster."""

    def __init__(self, encoder: InputEncoder, booster: lgb.Booster, calibrator: Any) -> None:
        self.encoder = encoder
        self.booster = booster
        self.calibrator = calibrator

    def raw(self, inputs: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(inputs, num_iteration=self.booster.best_iteration or None)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        k = _top_k(params)
        inputs = self.encoder.transform(model_input)
        raw = self.raw(inputs)
        proba = self.calibrator.transform(raw)
        out = self._output(proba, model_input.index)
        self._extend(out, raw, proba)
        if k > 0:
            out["reasons"] = _top_reasons(self._explained(inputs, proba), inputs, self.encoder, k)
        return out

    def _output(self, proba: np.ndarray, index: pd.Index) -> pd.DataFrame:
        """The calibrated probabilities as the output columns."""
        raise NotImplementedError

    def _explained(self, inputs: pd.DataFrame, proba: np.ndarray) -> np.ndarray:
        """Per row, the contributions (rows, inputs) that the reasons report."""
        raise NotImplementedError

    def _extend(self, out: pd.DataFrame, raw: np.ndarray, proba: np.ndarray) -> None:
        """Extra output columns (the churn interval); none by default."""

    def _raw_contributions(self, inputs: pd.DataFrame) -> np.ndarray:
        """TreeSHAP contributions as the booster gives them (bias column(s) included)."""
        return np.asarray(
            self.booster.predict(
                inputs, pred_contrib=True, num_iteration=self.booster.best_iteration or None
            )
        )


class ChurnModel(_BoostedModel):
    """P(no placed order in the horizon), calibrated."""

    kind = "churn"
    model_kind = "lightgbm"

    def __init__(
        self,
        encoder: InputEncoder,
        booster: lgb.Booster,
        calibrator: BinaryCalibrator,
        bands: CalibrationBands | None = None,
    ) -> None:
        super().__init__(encoder, booster, calibrator)
        self.bands = bands

    def _extend(self, out: pd.DataFrame, raw: np.ndarray, proba: np.ndarray) -> None:
        bands = getattr(self, "bands", None)  # None in models pickled before the bands
        if bands is not None:
            out["churn_probability_low"], out["churn_probability_high"] = bands.transform(
                raw, proba
            )

    def _output(self, proba: np.ndarray, index: pd.Index) -> pd.DataFrame:
        return pd.DataFrame({"churn_probability": proba}, index=index)

    def _explained(self, inputs: pd.DataFrame, proba: np.ndarray) -> np.ndarray:
        return self.contributions(inputs)

    def contributions(self, inputs: pd.DataFrame) -> np.ndarray:
        """TreeSHAP contributions per input (log-odds), without the bias column."""
        return self._raw_contributions(inputs)[:, :-1]


class TierChangeModel(_BoostedModel):
    """P(down), P(same), P(up) of the tier at the horizon, calibrated."""

    kind = "tier_change"
    model_kind = "lightgbm"

    def __init__(
        self, encoder: InputEncoder, booster: lgb.Booster, calibrator: MulticlassCalibrator
    ) -> None:
        super().__init__(encoder, booster, calibrator)

    def _output(self, proba: np.ndarray, index: pd.Index) -> pd.DataFrame:
        return pd.DataFrame(proba, columns=list(TIER_CHANGE_OUTPUT), index=index)

    def _explained(self, inputs: pd.DataFrame, proba: np.ndarray) -> np.ndarray:
        """The reasons explain the more likely of the two moves (down or up)."""
        move = np.where(proba[:, 0] >= proba[:, 2], 0, 2)
        return self.contributions(inputs)[np.arange(len(move)), move]

    def contributions(self, inputs: pd.DataFrame) -> np.ndarray:
        """TreeSHAP contributions, shape (rows, classes, inputs), bias dropped."""
        n_inputs = len(self.encoder.model_columns)
        contrib = self._raw_contributions(inputs).reshape(len(inputs), 3, n_inputs + 1)
        return contrib[:, :, :-1]
