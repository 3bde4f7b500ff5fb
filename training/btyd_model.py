"""The small-shop models: BG/NBD behind the same pyfunc contract as the LightGBM models.

Why the same contract: serving, scoring, promote and campaigns load
``models:/tier-ml-churn@champion`` and call ``predict(features, params)``; they must
not care which kind of model answers. Input: a frame with ``features.FEATURE_COLUMNS``
(only the RFM columns and the tier arithmetic are read). Output:

- churn: ``churn_probability`` = BG/NBD P(no order in the horizon | history) at the
  fitted parameters, ``churn_probability_low`` / ``_high`` = the central
  ``interval_level`` range of the same probability over draws of the parameters
  from their (Laplace-approximated) posterior, and with ``top_reasons`` > 0
  ``reasons``: how much each of recency, repeat orders and tenure moves the log-odds
  against a typical customer of the shop (one input at a time set to the shop's median).
- tier change: ``p_down, p_same, p_up`` from the fixed tier arithmetic and the BG/NBD
  purchase-count distribution (see :class:`BTYDTierChangeModel`), with
  ``p_down_low/high`` and ``p_up_low/high`` over the same draws; ``reasons`` is an
  empty list (the arithmetic is the explanation: spend to the next tier).
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from scipy.special import betainc

from training.bgnbd import BGNBDParams, p_alive, p_no_purchase
from training.calibration import INTERVAL_LEVEL
from training.model import _top_k
from training.rfm import rfm_inputs
from training.small_shop import BTYD_FALLBACK

_FLOOR = 1e-4


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def interval(draws: np.ndarray, point: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` range of ``draws`` (draws x rows), widened to contain ``point``."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail], axis=0)
    return np.minimum(low, point), np.maximum(high, point)


class BTYDChurnModel(mlflow.pyfunc.PythonModel):
    """P(no placed order in the horizon) from BG/NBD, with a parameter-uncertainty interval."""

    kind = "churn"
    model_kind = BTYD_FALLBACK

    def __init__(
        self,
        params: BGNBDParams,
        draws: BGNBDParams,
        horizon_days: float,
        reference: dict[str, float],
        interval_level: float = INTERVAL_LEVEL,
    ) -> None:
        self.params = params
        self.draws = draws
        self.horizon_days = horizon_days
        #: the shop's median frequency, days since last order and age (the reasons' baseline)
        self.reference = reference
        self.interval_level = interval_level

    def churn(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point probability and interval bounds per row."""
        rfm = rfm_inputs(frame)
        args = (rfm["frequency"].to_numpy(), rfm["recency"].to_numpy(), rfm["age"].to_numpy())
        point = p_no_purchase(self.params, *args, self.horizon_days)
        sims = p_no_purchase(self.draws, *args, self.horizon_days)
        low, high = interval(np.atleast_2d(sims), point, self.interval_level)
        return point, low, high

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        k = _top_k(params)
        point, low, high = self.churn(model_input)
        out = pd.DataFrame(
            {"churn_probability": point, "churn_probability_low": low,
             "churn_probability_high": high},
            index=model_input.index,
        )  # fmt: skip
        if k > 0:
            out["reasons"] = self._reasons(model_input, point, k)
        return out

    def _reasons(self, frame: pd.DataFrame, point: np.ndarray, k: int) -> list[str]:
        """One input at a time set to the shop's median: the change in churn log-odds."""
        rfm = rfm_inputs(frame)
        freq, since, age = (rfm[c].to_numpy() for c in ("frequency", "days_since_last", "age"))
        ref = self.reference
        variants = {
            "recency_days": (freq, np.minimum(ref["days_since_last"], age), age),
            "orders_lifetime": (np.full_like(freq, ref["frequency"]), since, age),
            "tenure_days": (freq, since, np.maximum(ref["age"], since)),
        }
        shown = {"recency_days": since, "orders_lifetime": freq + 1, "tenure_days": age}
        base = _logit(point)
        contributions = {}
        for name, (f, s, a) in variants.items():
            typical = p_no_purchase(self.params, f, a - s, a, self.horizon_days)
            contributions[name] = base - _logit(typical)
        rows = []
        for i in range(len(frame)):
            items = sorted(
                (
                    {"feature": name, "value": float(shown[name][i]),
                     "contribution": round(float(values[i]), 6)}
                    for name, values in contributions.items()
                ),
                key=lambda item: -abs(item["contribution"]),
            )  # fmt: skip
            rows.append(json.dumps(items[:k]))
        return rows


def _column(frame: pd.DataFrame, name: str, fill: float) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").fillna(fill).to_numpy(dtype=float)


