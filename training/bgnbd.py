"""The BG/NBD "buy till you die" model (Fader, Hardie & Lee 2005), fitted by maximum likelihood.

Why: it is the classic honest baseline for non-contractual churn. It sees only
each customer's repeat-order count ``x``, the age of their last order ``t_x``
and their own age ``T`` (days since the first order), and answers the two
questions a churn model answers: is the customer still alive, and will they
buy in the next ``h`` days. Its P(alive) is also a strong input for LightGBM.

Model: while alive a customer buys at rate ``λ ~ Gamma(r, α)``; after every
purchase they die with probability ``p ~ Beta(a, b)``. The four parameters are
fitted by maximising the closed-form likelihood with scipy (L-BFGS on log
parameters). For small shops (training.small_shop) a weak Gaussian prior on the
log parameters (``log_prior_sd``) keeps tiny data sets from running to the
bounds, and :meth:`BGNBD.bootstrap` refits on customers resampled with
replacement: the spread of the refits is the parameter uncertainty behind the
churn intervals of the small-shop model.
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

    def __init__(
        self, penalizer: float = 0.0, max_iter: int = 500, log_prior_sd: float | None = None
    ) -> None:
        self.penalizer = penalizer
        self.max_iter = max_iter
        #: sd of a Gaussian prior on log(r), log(alpha / mean age), log(a), log(b) (None: no prior)
        self.log_prior_sd = log_prior_sd

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
        self._rows = (keys[:, 0], keys[:, 1], keys[:, 2], counts)
        self.prior_center_ = np.log([1.0, max(float(np.average(big_t, weights=weight)), 1.0), 1.0, 1.0])
        result = self._maximise(counts, self.prior_center_)
        r, alpha, a, b = (float(v) for v in np.exp(result.x))
        self.params_ = BGNBDParams(r=r, alpha=alpha, a=a, b=b)
        self.log_params_ = result.x
        self.log_likelihood_ = _log_likelihood(result.x, *self._rows)
        self.converged_ = bool(result.success)
        return self

    def _maximise(self, counts: np.ndarray, start: np.ndarray):
        """The (penalised, prior-weighted) maximum of the likelihood with these row weights."""
        ux, ut, ua, _ = self._rows
        total = max(float(counts.sum()), 1.0)
        center, sd = self.prior_center_, self.log_prior_sd

        def objective(log_params: np.ndarray) -> float:
            penalty = self.penalizer * float(np.sum(np.exp(log_params) ** 2))
            if sd is not None:  # a prior is worth the same whatever the number of customers
                penalty += float(np.sum((log_params - center) ** 2)) / (2 * sd**2) / total
            return -_log_likelihood(log_params, ux, ut, ua, counts) / total + penalty

        return minimize(
            objective,
            start,
            method="L-BFGS-B",
            bounds=[(-10.0, 10.0), (-10.0, 15.0), (-10.0, 10.0), (-10.0, 10.0)],
            options={"maxiter": self.max_iter},
        )

    def laplace(self, n_draws: int = 200, seed: int = 0) -> BGNBDParams:
        """Draws from the Laplace approximation of the posterior (seeded), same shape as
        :meth:`bootstrap`: a Gaussian on the log parameters around the fit whose
        covariance is the inverse Hessian of the negative log posterior (finite
        differences; directions the data does not pin down are limited by the prior)."""
        if not self.__sklearn_is_fitted__():
            raise RuntimeError("BGNBD is not fitted; call fit() first")
        ux, ut, ua, counts = self._rows
        center, sd = self.prior_center_, self.log_prior_sd

        def negative(theta: np.ndarray) -> float:
            value = -_log_likelihood(theta, ux, ut, ua, counts)
            if sd is not None:
                value += float(np.sum((theta - center) ** 2)) / (2 * sd**2)
            return value

        hessian = _hessian(negative, self.log_params_)
        values, vectors = np.linalg.eigh((hessian + hessian.T) / 2)
        floor = 1.0 / (sd**2 if sd is not None else 100.0)
        covariance = (vectors / np.maximum(values, floor)) @ vectors.T
        rng = np.random.default_rng(seed)
        draws = rng.multivariate_normal(self.log_params_, covariance, size=n_draws)
        values = np.exp(np.clip(draws, -10.0, 15.0))
        return BGNBDParams(*(values[:, [j]] for j in range(4)))

    def bootstrap(self, n_draws: int = 200, seed: int = 0) -> BGNBDParams:
        """Refits on customers resampled with replacement (seeded), warm-started at the fit.

        Returns the draws as one :class:`BGNBDParams` whose fields are arrays of shape
        ``(n_draws, 1)``: the posterior functions broadcast them against customers.
        """
        if not self.__sklearn_is_fitted__():
            raise RuntimeError("BGNBD is not fitted; call fit() first")
        counts = self._rows[3]
        rng = np.random.default_rng(seed)
        n = round(float(counts.sum()))
        draws = np.empty((n_draws, 4))
        for i in range(n_draws):
            resampled = rng.multinomial(n, counts / counts.sum()).astype(float)
            draws[i] = self._maximise(resampled, self.log_params_).x
        values = np.exp(draws)
        return BGNBDParams(*(values[:, [j]] for j in range(4)))

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


def _hessian(function, at: np.ndarray, step: float = 1e-3) -> np.ndarray:
    """Central finite-difference Hessian of a scalar function."""
    n = len(at)
    hessian = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            total = 0.0
            for si, sj, sign in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
                point = at.copy()
                point[i] += si * step
                point[j] += sj * step
                total += sign * function(point)
            hessian[i, j] = hessian[j, i] = total / (4 * step * step)
    return hessian


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
