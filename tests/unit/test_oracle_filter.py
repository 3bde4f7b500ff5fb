"""The observable-information oracle: a correct filter of the simulator's chain, and a bound.

The reference is a Monte Carlo estimate by likelihood weighting: latent paths drawn
the way the simulator draws them (healthy days, decline or not, decline length),
each weighted by the likelihood of the customer's observed orders, carried into the
horizon. It shares no code with the filter's closed forms and backward tables.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tier_ml.oracle_filter import (
    filtered_churn_probability,
    filtered_state_probabilities,
    placed_orders,
    population_truth,
    prior_churn_probability,
)
from tier_ml.simulate import (
    CHANNEL_BASKET,
    CHANNEL_MIX,
    CHANNELS,
    ORDER_VALUE_SPREAD,
    SECONDS_PER_DAY,
    Simulation,
    SimulationConfig,
    _day_share_before,
    _window_intensity,
    day_seasonality,
    oracle_churn_probability,
    simulate,
)

CUTOFF = pd.Timestamp("2025-06-20 13:30", tz="UTC")  # mid-day: partial days on both sides
HORIZON = 60.0


@pytest.fixture(scope="module")
def sim() -> Simulation:
    config = SimulationConfig(
        customers=1500, seed=3, start=date(2025, 1, 1), end=date(2025, 12, 31), healthy_days=300
    )
    return simulate(config)


@pytest.fixture(scope="module")
def labelled(sim: Simulation) -> pd.DataFrame:
    """Customers acquired by the cutoff, the filter's and the oracle's scores, the label."""
    truth = sim.truth
    ids = truth.loc[truth["acquired_at"] <= CUTOFF, "customer_id"]
    orders = placed_orders(sim.events, CUTOFF + pd.Timedelta(days=HORIZON))
    later = orders.loc[orders["occurred_at"] > CUTOFF, "customer_id"]
    frame = pd.DataFrame({"customer_id": ids.to_numpy()})
    frame["churned"] = (~frame["customer_id"].isin(later)).astype(int)
    for name, scores in (
        ("filtered", filtered_churn_probability(truth, sim.events, CUTOFF, HORIZON)),
        ("oracle", oracle_churn_probability(truth, CUTOFF, HORIZON)),
        (
            "population",
            filtered_churn_probability(population_truth(truth), sim.events, CUTOFF, HORIZON),
        ),
    ):
        frame[name] = scores.reindex(frame["customer_id"]).to_numpy()
    return frame


# --- the Monte Carlo reference -------------------------------------------------------------------


def monte_carlo(sim: Simulation, customer: str, paths: int, seed: int) -> dict[str, float]:
    """P(no order in the horizon) and the state at the cutoff given the observed orders,
    by likelihood weighting over latent paths drawn like the simulator draws them."""
    config, truth = sim.config, sim.truth.set_index("customer_id").loc[customer]
    rng = np.random.default_rng(seed)
    origin = truth["acquired_at"].floor("D")
    a = 0
    c = (CUTOFF.floor("D") - origin).days
    rate, basket, hazard = truth["order_rate"], truth["mean_basket"], truth["churn_hazard"]
    healthy = np.floor(np.minimum(rng.standard_exponential(paths) / hazard, 1e7)).astype(np.int64)
    declines = rng.random(paths) < config.decline_share
    length = 1 + np.floor(rng.standard_exponential(paths) * config.decline_days).astype(np.int64)
    decline_start = a + 1 + healthy
    churn_day = decline_start + np.where(declines, length, 0)

    def factor(day: np.ndarray) -> np.ndarray:  # rate multiplier on days, per path
        elapsed = day[None, :] - decline_start[:, None]
        fading = np.exp(-(elapsed + 0.5) / config.decay_days)
        out = np.where(day[None, :] < decline_start[:, None], 1.0, fading)
        out = np.where(day[None, :] >= churn_day[:, None], 0.0, out)
        return np.where(day[None, :] == a, 0.0, out)  # no repeat orders on the acquisition day

    days = np.arange(c + 1)
    exposure = day_seasonality(np.datetime64(origin.date(), "D") + days)
    seconds = (CUTOFF - CUTOFF.floor("D")).total_seconds()
    exposure[c] *= _day_share_before(np.array([seconds]))[0]
    observed = factor(days)
    log_weight = -rate * observed @ exposure

    orders = placed_orders(sim.events, CUTOFF)
    orders = orders[orders["customer_id"] == customer].sort_values("occurred_at").iloc[1:]
    order_day = (orders["occurred_at"] - origin).dt.days.to_numpy()
    fx = orders["currency"].astype(str).map({"USD": 1.0, **config.fx_rates}).to_numpy(float)
    channel_factor = CHANNEL_BASKET / (CHANNEL_BASKET @ CHANNEL_MIX)
    channel = [CHANNELS.index(str(v)) for v in orders["channel"]]
    log_value = np.log(orders["amount"].to_numpy(float) * fx / (basket * channel_factor[channel]))
    spread = ORDER_VALUE_SPREAD
    for day, value in zip(order_day, log_value, strict=True):
        multiplier = observed[:, day]
        shrink = np.log(0.5 + 0.5 * np.where(day >= decline_start, multiplier, 1.0))
        with np.errstate(divide="ignore"):
            log_weight += np.log(multiplier)
        log_weight += -((value + spread**2 / 2 - shrink) ** 2) / (2 * spread**2)

    window = _window_intensity(CUTOFF, HORIZON)
    future = factor(c + np.arange(len(window)))
    quiet = np.exp(-rate * future @ window)
    weight = np.exp(log_weight - log_weight.max())
    total = weight.sum()
    estimate = float(weight @ quiet / total)
    spread_of_estimate = float(np.sqrt(weight**2 @ (quiet - estimate) ** 2) / total)
    out = {"probability": estimate, "error": spread_of_estimate}
    for name, state in (("p_healthy", c < decline_start), ("p_churned", c >= churn_day)):
        share = float(weight @ state / total)
        out[name] = share
        out[f"{name}_error"] = float(np.sqrt(weight**2 @ (state - share) ** 2) / total)
    out["effective_paths"] = float(total**2 / (weight**2).sum())
    return out


def chosen_customers(sim: Simulation) -> list[str]:
    """A few different histories: many orders, a long silence, one order, none but the first,
    and (picked with the truth) the most orders placed in a decline, still declining or
    since churned."""
    truth = sim.truth
    orders = placed_orders(sim.events, CUTOFF)
    start = truth.set_index("customer_id")["declining_from"].reindex(orders["customer_id"])
    in_decline = orders[(orders["occurred_at"] >= start.to_numpy()).astype(bool)]
    churned = truth.set_index("customer_id")["churn_at"] <= CUTOFF
    declines = in_decline.groupby("customer_id").size()
    count = orders.groupby("customer_id").size()
    last = orders.groupby("customer_id")["occurred_at"].max()
    acquired = truth.set_index("customer_id")["acquired_at"]
    acquired = acquired[(acquired <= CUTOFF) & (acquired >= CUTOFF - pd.Timedelta(days=150))]
    frame = pd.DataFrame({"count": count, "silence": (CUTOFF - last).dt.days}).loc[acquired.index]
    picks = [
        frame["count"].idxmax(),
        frame[frame["count"] >= 3]["silence"].idxmax(),
        frame[(frame["count"] == 2)]["silence"].idxmin(),
        frame[frame["count"] == 1]["silence"].idxmax(),
        frame[frame["count"] == 1]["silence"].idxmin(),
        declines[~churned.reindex(declines.index).to_numpy()].idxmax(),
        declines[churned.reindex(declines.index).to_numpy()].idxmax(),
    ]
    return list(dict.fromkeys(picks))


def test_filter_matches_a_monte_carlo_of_the_chain(sim: Simulation) -> None:
    customers = chosen_customers(sim)
    probability = filtered_churn_probability(sim.truth, sim.events, CUTOFF, HORIZON)
    states = filtered_state_probabilities(sim.truth, sim.events, CUTOFF)
    assert len(customers) >= 6
    for number, customer in enumerate(customers):
        reference = monte_carlo(sim, customer, paths=100_000, seed=number)
        assert reference["effective_paths"] > 500, customer
        tolerance = 4 * reference["error"] + 0.003
        assert probability[customer] == pytest.approx(reference["probability"], abs=tolerance)
        for state in ("p_healthy", "p_churned"):
            tolerance = 4 * reference[f"{state}_error"] + 0.003
            assert states.loc[customer, state] == pytest.approx(reference[state], abs=tolerance)


def test_certain_state_gives_the_latent_oracle(sim: Simulation, labelled: pd.DataFrame) -> None:
    """Acquired on the cutoff day: healthy for sure, so the filter is the oracle."""
    truth = sim.truth
    today = truth.loc[
        (truth["acquired_at"] <= CUTOFF) & (truth["acquired_at"] >= CUTOFF.floor("D")),
        "customer_id",
    ]
    assert len(today) >= 1
    rows = labelled.set_index("customer_id").loc[today]
    np.testing.assert_allclose(rows["filtered"], rows["oracle"], rtol=1e-9)
    states = filtered_state_probabilities(truth, sim.events, CUTOFF).loc[today]
    np.testing.assert_allclose(states["p_healthy"], 1.0, rtol=1e-12)


def test_an_order_on_the_cutoff_day_means_alive(sim: Simulation, labelled: pd.DataFrame) -> None:
    orders = placed_orders(sim.events, CUTOFF)
    today = orders.loc[orders["occurred_at"] >= CUTOFF.floor("D"), "customer_id"].unique()
    states = filtered_state_probabilities(sim.truth, sim.events, CUTOFF).loc[today]
    assert len(today) >= 3
    assert states["p_churned"].max() < 1e-9
    np.testing.assert_allclose(states.sum(axis=1), 1.0, atol=1e-9)
    scores = labelled.set_index("customer_id").loc[today, "filtered"]
    assert scores.max() < 0.99


def test_a_long_silence_of_a_frequent_buyer_means_churned(
    sim: Simulation, labelled: pd.DataFrame
) -> None:
    truth = sim.truth.set_index("customer_id")
    last = placed_orders(sim.events, CUTOFF).groupby("customer_id")["occurred_at"].max()
    silence_days = (CUTOFF - last).dt.total_seconds() / SECONDS_PER_DAY
    expected_orders = truth.loc[last.index, "order_rate"] * silence_days
    quiet = expected_orders[expected_orders > 7].index
    assert len(quiet) >= 3
    scores = labelled.set_index("customer_id").loc[quiet, "filtered"]
    assert scores.min() > 0.97


def test_states_are_probabilities_and_unacquired_customers_are_nan(sim: Simulation) -> None:
    states = filtered_state_probabilities(sim.truth, sim.events, CUTOFF)
    acquired = (sim.truth["acquired_at"] <= CUTOFF).to_numpy()
    assert states[~acquired].isna().all().all()
    known = states[acquired]
    assert ((known >= 0) & (known <= 1)).all().all()
    np.testing.assert_allclose(known.sum(axis=1), 1.0, atol=1e-6)


def test_later_events_change_nothing(sim: Simulation) -> None:
    """The filter sees the log up to the cutoff only (no leakage of the label window)."""
    before = sim.events[sim.events["occurred_at"] <= CUTOFF]
    full = filtered_churn_probability(sim.truth, sim.events, CUTOFF, HORIZON)
    cut = filtered_churn_probability(sim.truth, before, CUTOFF, HORIZON)
    pd.testing.assert_series_equal(full, cut)


def test_filtered_auc_is_a_bound_between_the_oracles(labelled: pd.DataFrame) -> None:
    """Less information, lower AUC: latent oracle >= filter (true parameters) >= filter
    (population parameters); and the filter is calibrated (a true posterior)."""
    y = labelled["churned"].to_numpy()
    auc = {name: roc_auc_score(y, labelled[name]) for name in ("oracle", "filtered", "population")}
    assert auc["oracle"] > auc["filtered"] > auc["population"]
    assert labelled["filtered"].mean() == pytest.approx(y.mean(), abs=0.03)


def test_integrating_the_rate_over_the_population_learns_from_the_history(
    sim: Simulation, labelled: pd.DataFrame
) -> None:
    """Rate unknown, integrated over the population's gamma: better than one population
    rate for everyone, worse than knowing it, and still calibrated; quadrature-stable."""
    scores = {
        nodes: prior_churn_probability(sim.truth, sim.events, CUTOFF, HORIZON, sim.config, nodes)
        for nodes in (12, 24)
    }
    assert scores[12].isna().sum() == (~(sim.truth["acquired_at"] <= CUTOFF)).sum()
    prior = scores[24].reindex(labelled["customer_id"]).to_numpy()
    y = labelled["churned"].to_numpy()
    auc = roc_auc_score(y, prior)
    assert roc_auc_score(y, labelled["population"]) < auc < roc_auc_score(y, labelled["filtered"])
    assert prior.mean() == pytest.approx(y.mean(), abs=0.03)
    np.testing.assert_allclose(scores[12].dropna(), scores[24].dropna(), atol=0.02)


def test_bad_arguments_are_refused(sim: Simulation) -> None:
    with pytest.raises(ValueError, match="horizon_days"):
        filtered_churn_probability(sim.truth, sim.events, CUTOFF, 0)
    with pytest.raises(ValueError, match="not before the end"):
        filtered_churn_probability(sim.truth, sim.events, "2026-01-01", HORIZON)