def _at_least(
    params: BGNBDParams,
    frequency: np.ndarray,
    recency: np.ndarray,
    age: np.ndarray,
    days: np.ndarray,
    orders: np.ndarray,
) -> np.ndarray:
    """P(alive and at least ``orders`` orders in the next ``days``) under BG/NBD.

    Alive, the rate's posterior is Gamma(r + x, α + T), so the count in ``days`` is
    negative binomial: P(N >= k) = I_{1-p}(k, r + x) with p = (α+T)/(α+T+days). Deaths
    during the window are ignored (they can only follow an order), which slightly
    overstates long runs of orders.
    """
    alive = p_alive(params, frequency, recency, age)
    n = params.r + frequency
    p = (params.alpha + age) / (params.alpha + age + np.maximum(days, 0.0))
    k = np.maximum(orders, 0.0)
    tail = np.where(k > 0, betainc(np.maximum(k, 1.0), n, np.clip(1.0 - p, 0.0, 1.0)), 1.0)
    return alive * tail


#: Posterior draws behind the tier-change intervals (each costs an incomplete beta per row).
TIER_CHANGE_DRAWS = 50


def _first(draws: BGNBDParams, n: int) -> BGNBDParams:
    return BGNBDParams(*(np.asarray(v)[:n] for v in (draws.r, draws.alpha, draws.a, draws.b)))


class BTYDTierChangeModel(mlflow.pyfunc.PythonModel):
    """P(down), P(same), P(up) at the horizon from the tier arithmetic and BG/NBD counts.

    - up: the qualifying spend still needed for the next tier, less the pending spend
      (it matures within the buffer), in the customer's average orders: k orders; P(up)
      = P(alive and at least k orders in the horizon).
    - down: only a customer in grace whose grace ends within the horizon can drop (with
      a lifetime window nothing else lowers a tier except refunds): they must place the
      orders covering the shortfall below their tier before the grace ends.

    Spend leaving a rolling window during the horizon is not modelled (the features do
    not say when it leaves): with a rolling-window policy P(down) is a lower bound.
    """

    kind = "tier_change"
    model_kind = BTYD_FALLBACK

    def __init__(
        self, params: BGNBDParams, draws: BGNBDParams, horizon_days: float,
        interval_level: float = INTERVAL_LEVEL,
    ) -> None:  # fmt: skip
        self.params = params
        self.draws = draws
        self.horizon_days = horizon_days
        self.interval_level = interval_level

    def chances(self, frame: pd.DataFrame, params: BGNBDParams) -> tuple[np.ndarray, np.ndarray]:
        """P(down) and P(up) (shape of ``params``' fields broadcast against the rows)."""
        rfm = rfm_inputs(frame)
        freq, rec, age = (rfm[c].to_numpy() for c in ("frequency", "recency", "age"))
        aov = np.maximum(_column(frame, "avg_order_value", 0.0), 1e-9)
        fallback_aov = np.where(aov > 1e-9, aov, np.nanmedian(aov) if len(aov) else 1.0)
        to_next = pd.to_numeric(frame["spend_to_next_tier"], errors="coerce").to_numpy(dtype=float)
        pending = _column(frame, "pending_spend", 0.0)
        need = np.maximum(np.nan_to_num(to_next, nan=0.0) - pending, 0.0)
        k_up = np.ceil(need / fallback_aov)
        up = _at_least(params, freq, rec, age, np.full_like(age, self.horizon_days), k_up)
        up = np.where(np.isnan(to_next), 0.0, up)  # the top tier has nowhere to go
        grace = _column(frame, "in_grace", 0.0) > 0
        grace_days = _column(frame, "days_until_grace_end", np.inf)
        at_risk = np.flatnonzero(grace & (grace_days <= self.horizon_days))
        down = np.zeros(np.broadcast_shapes(np.shape(params.r), age.shape))
        if len(at_risk):  # only customers whose grace ends within the horizon can drop
            shortfall = np.maximum(-_column(frame, "margin_above_threshold", 0.0), 0.0)[at_risk]
            kept = _at_least(params, freq[at_risk], rec[at_risk], age[at_risk],
                             grace_days[at_risk], np.ceil(shortfall / fallback_aov[at_risk]))  # fmt: skip
            down[..., at_risk] = 1.0 - kept
        return down, up

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        k = _top_k(params)
        down, up = (np.clip(v, _FLOOR, 1.0) for v in self.chances(model_input, self.params))
        scale = np.maximum((down + up) / (1.0 - _FLOOR), 1.0)
        down, up = down / scale, up / scale
        draws_down, draws_up = self.chances(model_input, _first(self.draws, TIER_CHANGE_DRAWS))
        down_low, down_high = interval(np.atleast_2d(draws_down), down, self.interval_level)
        up_low, up_high = interval(np.atleast_2d(draws_up), up, self.interval_level)
        out = pd.DataFrame(
            {
                "p_down": down, "p_same": 1.0 - down - up, "p_up": up,
                "p_down_low": down_low, "p_down_high": down_high,
                "p_up_low": up_low, "p_up_high": up_high,
            },
            index=model_input.index,
        )  # fmt: skip
        if k > 0:
            out["reasons"] = ["[]"] * len(out)
        return out
