"""The best churn probability the order log allows: a forward filter over the simulator's chain.

Why: :func:`tier_ml.simulate.oracle_churn_probability` knows each customer's latent
state at the cutoff (healthy, declining since when, churned). Churn is silent, so no
model that reads the order log can know that state, and the oracle's ROC AUC may be
out of reach. This module computes the Bayes-optimal probability of no order in
``(t, t + h]`` given the *observed* placed orders up to ``t`` (their times and,
optionally, their values) and the customer's latent *parameters* (rate, basket,
hazards), but not the latent state. Ranking by it maximises the ROC curve among
all scores built from that information, so its AUC bounds what any churn model
can reach on simulated data (knowing the parameters only raises the bound). With
population parameters in place of the true ones (a truth frame with the columns
replaced) it is the same filter with less knowledge.

How (the generative model is in :mod:`tier_ml.simulate`): the day-level chain
healthy → declining (started on day ``s``) → churned is filtered exactly on the day
grid. Up to the last observed order (day ``L``) the joint weights of "healthy" and
"declining since ``s``" have closed forms (the decline factor is ``exp(-(e + ½)/κ)``,
so per-order terms are sums over orders, done as sparse products); nobody is churned
on a day they ordered. The silent stretch ``(last order, t]`` is integrated by a
backward recursion on a log-spaced grid of rates (interpolated, like the oracle's
own decline table), which gives the likelihood of the whole history. The posterior
state at the cutoff then goes through the oracle's horizon integration
(``_no_order_healthy`` / ``_no_order_declining``). Pure numpy, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd
from scipy import sparse

from tier_ml.simulate import (
    CHANNEL_BASKET,
    CHANNELS,
    CURRENCIES,
    MICROS_PER_SECOND,
    ORDER_VALUE_SPREAD,
    SECONDS_PER_DAY,
    SimulationConfig,
    _check_observed,
    _day_share_before,
    _instant,
    _mix_mean,
    _no_order_declining,
    _no_order_healthy,
    _window_intensity,
    day_seasonality,
)

DAY_US = SECONDS_PER_DAY * MICROS_PER_SECOND
BLOCK = 8192  # customers filtered together (bounds memory: a few (block × days) matrices)
RATE_GRID = 257  # rates of the backward table (log-spaced, interpolated like the oracle's)
SCALED_GRID = 513  # decline-scaled rates of the horizon table
STATE_COLUMNS = ("p_healthy", "p_declining", "p_churned")

Instant = datetime | date | str | pd.Timestamp


@dataclass(frozen=True)
class _Orders:
    """Observed repeat orders (the acquisition order excluded) of the filtered customers."""

    owner: np.ndarray  # row in the filtered customers
    day: np.ndarray  # day index from the origin
    residual: np.ndarray  # log(value / (basket × channel factor)) + σ²/2 ~ N(log basket factor, σ²)


@dataclass(frozen=True)
class _Customers:
    """Parameters and observation summary of the customers acquired by the cutoff."""

    rate: np.ndarray
    hazard: np.ndarray
    acquired: np.ndarray  # acquisition day index
    last_day: np.ndarray  # day of the last observed order (the acquisition day if none)
    last_second: np.ndarray  # its seconds after midnight
    chance: float
    delta: float
    decay: float


def placed_orders(events: pd.DataFrame, until: pd.Timestamp) -> pd.DataFrame:
    """Valid placed orders at or before ``until``: what a model reads from the log.

    Drops what ``tier_ml.events.validate`` rejects in simulated files (missing customer
    or time, non-positive amount, unknown currency) and replayed or duplicated orders
    (first occurrence of an event id and of an order id wins).
    """
    placed = events[events["event_type"].astype(str) == "placed"]
    placed = placed[
        placed["customer_id"].notna()
        & placed["occurred_at"].notna()
        & (placed["amount"] > 0)
        & placed["currency"].astype(str).isin(CURRENCIES[:3])  # JPY only in malformed rows
    ]
    placed = placed[~placed["event_id"].duplicated()]
    placed = placed.sort_values("occurred_at", kind="stable")
    placed = placed[~placed["order_id"].duplicated()]
    return placed[placed["occurred_at"] <= until]


def filtered_churn_probability(
    truth: pd.DataFrame,
    events: pd.DataFrame,
    cutoff: Instant,
    horizon_days: float,
    use_values: bool = True,
    fx_rates: dict[str, float] | None = None,
) -> pd.Series:
    """P(no order in ``(cutoff, cutoff + horizon]`` | observed orders up to the cutoff, parameters).

    ``truth`` gives the parameters (the simulator's truth, or a copy with population
    values); its latent state columns are not read. ``events`` are canonical events
    (see :func:`placed_orders`). ``use_values`` lets order values inform the filter
    (baskets shrink in a decline); ``fx_rates`` are the simulation's (default config's
    if None). Customers not yet acquired get NaN, like the oracle.
    """
    result = _filter(truth, events, cutoff, horizon_days, use_values, fx_rates)
    return result["filtered_churn_probability"]


def filtered_state_probabilities(
    truth: pd.DataFrame,
    events: pd.DataFrame,
    cutoff: Instant,
    use_values: bool = True,
    fx_rates: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Posterior P(healthy), P(declining), P(churned) at the cutoff, per customer."""
    result = _filter(truth, events, cutoff, None, use_values, fx_rates)
    return result[list(STATE_COLUMNS)]


