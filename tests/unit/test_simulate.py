"""The order simulator: reproducible, realistic in the stated bands, and true to its ground truth.

Bands are wide enough for sampling noise at the sizes used here (a few thousand
customers) and narrow enough to catch a broken generator.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tier_ml import batch
from tier_ml.events import EVENT_FIELDS, frame_records, read_events, validate
from tier_ml.money import instant_to_micros
from tier_ml.policy import load_policy
from tier_ml.simulate import (
    CHANNEL_MIX,
    CHANNELS,
    MALFORMED_KINDS,
    TRUTH_COLUMNS,
    Simulation,
    SimulationConfig,
    alive_at,
    default_truth_path,
    oracle_churn_probability,
    simulate,
    write_simulation,
)

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)  # the end of the default range


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(SimulationConfig(customers=5000, seed=11))


def good_events(sim: Simulation) -> pd.DataFrame:
    """The events without malformed rows and without replayed copies."""
    events = sim.events.drop(index=sim.malformed["position"].to_numpy())
    return events[~events["event_id"].duplicated()]


def placed(sim: Simulation) -> pd.DataFrame:
    events = good_events(sim)
    return events[events["event_type"] == "placed"]


def tier_shares(events_file: Path) -> dict[str, float]:
    tiers, _ = batch.classify_frame(load_policy(), events_file, instant_to_micros(AS_OF))
    return tiers["tier"].value_counts(normalize=True).to_dict()


# --- reproducibility ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_same_seed_gives_the_same_bytes(tmp_path: Path, suffix: str) -> None:
    config = SimulationConfig(customers=400, seed=5)
    first = write_simulation(simulate(config), tmp_path / f"a{suffix}")
    second = write_simulation(simulate(config), tmp_path / f"b{suffix}")
    other = write_simulation(
        simulate(config.model_copy(update={"seed": 6})), tmp_path / f"c{suffix}"
    )

    assert first.events.read_bytes() == second.events.read_bytes()
    assert first.truth.read_bytes() == second.truth.read_bytes()
    assert first.events.read_bytes() != other.events.read_bytes()
    assert (
        first.truth == default_truth_path(tmp_path / f"a{suffix}") == tmp_path / "a_truth.parquet"
    )


def test_config_checks_its_range() -> None:
    with pytest.raises(ValidationError, match="before start"):
        SimulationConfig(start=date(2025, 1, 1), end=date(2024, 1, 1))
    assert SimulationConfig(customers=1000, scale=2.5).n_customers == 2500


# --- the shape of the data ------------------------------------------------------------------


def test_events_are_canonical_and_mostly_in_time_order(sim: Simulation) -> None:
    events = sim.events
    assert list(events.columns) == list(EVENT_FIELDS)
    assert str(events["occurred_at"].dtype) == "datetime64[us, UTC]"
    assert set(events["event_type"].unique()) == {"placed", "refunded", "cancelled"}
    cancels = events["event_type"] == "cancelled"
    assert events.loc[cancels, "amount"].isna().all()
    assert events.loc[~cancels, "amount"].notna().all()
    cents = events.loc[~cancels, "amount"] * 100
    assert np.allclose(cents, cents.round())
    backwards = (events["occurred_at"].diff() < pd.Timedelta(0)).mean()
    assert backwards < 0.02  # replays and late deliveries only
    assert 8 <= len(events) / sim.config.n_customers <= 12  # about ten events per customer


def test_tier_pyramid_under_the_default_policy(sim: Simulation, tmp_path: Path) -> None:
    written = write_simulation(sim, tmp_path / "events.parquet")
    shares = tier_shares(written.events)

    assert 0.60 <= shares["Silver"] <= 0.80
    assert 0.15 <= shares["Gold"] <= 0.30
    assert 0.04 <= shares["VIP"] <= 0.12


def test_scale_keeps_the_shape(tmp_path: Path) -> None:
    small = simulate(SimulationConfig(customers=4000, scale=0.5, seed=3))
    large = simulate(SimulationConfig(customers=4000, scale=2.0, seed=3))
    assert small.config.n_customers == 2000
    assert large.config.n_customers == 8000
    per_customer = [len(s.events) / s.config.n_customers for s in (small, large)]
    assert abs(per_customer[0] - per_customer[1]) < 0.8
    vip = [
        tier_shares(write_simulation(s, tmp_path / f"{i}.parquet").events)["VIP"]
        for i, s in enumerate((small, large))
    ]
    assert abs(vip[0] - vip[1]) < 0.03


def test_refunds_cancels_and_channel_mix_stay_in_their_bands(sim: Simulation) -> None:
    events = good_events(sim)
    orders = placed(sim)
    refunded = events.loc[events["event_type"] == "refunded", "order_id"].unique()
    cancelled = events.loc[events["event_type"] == "cancelled", "order_id"].unique()
    assert 0.06 <= len(refunded) / len(orders) <= 0.095
    assert 0.012 <= len(cancelled) / len(orders) <= 0.028

    mix = orders["channel"].value_counts(normalize=True)
    for channel, share in zip(CHANNELS, CHANNEL_MIX, strict=True):
        assert abs(mix[channel] - share) < 0.03, channel
    regions = orders.drop_duplicates("customer_id")["region"].value_counts(normalize=True)
    assert abs(regions["US"] - 0.5) < 0.04
    currency_of = {"US": "USD", "EU": "EUR", "UK": "GBP"}
    assert (orders["currency"].astype(str) == orders["region"].astype(str).map(currency_of)).all()


def test_refunds_are_mostly_inside_the_return_window(sim: Simulation) -> None:
    events = good_events(sim)
    orders = placed(sim).set_index("order_id")["occurred_at"]
    refunds = events[events["event_type"] == "refunded"].drop_duplicates("order_id")
    delay = refunds["occurred_at"].to_numpy() - orders.loc[refunds["order_id"]].to_numpy()
    late = (delay >= np.timedelta64(14, "D")).mean()
    assert 0.08 <= late <= 0.22
    assert (delay > np.timedelta64(0, "s")).all()


def test_replays_are_byte_identical_copies(sim: Simulation) -> None:
    copies = sim.events[sim.events["event_id"].duplicated(keep=False)]
    assert len(copies) > 0
    distinct = copies.astype(str).drop_duplicates()
    assert len(distinct) == copies["event_id"].nunique()


# --- malformed rows -------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "column"), [(".csv", "reason"), (".parquet", "reason_typed")])
def test_every_malformed_kind_is_rejected_with_its_reason(
    tmp_path: Path, suffix: str, column: str
) -> None:
    small = simulate(SimulationConfig(customers=800, seed=2))
    path = write_simulation(small, tmp_path / f"events{suffix}").events
    validation = validate(frame_records(read_events(path)), load_policy())

    rejected = {reject.event_id: str(reject.reason) for reject in validation.rejects}
    expected = dict(zip(small.malformed["event_id"], small.malformed[column], strict=True))
    assert rejected == expected
    assert set(small.malformed["kind"]) == set(MALFORMED_KINDS)
    replays = int(small.events["event_id"].duplicated().sum())
    assert validation.replays == replays
    assert len(validation.events) == len(small.events) - len(small.malformed) - replays


# --- the ground truth -----------------------------------------------------------------------


def test_truth_agrees_with_the_events(sim: Simulation) -> None:
    truth = sim.truth.set_index("customer_id")
    assert list(sim.truth.columns) == list(TRUTH_COLUMNS)
    orders = placed(sim)
    churn_at = truth.loc[orders["customer_id"], "churn_at"].to_numpy()
    after_churn = ~pd.isna(churn_at) & (orders["occurred_at"].to_numpy() >= churn_at)
    assert not after_churn.any(), "no order at or after the churn instant"

    first = orders.groupby("customer_id")["occurred_at"].min()
    assert (first == truth.loc[first.index, "acquired_at"]).all()
    counts = orders.groupby("customer_id").size()
    assert (counts == truth.loc[counts.index, "placed_orders"]).all()
    both = truth["declining_from"].notna() & truth["churn_at"].notna()
    assert (truth.loc[both, "declining_from"] < truth.loc[both, "churn_at"]).all()
    assert 0.15 <= truth["churn_at"].notna().mean() <= 0.45


def test_declining_customers_buy_less_often_before_they_stop(sim: Simulation) -> None:
    truth = sim.truth.set_index("customer_id")
    decliners = truth[truth["declining_from"].notna() & truth["churn_at"].notna()]
    decliners = decliners[
        decliners["declining_from"] > decliners["acquired_at"] + pd.Timedelta(days=60)
    ]
    orders = placed(sim)
    orders = orders[orders["customer_id"].isin(decliners.index)]
    start = decliners.loc[orders["customer_id"], "declining_from"].to_numpy()
    in_decline = orders["occurred_at"].to_numpy() >= start
    healthy_days = (decliners["declining_from"] - decliners["acquired_at"]).dt.days.sum()
    decline_days = (decliners["churn_at"] - decliners["declining_from"]).dt.days.sum()
    healthy_rate = (~in_decline).sum() / healthy_days
    decline_rate = in_decline.sum() / decline_days
    assert decline_rate < 0.7 * healthy_rate


def test_alive_at_follows_acquisition_and_churn(sim: Simulation) -> None:
    cutoff = pd.Timestamp("2025-01-01", tz="UTC")
    alive = alive_at(sim.truth, cutoff)
    truth = sim.truth.set_index("customer_id")
    expected = (truth["acquired_at"] <= cutoff) & ~(truth["churn_at"] <= cutoff)
    assert (alive == expected).all()
    with pytest.raises(ValueError, match="not before the end"):
        alive_at(sim.truth, "2026-01-01")


def test_oracle_is_calibrated_against_the_events(sim: Simulation) -> None:
    cutoff, horizon = pd.Timestamp("2025-06-01", tz="UTC"), 90
    probability = oracle_churn_probability(sim.truth, cutoff, horizon)
    orders = placed(sim)
    window = orders[
        (orders["occurred_at"] > cutoff)
        & (orders["occurred_at"] <= cutoff + pd.Timedelta(days=horizon))
    ]
    no_order = ~probability.index.isin(window["customer_id"])
    known = probability.notna().to_numpy()

    truth = sim.truth.set_index("customer_id")
    assert (known == (truth["acquired_at"] <= cutoff).to_numpy()).all()
    assert probability[known].between(0, 1).all()
    churned = (truth["churn_at"] <= cutoff).to_numpy()
    assert (probability[churned] == 1).all() and no_order[churned].all()
    assert abs(probability[known].mean() - no_order[known].mean()) < 0.03
    alive = known & ~churned
    high = alive & (probability > 0.5).to_numpy()
    low = alive & (probability <= 0.5).to_numpy()
    assert no_order[high].mean() > no_order[low].mean() + 0.3  # the score ranks
