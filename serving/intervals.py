"""The uncertainty beside every prediction: interval bounds and the kind of model behind them.

Why a module of its own: the prediction endpoints, the at-risk list and the dashboard
show the same fields, read the same way from a scored row (``serving.models.predict_frame``
passes every output column of the pyfunc models through):

- ``churn_probability_low`` / ``_high``: the churn model's 90 % interval (LightGBM:
  calibration bootstrap; small-shop BTYD model: posterior of the BG/NBD parameters);
- ``p_keep_tier_low/high`` and ``p_reach_next_tier_low/high`` when the tier-change model
  gives ``p_down_low/high`` and ``p_up_low/high`` (the BTYD model does; LightGBM not);
- ``model_kinds``: ``lightgbm`` or ``btyd_fallback`` per model, from the ``tier_ml.model_kind``
  entry of the pyfunc model's metadata (models logged before it: ``lightgbm``).
"""

from __future__ import annotations

import math
from typing import Any

from serving.models import ModelSet

INTERVAL_LEVEL = 0.9
MODEL_KIND_KEY = "tier_ml.model_kind"
DEFAULT_KIND = "lightgbm"


def _number(row: dict[str, Any], name: str) -> float | None:
    return as_number(row.get(name))


def as_number(value: Any) -> float | None:
    """A model output cell as a float, or None (absent, not a number, NaN)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def interval_fields(row: dict[str, Any]) -> dict[str, float | None]:
    """A scored row's interval bounds under the API's names (None where the model gives none)."""
    down_low, down_high = _number(row, "p_down_low"), _number(row, "p_down_high")
    return {
        "churn_probability_low": _number(row, "churn_probability_low"),
        "churn_probability_high": _number(row, "churn_probability_high"),
        "p_keep_tier_low": None if down_high is None else 1.0 - down_high,
        "p_keep_tier_high": None if down_low is None else 1.0 - down_low,
        "p_reach_next_tier_low": _number(row, "p_up_low"),
        "p_reach_next_tier_high": _number(row, "p_up_high"),
    }


def model_kind(loaded: Any) -> str:
    """``lightgbm`` or ``btyd_fallback`` for one loaded model."""
    pyfunc = getattr(loaded, "model", None)
    meta = getattr(getattr(pyfunc, "metadata", None), "metadata", None) or {}
    return str(meta.get(MODEL_KIND_KEY, DEFAULT_KIND))


def model_kinds(models: ModelSet) -> dict[str, str | None]:
    """The kind of each serving model (None for a model that is not loaded)."""
    return {
        kind: (model_kind(m) if (m := models.models.get(kind)) else None)
        for kind in ("churn", "tier_change")
    }