def prior_churn_probability(
    truth: pd.DataFrame,
    events: pd.DataFrame,
    cutoff: Instant,
    horizon_days: float,
    config: SimulationConfig,
    nodes: int = 32,
) -> pd.Series:
    """The filter with each customer's order rate unknown: integrated over the population's
    gamma distribution of rates (``config``), weighted by how well each rate explains the
    customer's order times. Hazards and decline parameters at population values, order
    values unused (their scale is the customer's unknown basket).

    Why: this is what a model can learn from the order log (the population, not each
    customer's parameters); unlike :func:`filtered_churn_probability` it is not a bound.
    """
    from scipy import stats

    shape = config.rate_shape
    scale = config.orders_per_year / 365.25 / shape
    prior = stats.gamma(shape, scale=scale)
    rates = np.geomspace(prior.ppf(1e-5), prior.ppf(1 - 1e-7), nodes)
    log_step = np.gradient(np.log(rates))
    log_weight = prior.logpdf(rates) + np.log(rates * log_step)
    base = population_truth(truth)
    base["churn_hazard"] = 1 / config.healthy_days
    scores, evidence = [], []
    for rate in rates:
        base["order_rate"] = rate
        result = _filter(base, events, cutoff, horizon_days, False, config.fx_rates)
        scores.append(result["filtered_churn_probability"].to_numpy())
        evidence.append(result["log_evidence"].to_numpy())
    log_posterior = np.array(evidence) + log_weight[:, None]
    probability = np.full(len(truth), np.nan)
    known = np.isfinite(log_posterior).all(axis=0)
    posterior = np.exp(log_posterior[:, known] - log_posterior[:, known].max(axis=0))
    probability[known] = (posterior * np.array(scores)[:, known]).sum(axis=0) / posterior.sum(
        axis=0
    )
    return pd.Series(
        probability, index=pd.Index(truth["customer_id"]), name="prior_churn_probability"
    )


def population_truth(truth: pd.DataFrame) -> pd.DataFrame:
    """The truth with every customer's rate, basket and hazard replaced by the population mean:
    the filter then knows only what is common to all customers."""
    out = truth.copy()
    for name in ("order_rate", "mean_basket", "churn_hazard"):
        out[name] = float(truth[name].mean())
    return out


# --- preparing the inputs ------------------------------------------------------------------------


