"""The BG/NBD "buy till you die" model (Fader, Hardie & Lee 2005), fitted by maximum likelihood.

Why: it is the classic honest baseline for non-contractual churn. It sees only
each customer's repeat-order count ``x``, the age of their last order ``t_x``
and their own age ``T`` (days since the first order), and answers the two
questions a churn model answers: is the customer still alive, and will they
buy in the next ``h`` days. Its P(alive) is also a strong input for LightGBM.

Model: while alive a customer buys at rate ``λ ~ Gamma(r, α)``; after every
purchase they die with probability ``p ~ Beta(a, b)``. The four parameters are
fitted by maximising the closed-form likelihood with scipy (L-BFGS on log
parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln

_EPS = 1e-12


@dataclass(frozen=True)
class BGNBDParams:
    """Fitted population parameters (time unit: days)."""

    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


def _log_likelihood(
    log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, age: np.ndarray, weight: np.ndarray
) -> float:
    r, alpha, a, b = np.exp(log_params)
    common = (
        gammaln(r + x)
        - gammaln(r)
        + r * np.log(alpha)
        + gammaln(a + b)
        + gammaln(b + x)
        - gammaln(b)
        - gammaln(a + b + x)
    )
    survived = -(r + x) * np.log(alpha + age)
    repeat = x > 0
    died = np.full_like(survived, -np.inf)
    died[repeat] = (
        np.log(a)
        - np.log(b + x[repeat] - 1)
        - (r + x[repeat]) * np.log(alpha + t_x[repeat])
    )
    return float(np.sum(weight * (common + np.logaddexp(survived, died))))


def _check(x: np.ndarray, t_x: np.ndarray, age: np.ndarray) -> None:
    if not (len(x) == len(t_x) == len(age)):
        raise ValueError("frequency, recency and age must have the same length")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(age < t_x - 1e-9):
        raise ValueError("BG/NBD needs x >= 0 and 0 <= t_x <= T for every customer")


class BGNBD:
    """BG/NBD as a small estimator: ``fit(frequency, recency, age)`` then the posteriors.

    ``frequency`` = repeat orders (orders − 1), ``recency`` = days from the first
    to the last order, ``age`` = days from the first order to the cutoff.
    """

    def __init__(self, penalizer: float = 0.0, max_iter: int = 500) -> None:
        self.penalizer = penalizer
        self.max_iter = max_iter

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "params_")

    def fit(
        self,
        frequency: np.ndarray,
        recency: np.ndarray,
        age: np.ndarray,
        sample_weight: np.ndarray | None = None,
    ) -> BGNBD:
        x, t_x, big_t = (np.asarray(v, dtype=float) for v in (frequency, recency, age))
        _check(x, t_x, big_t)
        if len(x) == 0:
            raise ValueError("BG/NBD needs at least one customer")
        weight = np.ones_like(x) if sample_weight is None else np.asarray(sample_weight, float)
        # Customers identical in (x, t_x, T) contribute identical terms: fit on the unique rows.
        keys, inverse = np.unique(np.column_stack([x, t_x, big_t]), axis=0, return_inverse=True)
        counts = np.bincount(inverse.ravel(), weights=weight)
        ux, ut, ua = keys[:, 0], keys[:, 1], keys[:, 2]
        total = counts.sum()

        def objective(log_params: np.ndarray) -> float:
            penalty = self.penalizer * float(np.sum(np.exp(log_params) ** 2))
            return -_log_likelihood(log_params, ux, ut, ua, counts) / total + penalty

        start = np.log([1.0, max(float(np.mean(ua)), 1.0), 1.0, 1.0])
        result = minimize(
            objective,
            start,
            method="L-BFGS-B",
            bounds=[(-10.0, 10.0), (-10.0, 15.0), (-10.0, 10.0), (-10.0, 10.0)],
            options={"maxiter": self.max_iter},
        )
        r, alpha, a, b = (float(v) for v in np.exp(result.x))
        self.params_ = BGNBDParams(r=r, alpha=alpha, a=a, b=b)
        self.log_likelihood_ = -float(result.fun) * total
        self.converged_ = bool(result.success)
        return self

    def p_alive(self, frequency: np.ndarray, recency: np.ndarray, age: np.ndarray) -> np.ndarray:
        """P(the customer has not died by the cutoff | their history)."""
        return p_alive(self._params(), frequency, recency, age)

    def p_no_purchase(
        self, frequency: np.ndarray, recency: np.ndarray, age: np.ndarray, horizon_days: float
    ) -> np.ndarray:
        """P(no order in the next ``horizon_days`` | their history): the churn probability."""
        return p_no_purchase(self._params(), frequency, recency, age, horizon_days)

    def _params(self) -> BGNBDParams:
        if not self.__sklearn_is_fitted__():
            raise RuntimeError("BGNBD is not fitted; call fit() first")
        return self.params_


def p_alive(
    params: BGNBDParams, frequency: np.ndarray, recency: np.ndarray, age: np.ndarray
) -> np.ndarray:
    """P(alive) from fitted parameters (a plain function so models can freeze the parameters)."""
    x, t_x, big_t = (np.asarray(v, dtype=float) for v in (frequency, recency, age))
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_ratio = np.log(a) - np.log(np.maximum(b + x - 1, _EPS)) + (r + x) * (
        np.log(alpha + big_t) - np.log(alpha + t_x)
    )
    odds_dead = np.where(x > 0, np.exp(np.minimum(log_ratio, 700.0)), 0.0)
    return 1.0 / (1.0 + odds_dead)


def p_no_purchase(
    params: BGNBDParams,
    frequency: np.ndarray,
    recency: np.ndarray,
    age: np.ndarray,
    horizon_days: float,
) -> np.ndarray:
    """P(no order in ``(T, T + h]``): dead, or alive with a posterior rate that stays silent.

    Given alive at ``T`` the rate's posterior is ``Gamma(r + x, α + T)``, and an alive
    customer cannot die without buying, so P(silent | alive) = ((α+T)/(α+T+h))^(r+x).
    """
    x, big_t = np.asarray(frequency, dtype=float), np.asarray(age, dtype=float)
    alive = p_alive(params, frequency, recency, age)
    silent = np.exp(
        (params.r + x)
        * (np.log(params.alpha + big_t) - np.log(params.alpha + big_t + horizon_days))
    )
    return 1.0 - alive * (1.0 - silent)