def _filter(
    truth: pd.DataFrame,
    events: pd.DataFrame,
    cutoff: Instant,
    horizon_days: float | None,
    use_values: bool,
    fx_rates: dict[str, float] | None,
) -> pd.DataFrame:
    instant = _instant(cutoff)
    _check_observed(truth, instant)
    if horizon_days is not None and not horizon_days > 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    index = pd.Index(truth["customer_id"])
    columns = [*STATE_COLUMNS, "log_evidence", "filtered_churn_probability"]
    out = pd.DataFrame(np.nan, index=index, columns=columns)
    acquired = (truth["acquired_at"] <= instant).to_numpy()
    if not acquired.any():
        return out
    rows = np.flatnonzero(acquired)
    part = truth.iloc[rows]
    origin = part["acquired_at"].min().floor("D")
    orders = _observed_orders(part, events, instant, origin, fx_rates)
    groups = part[["decline_chance", "decline_end_hazard", "decline_decay_days"]].to_numpy()
    acquired_us = _micros(part["acquired_at"])
    for params in np.unique(groups, axis=0):
        members = np.flatnonzero((groups == params).all(axis=1))
        # blocks of customers acquired close together: shorter ranges of decline starts
        members = members[np.argsort(acquired_us[members], kind="stable")]
        for begin in range(0, len(members), BLOCK):
            block = members[begin : begin + BLOCK]
            customers, block_orders = _block(part, orders, block, origin, params)
            states, probability = _filter_block(
                customers, block_orders, instant, origin, horizon_days, use_values
            )
            out.iloc[rows[block], :4] = states
            out.iloc[rows[block], 4] = probability
    return out


def _observed_orders(
    part: pd.DataFrame,
    events: pd.DataFrame,
    instant: pd.Timestamp,
    origin: pd.Timestamp,
    fx_rates: dict[str, float] | None,
) -> pd.DataFrame:
    """Repeat orders (time, value residual, owner row in ``part``) up to the cutoff."""
    placed = placed_orders(events, instant)
    owner = pd.Index(part["customer_id"]).get_indexer(placed["customer_id"])
    placed = placed[owner >= 0].assign(owner=owner[owner >= 0])
    us = _micros(placed["occurred_at"])
    origin_us = origin.value // 1000
    since = us - origin_us
    rates = fx_rates if fx_rates is not None else SimulationConfig().fx_rates
    fx = placed["currency"].astype(str).map({"USD": 1.0, **rates}).to_numpy(dtype=float)
    channel_factor = CHANNEL_BASKET / _mix_mean(CHANNEL_BASKET)
    channel = pd.Index(CHANNELS).get_indexer(placed["channel"].astype(str))
    factor = np.where(channel >= 0, channel_factor[np.maximum(channel, 0)], 1.0)
    basket = part["mean_basket"].to_numpy()[placed["owner"].to_numpy()]
    value = placed["amount"].to_numpy(dtype=float) * fx
    residual = np.log(value / (basket * factor)) + ORDER_VALUE_SPREAD**2 / 2
    frame = pd.DataFrame(
        {
            "owner": placed["owner"].to_numpy(),
            "us": since,
            "residual": residual,
        }
    ).sort_values(["owner", "us"], kind="stable")
    acquired_us = _micros(part["acquired_at"])
    first = ~frame["owner"].duplicated()
    # the first placed order is the acquisition order (it tells nothing about the state)
    frame = frame[
        ~first.to_numpy() | (frame["us"].to_numpy() > acquired_us[frame["owner"]] - origin_us)
    ]
    return frame


def _micros(instants: pd.Series) -> np.ndarray:
    """UTC instants as epoch microseconds."""
    return instants.dt.tz_convert("UTC").dt.as_unit("us").astype("int64").to_numpy()


def _block(
    part: pd.DataFrame,
    orders: pd.DataFrame,
    block: np.ndarray,
    origin: pd.Timestamp,
    params: np.ndarray,
) -> tuple[_Customers, _Orders]:
    rows = part.iloc[block]
    acquired_us = _micros(rows["acquired_at"]) - origin.value // 1000
    position = np.full(len(part), -1)
    position[block] = np.arange(len(block))
    mine = orders[position[orders["owner"].to_numpy()] >= 0]
    owner = position[mine["owner"].to_numpy()]
    us = mine["us"].to_numpy()
    last_us = acquired_us.copy()
    np.maximum.at(last_us, owner, us)
    customers = _Customers(
        rate=rows["order_rate"].to_numpy(dtype=float),
        hazard=rows["churn_hazard"].to_numpy(dtype=float),
        acquired=acquired_us // DAY_US,
        last_day=last_us // DAY_US,
        last_second=(last_us % DAY_US) / MICROS_PER_SECOND,
        chance=float(params[0]),
        delta=float(params[1]),
        decay=float(params[2]),
    )
    block_orders = _Orders(
        owner=owner,
        day=us // DAY_US,
        residual=mine["residual"].to_numpy(),
    )
    return customers, block_orders


# --- the filter -------------------------------------------------------------------------------


def _filter_block(
    customers: _Customers,
    orders: _Orders,
    instant: pd.Timestamp,
    origin: pd.Timestamp,
    horizon_days: float | None,
    use_values: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior state at the cutoff with the log evidence (n × 4), and P(no order in the
    horizon) (n)."""
    c = (instant.floor("D") - origin).days
    cutoff_second = (instant - instant.floor("D")).total_seconds()
    days = np.arange(c + 1)
    season = day_seasonality(np.datetime64(origin.date(), "D") + days)
    weight = season.copy()  # exposure of each day up to the cutoff instant
    weight[c] *= float(_day_share_before(np.array([cutoff_second]))[0])
    decay, delta, chance = customers.decay, customers.delta, customers.chance
    fading = np.exp(-(days + 0.5) / decay)  # decline factor by elapsed day
    cumulative = np.concatenate([[0.0], np.cumsum(weight)])
    decline_exposure = _decline_exposure(weight, fading)  # [s, j]: days s..j-1 of a decline

    lam, eta = customers.rate, customers.hazard
    a, last = customers.acquired, customers.last_day
    n = len(lam)
    repeat = last > a
    share_last = _day_share_before(customers.last_second)
    before = np.where(repeat, season[last] * share_last, 0.0)  # observed part of day L
    end_share = np.where(last == c, _day_share_before(np.full(n, cutoff_second)), 1.0)
    after = season[last] * np.maximum(end_share - share_last, 0.0)  # silent part of day L

    # forward: log weights of "healthy on day L" and "declining since s on day L"
    leave = np.log(-np.expm1(-eta))
    log_healthy = -eta * (last - a) - lam * np.where(
        repeat, cumulative[last] - cumulative[np.minimum(a + 1, last)] + before, 0.0
    )
    first = min(int(a.min()) + 1, c)  # no decline starts before the block's first acquisition
    s = np.arange(first, c + 1)[None, :]
    valid = (s > a[:, None]) & (s <= last[:, None])
    elapsed = np.clip(last[:, None] - s, 0, c)
    with np.errstate(divide="ignore"):
        log_chance = np.log(chance)
    log_decline = (
        -eta[:, None] * (s - 1 - a[:, None])
        + leave[:, None]
        + log_chance
        - delta * elapsed
        - lam[:, None] * (cumulative[s] - cumulative[a + 1][:, None])
        - lam[:, None] * (decline_exposure[s, last[:, None]] + before[:, None] * fading[elapsed])
        + _order_terms(orders, n, c, first, decay, use_values)
    )
    log_decline = np.where(valid, log_decline, -np.inf)
    top = np.maximum(log_healthy, log_decline.max(axis=1, initial=-np.inf))
    healthy = np.exp(log_healthy - top)
    declining = np.exp(log_decline - top[:, None])

    # backward: P(no order in (last order, cutoff] | state on day L)
    table = _silence_table(lam, weight, fading, delta, last, first)
    quiet_healthy, quiet_decline = _silence(table, customers, weight, after, repeat, first)
    evidence = healthy * quiet_healthy + (declining * quiet_decline).sum(axis=1)

    # the posterior state on the cutoff day (the chain carried from day L through the silence)
    healthy_exposure = np.where(repeat, after, 0.0) + cumulative[c + 1] - cumulative[last + 1]
    healthy_c = healthy * np.exp(-eta * (c - last) - lam * healthy_exposure)
    kept = declining * np.exp(
        -delta * (c - last)[:, None]
        - lam[:, None]
        * (
            after[:, None] * fading[elapsed]
            + decline_exposure[s, c + 1]
            - decline_exposure[s, last[:, None] + 1]
        )
    )
    born = s > last[:, None]
    healthy_until = (
        np.where(repeat, after, 0.0)[:, None] + cumulative[s] - cumulative[last + 1][:, None]
    )
    new = (
        healthy[:, None]
        * -np.expm1(-eta)[:, None]
        * chance
        * np.exp(
            -eta[:, None] * (s - 1 - last[:, None])
            - lam[:, None] * healthy_until
            - delta * (c - s)
            - lam[:, None] * decline_exposure[s, c + 1]
        )
    )
    declining_c = np.where(born, new, kept)
    p_healthy = healthy_c / evidence
    p_decline = declining_c / evidence[:, None]
    p_declining = p_decline.sum(axis=1)
    p_churned = np.clip(1.0 - p_healthy - p_declining, 0.0, 1.0)
    # log P(observed orders | parameters) up to terms that do not depend on them
    repeats = np.bincount(orders.owner, minlength=n)
    log_evidence = top + np.log(evidence) + repeats * np.log(lam)
    states = np.column_stack([p_healthy, p_declining, p_churned, log_evidence])
    if horizon_days is None:
        return states, np.full(n, np.nan)

    window = _window_intensity(instant, float(horizon_days))
    quiet_h = _no_order_healthy(lam, eta, a == c, window, chance, delta, decay)
    log_scaled = np.log(lam)[:, None] - (c - s) / decay  # rate × decline factor so far
    quiet_d = _decline_quiet(log_scaled, window, delta, decay)
    probability = p_churned + p_healthy * quiet_h + (p_decline * quiet_d).sum(axis=1)
    return states, np.clip(probability, 0.0, 1.0)


def _decline_exposure(weight: np.ndarray, fading: np.ndarray) -> np.ndarray:
    """``[s, j]``: the exposure of days ``s .. j - 1`` of a decline that started on day ``s``."""
    days = len(weight)
    gap = np.arange(days)[None, :] - np.arange(days)[:, None]  # d - s
    terms = np.where(gap >= 0, weight[None, :] * fading[np.clip(gap, 0, days - 1)], 0.0)
    return np.concatenate([np.zeros((days, 1)), np.cumsum(terms, axis=1)], axis=1)


def _order_terms(
    orders: _Orders, n: int, c: int, first: int, decay: float, use_values: bool
) -> np.ndarray:
    """``[i, s - first]``: log likelihood ratio (declining since s vs healthy) of customer i's
    orders."""
    days = c + 1
    gap = np.arange(days)[:, None] - np.arange(first, days)[None, :]  # [d, s] = d - s
    ahead = gap >= 0
    gap = np.clip(gap, 0, days - 1)
    log_fading = -(gap + 0.5) / decay
    counts = sparse.csr_matrix(
        (np.ones(len(orders.owner)), (orders.owner, orders.day)), shape=(n, days)
    )
    if not use_values:
        return np.asarray(counts @ np.where(ahead, log_fading, 0.0))
    shrink = np.log(0.5 + 0.5 * np.exp(log_fading))  # log basket factor
    variance = ORDER_VALUE_SPREAD**2
    residuals = sparse.csr_matrix((orders.residual, (orders.owner, orders.day)), shape=(n, days))
    per_order = np.where(ahead, log_fading - shrink**2 / (2 * variance), 0.0)
    per_residual = np.where(ahead, shrink / variance, 0.0)
    return np.asarray(counts @ per_order) + np.asarray(residuals @ per_residual)


@dataclass(frozen=True)
class _SilenceTable:
    grid: np.ndarray  # log-spaced rates
    fresh: np.ndarray  # [g, j]: P(no order on days j.. | a decline starts on day j), j up to c + 1
    after_last: np.ndarray  # [i, s - first]: P(no order on days L+1.. | declining since s, L+1)


def _silence_table(
    lam: np.ndarray,
    weight: np.ndarray,
    fading: np.ndarray,
    delta: float,
    last: np.ndarray,
    first: int,
) -> _SilenceTable:
    """The backward recursion of a decline over the silent days up to the cutoff, on a rate
    grid: ``Q(s, j) = exp(-λ w_j f(j - s)) (e^-δ Q(s, j + 1) + 1 - e^-δ)``."""
    days = len(weight)
    low, high = float(lam.min()), float(lam.max())
    grid = np.geomspace(low, high, RATE_GRID) if high > low else np.array([low, low * 1.0001])
    quiet = np.ones((len(grid), days + 1))
    fresh = np.ones((len(grid), days + 1))
    after_last = np.ones((len(lam), days - first))
    stay = np.exp(-delta)
    position, fraction = _grid_position(grid, lam)
    wanted = last + 1
    for j in range(days - 1, int(wanted.min()) - 1, -1):
        gap = j - np.arange(first, j + 1)
        quiet[:, first : j + 1] = np.exp(-np.outer(grid, weight[j] * fading[gap])) * (
            stay * quiet[:, first : j + 1] + (1 - stay)
        )
        fresh[:, j] = quiet[:, j]
        rows = np.flatnonzero(wanted == j)
        if len(rows):
            log_quiet = np.log(np.maximum(quiet[:, first : j + 1], 1e-300))
            after_last[rows, : j + 1 - first] = _interpolate(
                log_quiet, position[rows], fraction[rows]
            )
    return _SilenceTable(grid, fresh, after_last)


def _grid_position(grid: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval and linear fraction of values on a log-spaced grid (clipped to its ends)."""
    step = np.log(grid[1] / grid[0])
    index = np.floor((np.log(np.maximum(values, grid[0])) - np.log(grid[0])) / step)
    index = np.clip(index.astype(np.int64), 0, len(grid) - 2)
    fraction = np.clip((values - grid[index]) / (grid[index + 1] - grid[index]), 0, 1)
    return index, fraction


def _interpolate(log_table: np.ndarray, index: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Rows of a log no-order table at rates between grid points: log-linear in the rate
    (exact for a single exponential)."""
    low = log_table[index]
    return np.exp(low + (log_table[index + 1] - low) * fraction[:, None])


def _silence(
    table: _SilenceTable,
    customers: _Customers,
    weight: np.ndarray,
    after: np.ndarray,
    repeat: np.ndarray,
    first: int,
) -> tuple[np.ndarray, np.ndarray]:
    """P(no order in (last order, cutoff] | healthy on day L), and | declining since s on day L."""
    lam, eta, last = customers.rate, customers.hazard, customers.last_day
    delta, chance, decay = customers.delta, customers.chance, customers.decay
    days = len(weight)
    position, fraction = _grid_position(table.grid, lam)
    fresh = _interpolate(np.log(table.fresh), position, fraction)  # [i, j]
    healthy_quiet = np.ones(len(lam))  # R(j), from the end backwards
    at_next = np.ones(len(lam))
    stay = np.exp(-eta)
    for j in range(days - 1, int(last.min()), -1):
        healthy_quiet = np.exp(-lam * weight[j]) * (
            stay * healthy_quiet + (1 - stay) * ((1 - chance) + chance * fresh[:, j + 1])
        )
        rows = last + 1 == j
        at_next[rows] = healthy_quiet[rows]
    fresh_next = fresh[np.arange(len(lam)), last + 1]
    quiet_healthy = np.exp(-lam * np.where(repeat, after, 0.0)) * (
        stay * at_next + (1 - stay) * ((1 - chance) + chance * fresh_next)
    )
    s = np.arange(first, days)[None, :]
    elapsed = np.clip(last[:, None] - s, 0, days - 1)
    fading = np.exp(-(elapsed + 0.5) / decay)
    keep = np.exp(-delta)
    quiet_decline = np.exp(-lam[:, None] * after[:, None] * fading) * (
        keep * table.after_last + (1 - keep)
    )
    return quiet_healthy, quiet_decline


def _decline_quiet(
    log_scaled: np.ndarray, window: np.ndarray, delta: float, decay: float
) -> np.ndarray:
    """The oracle's P(no order in the window | declining) for rates already scaled by the
    decline so far (``log λ - elapsed/κ``), on a log grid of scaled rates, interpolated
    linearly in the log rate."""
    if log_scaled.size == 0:
        return np.ones(log_scaled.shape)
    low = max(float(log_scaled.min()), np.log(1e-12))
    high = max(float(log_scaled.max()), low + 1e-4)
    grid = np.linspace(low, high, SCALED_GRID)
    values = _no_order_declining(np.exp(grid), np.zeros(len(grid)), window, delta, decay)
    log_values = np.log(np.maximum(values, 1e-300))
    return np.exp(np.interp(log_scaled, grid, log_values))
