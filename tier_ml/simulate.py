"""A seeded order simulator that writes canonical events and the ground truth behind them.

Why: the tier engine, the features and the churn models need realistic order
streams at any size, and a churn model can only be judged against a known truth.
The simulator draws every customer's latent behaviour first (purchase rate,
basket, an "alive" process with gradual decline and churn), then the orders,
refunds, cancels and delivery noise that follow from it. Everything is
vectorized numpy on one ``Generator(PCG64(seed))``: the same config gives the
same bytes, and ten million events take seconds.

Generative model
----------------
Time is counted in UTC days from ``start`` to ``end`` (both inclusive).

*Customers* (``round(customers * scale)`` of them, numbered by acquisition):

- a region, US 50 % / EU 30 % / UK 20 %, which fixes the currency (USD, EUR, GBP);
- an acquisition instant: the day with density ``(1 + growth * x) * season(day)``
  (``x`` runs from 0 at ``start`` to 1 at ``end``: a growing business, cohorts
  over time), the time of day from the hourly profile. The first order is placed
  at that instant;
- a primary channel from the channel mix (web 45 %, pos 25 %, marketplace 15 %, app 15 %);
- a repeat-order rate ``λ ~ Gamma(rate_shape, mean = orders_per_year / 365)`` per day;
- a mean basket ``μ ~ LogNormal`` with mean ``mean_basket`` and log-sd ``basket_spread``
  (base currency);
- a churn hazard ``η ~ Gamma(2, mean = 1 / healthy_days)`` per day.

*The alive process* is a day-level Markov chain. At every UTC midnight after the
acquisition day a *healthy* customer stays healthy with probability ``exp(-η)``;
otherwise, with probability ``q = decline_share``, they start to *decline*, and
else they *churn* at once. A declining customer churns at each later midnight
with probability ``1 - exp(-δ)``, ``δ = 1 / decline_days``. On the ``e``-th day
of a decline (``e = 0, 1, ...``) the order rate is multiplied by
``exp(-(e + 1/2) / κ)`` and baskets by ``1/2 + 1/2 exp(-(e + 1/2) / κ)``
(``κ = decay_days``): frequency and basket size fall before the customer stops.
Churned customers never order again; nothing announces it (silent churn).

*Orders.* On day ``d`` a living customer places ``Poisson(λ · season(d) · decline)``
repeat orders. ``season`` is a weekday profile times a yearly profile (Black
Friday, a December peak, January sales, a summer dip), normalised to mean 1
over the years; the time of day follows an hourly profile. The channel is the
primary one with probability 0.7, else drawn from the mix. The value is
``μ × channel factor × LogNormal(σ = 0.45, mean 1) × decline factor`` in the
base currency (pos baskets are larger, marketplace ones smaller), written in
the region's currency at ``fx_rates`` and rounded to cents.

*After an order*: a cancel (``cancel_share``, within two days) or a refund
(``refund_share`` of orders overall; marketplace most, pos least): inside the
return window (``return_window_days``, the policy's buffer) except for a share
``late_refund_share`` after it; partial (``partial_refund_share``, some followed
by a second refund of the rest) or full. Follow-ups after ``end`` are not
written (they have not happened yet).

*Delivery noise*: ``replay_share`` of rows are delivered twice, byte-identical
with the same ``event_id``, a little later; ``late_delivery_share`` of rows
arrive out of time order; ``malformed_share`` extra rows carry one defect each,
of six kinds (:data:`MALFORMED_KINDS`), each rejected by
:func:`tier_ml.events.validate` with its reason. Rows are otherwise sorted by
delivery time, which is what a real export looks like.

Ground truth and the oracle
---------------------------
:attr:`Simulation.truth` has one row per customer: acquisition, the latent
parameters, ``declining_from`` and ``churn_at`` (UTC midnights; null when after
``end``). :func:`alive_at` gives the latent state at any instant and
:func:`oracle_churn_probability` the probability that a customer places no
order in ``(t, t + h]`` given what the generator knows at ``t`` (parameters and
current latent state, not the future): the score of a perfect model of this
generator, whose ROC AUC bounds what any churn model can reach on this data.
The truth is per customer; the state on any day or month follows from it
(``alive_at`` on a grid of instants), so no customer × day table is stored.

Calibration
-----------
The defaults (12 healthy orders a year, mean order 2,350 in the base currency,
600 healthy days on average) give about ten events per customer over the
default two years and, under the packaged policy (Gold >= 20,000, VIP >= 50,000,
lifetime, 14-day buffer), about 69/23/7.5 % Silver/Gold/VIP among customers
with orders. Customers are independent, so ``scale`` changes only their number.

Files
-----
:func:`write_simulation` writes Parquet (typed: ``occurred_at`` timestamp[us,
UTC], ``amount`` double, strings elsewhere) or CSV (ISO 8601 times with ``Z``,
empty cells for missing values) by suffix, and the truth as Parquet. In a
typed time column an unreadable time can only be null, so in Parquet that
malformed kind is rejected as ``missing_field``; CSV carries the garbled text
(``unparseable_time``). Same config and library versions: same bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from numpy.random import PCG64, Generator
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tier_ml.events import EVENT_FIELDS, RejectReason

SECONDS_PER_DAY = 86_400
MICROS_PER_SECOND = 1_000_000
_NAT = np.iinfo(np.int64).min

EVENT_TYPES = ("placed", "refunded", "cancelled")
PLACED, REFUNDED, CANCELLED = 0, 1, 2

CHANNELS = ("web", "pos", "marketplace", "app")
CHANNEL_MIX = np.array([0.45, 0.25, 0.15, 0.15])
#: Basket size by channel, relative (normalised so that the mix averages 1).
CHANNEL_BASKET = np.array([1.0, 1.25, 0.6, 0.85])
#: Refund propensity by channel, relative (normalised so that the mix averages 1).
CHANNEL_REFUND = np.array([1.0, 0.45, 1.6, 0.9])
PRIMARY_CHANNEL_LOYALTY = 0.7

REGIONS = ("US", "EU", "UK")
REGION_MIX = np.array([0.5, 0.3, 0.2])
CURRENCIES = ("USD", "EUR", "GBP", "JPY")  # JPY appears only in malformed rows
REGION_CURRENCY = np.array([0, 1, 2], dtype=np.int8)
UNKNOWN_CURRENCY = 3

BLOCK_CUSTOMERS = 1 << 15  # customers generated together (keeps arrays in cache)
ORDER_VALUE_SPREAD = 0.45  # log-sd of one order's value around the customer's mean basket
HAZARD_SHAPE = 2.0  # gamma shape of churn hazards

#: Weekday profile, Monday first.
WEEKDAY_PROFILE = np.array([0.92, 0.93, 0.95, 0.98, 1.06, 1.14, 1.02])
#: Yearly bumps: (day of year, 0-based; width in days; height). Summed onto 1.
YEARLY_BUMPS = (
    (330.0, 2.0, 1.4),  # Black Friday weekend
    (350.0, 11.0, 0.7),  # December gifts
    (2.0, 4.0, 0.35),  # January sales
    (212.0, 30.0, -0.12),  # summer dip
)
#: Orders per hour of day (UTC), relative.
HOURLY_PROFILE = np.array(
    [0.25, 0.15, 0.1, 0.08, 0.08, 0.12, 0.3, 0.55, 0.8, 1.0, 1.15, 1.3,
     1.45, 1.35, 1.2, 1.15, 1.2, 1.35, 1.55, 1.7, 1.7, 1.45, 1.0, 0.55]
)  # fmt: skip

#: The defects of malformed rows and the reason ``tier_ml.events.validate`` gives for each.
MALFORMED_KINDS: dict[str, RejectReason] = {
    "unknown_currency": RejectReason.UNKNOWN_CURRENCY,
    "non_positive_amount": RejectReason.NON_POSITIVE_AMOUNT,
    "unparseable_time": RejectReason.UNPARSEABLE_TIME,
    "missing_customer_id": RejectReason.MISSING_FIELD,
    "unknown_order": RejectReason.UNKNOWN_ORDER,
    "duplicate_order": RejectReason.DUPLICATE_ORDER,
}
_KIND_CODES = {name: code for code, name in enumerate(MALFORMED_KINDS, start=1)}

TRUTH_COLUMNS = (
    "customer_id",
    "region",
    "currency",
    "primary_channel",
    "acquired_at",
    "order_rate",
    "mean_basket",
    "churn_hazard",
    "decline_chance",
    "decline_end_hazard",
    "decline_decay_days",
    "declining_from",
    "churn_at",
    "placed_orders",
    "observed_until",
)


class SimulationConfig(BaseModel):
    """What to simulate. Defaults give about ten events per customer over two years, and
    with the default policy roughly 70/22/8 % Silver/Gold/VIP among customers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    customers: int = Field(default=10_000, ge=1, description="Customers before scaling.")
    start: date = Field(default=date(2024, 1, 1), description="First day (UTC), inclusive.")
    end: date = Field(default=date(2025, 12, 31), description="Last day (UTC), inclusive.")
    seed: int = Field(default=7, ge=0)
    scale: float = Field(default=1.0, gt=0, description="Multiplies customers; shares stay.")

    orders_per_year: float = Field(
        default=12.0, gt=0, description="Mean healthy repeat-order rate."
    )
    rate_shape: float = Field(default=2.5, gt=0, description="Gamma shape of rates (low: skewed).")
    mean_basket: float = Field(default=2350.0, gt=0, description="Mean order value, base currency.")
    basket_spread: float = Field(default=0.2, ge=0, description="Log-sd of customers' baskets.")
    healthy_days: float = Field(default=600.0, gt=0, description="Mean healthy lifetime, days.")
    decline_share: float = Field(default=0.5, ge=0, le=1, description="Churners who decline first.")
    decline_days: float = Field(default=90.0, gt=0, description="Mean length of a decline, days.")
    decay_days: float = Field(default=45.0, gt=0, description="Decay time of a decline, days.")
    growth: float = Field(default=1.0, ge=0, description="Extra acquisition rate at the end.")

    return_window_days: float = Field(default=14.0, gt=0)
    refund_share: float = Field(default=0.08, ge=0, le=0.9)
    late_refund_share: float = Field(default=0.15, ge=0, le=1)
    partial_refund_share: float = Field(default=0.4, ge=0, le=1)
    second_refund_share: float = Field(default=0.3, ge=0, le=1)
    cancel_share: float = Field(default=0.02, ge=0, le=0.5)
    replay_share: float = Field(default=0.005, ge=0, le=0.5)
    late_delivery_share: float = Field(default=0.002, ge=0, le=0.5)
    malformed_share: float = Field(default=0.002, ge=0, le=0.5)
    fx_rates: dict[str, float] = Field(default_factory=lambda: {"EUR": 1.10, "GBP": 1.30})

    @model_validator(mode="after")
    def _check(self) -> SimulationConfig:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if self.days * SECONDS_PER_DAY >= 2**32 - 10**7:
            raise ValueError("the date range is too long (at most about 130 years)")
        for code in ("EUR", "GBP"):
            if not self.fx_rates.get(code, 0) > 0:
                raise ValueError(f"fx_rates needs a positive rate for {code}")
        if (
            self.cancel_share + self.refund_share * CHANNEL_REFUND.max() / _mix_mean(CHANNEL_REFUND)
            > 1
        ):
            raise ValueError("cancel_share + refund_share is too large")
        return self

    @property
    def n_customers(self) -> int:
        return max(1, round(self.customers * self.scale))

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def start_epoch_seconds(self) -> int:
        return (self.start - date(1970, 1, 1)).days * SECONDS_PER_DAY


@dataclass(frozen=True)
class Simulation:
    """The outcome of :func:`simulate`.

    ``events``: canonical columns (``EVENT_FIELDS`` order), rows in delivery order;
    ``occurred_at`` is ``datetime64[us, UTC]``, ``amount`` float (NaN for cancels).
    ``truth``: one row per customer (``TRUTH_COLUMNS``). ``malformed``: the defect
    rows with ``event_id``, ``kind``, the reject ``reason`` for text files, the
    ``reason_typed`` for this frame and Parquet (a typed time column cannot hold an
    unreadable time, so it holds null: ``missing_field``), and ``raw_time``, the
    text written to CSV for an unparseable time.
    """

    config: SimulationConfig
    events: pd.DataFrame
    truth: pd.DataFrame
    malformed: pd.DataFrame
    seconds: float

    @property
    def rate(self) -> float:
        """Events generated per second."""
        return len(self.events) / self.seconds if self.seconds > 0 else float("inf")


# --- calendar -------------------------------------------------------------------------------


def _mix_mean(factors: np.ndarray) -> float:
    return float(factors @ CHANNEL_MIX)


def _raw_season(days: np.ndarray) -> np.ndarray:
    epoch_days = days.astype("datetime64[D]").astype(np.int64)
    weekday = (epoch_days + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    day_of_year = (days.astype("datetime64[D]") - days.astype("datetime64[Y]")).astype(np.int64)
    yearly = np.ones(len(days))
    for center, width, height in YEARLY_BUMPS:
        distance = (day_of_year - center + 182.5) % 365.25 - 182.5
        yearly += height * np.exp(-0.5 * (distance / width) ** 2)
    return WEEKDAY_PROFILE[weekday] * yearly


@cache
def _season_norm() -> float:
    reference = np.arange(np.datetime64("2001-01-01"), np.datetime64("2029-01-01"))
    return float(_raw_season(reference).mean())


def day_seasonality(days: np.ndarray) -> np.ndarray:
    """Relative order intensity of calendar days (``datetime64[D]``), mean 1 over the years."""
    return _raw_season(np.asarray(days)) / _season_norm()


@cache
def _hour_cdf() -> np.ndarray:
    share = HOURLY_PROFILE / HOURLY_PROFILE.sum()
    return np.concatenate([[0.0], np.cumsum(share)])


def _inverse_cdf(cumulative: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Index ``i`` with ``cumulative[i] <= position < cumulative[i + 1]``, for many positions.

    A lookup table with many bins per interval finds the interval at a bin's start;
    one comparison moves to the next interval when the bin straddles a boundary.
    Exact, and several times faster than ``searchsorted`` for millions of positions.
    """
    table = _inverse_table(cumulative.tobytes())
    bins = len(table) - 1
    scale = bins / cumulative[-1]
    index = table[np.minimum((position * scale).astype(np.int64), bins - 1)]
    index += position >= cumulative[index + 1]
    return np.minimum(index, len(cumulative) - 2)


@lru_cache(maxsize=32)
def _inverse_table(cumulative_bytes: bytes) -> np.ndarray:
    cumulative = np.frombuffer(cumulative_bytes)
    widths = np.diff(cumulative)
    bins = 1 << int(np.ceil(np.log2(4 * cumulative[-1] / widths[widths > 0].min() + 1)))
    starts = np.arange(bins + 1) * (cumulative[-1] / bins)
    index = np.searchsorted(cumulative, starts, side="right") - 1
    return np.clip(index, 0, len(cumulative) - 2).astype(np.int64)


TIME_OF_DAY_BINS = 1 << 20


@cache
def _time_of_day_table() -> np.ndarray:
    """The second of the day for each of 2**20 equally likely bins (the hourly profile)."""
    cdf = _hour_cdf()
    uniform = (np.arange(TIME_OF_DAY_BINS) + 0.5) / TIME_OF_DAY_BINS
    hour = np.clip(np.searchsorted(cdf, uniform, side="right") - 1, 0, 23)
    within = ((uniform - cdf[hour]) / np.diff(cdf)[hour] * 3600).astype(np.int64)
    return (hour * 3600 + np.minimum(within, 3599)).astype(np.int32)


def _time_of_day(rng: Generator, size: int) -> np.ndarray:
    """Seconds after midnight of ``size`` orders, following the hourly profile."""
    return _time_of_day_table()[rng.integers(0, TIME_OF_DAY_BINS, size, dtype=np.uint32)]


def _day_share_before(seconds_of_day: np.ndarray) -> np.ndarray:
    """Share of a day's orders placed before a time of day (the hourly profile's CDF)."""
    cdf = _hour_cdf()
    seconds = np.clip(np.asarray(seconds_of_day, dtype=np.float64), 0, SECONDS_PER_DAY)
    hour = np.minimum((seconds // 3600).astype(np.int64), 23)
    return cdf[hour] + (cdf[hour + 1] - cdf[hour]) * (seconds - hour * 3600) / 3600


@dataclass(frozen=True)
class _Calendar:
    season: np.ndarray  # per simulated day
    cumulative: np.ndarray  # cumulative season, length days + 1


def _calendar(config: SimulationConfig) -> _Calendar:
    first = np.datetime64(config.start, "D")
    season = day_seasonality(first + np.arange(config.days))
    return _Calendar(season, np.concatenate([[0.0], np.cumsum(season)]))


# --- latent customers --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Customers:
    acquired_sec: np.ndarray  # seconds after start
    region: np.ndarray
    primary_channel: np.ndarray
    rate: np.ndarray  # repeat orders per day at season 1
    basket: np.ndarray  # mean order value, base currency
    hazard: np.ndarray  # churn hazard per day
    decline_day: np.ndarray  # first declining day (a huge number when none)
    churn_day: np.ndarray  # first churned day (may be after the range)

    @property
    def acquired_day(self) -> np.ndarray:
        return self.acquired_sec // SECONDS_PER_DAY

    def part(self, block: slice) -> _Customers:
        return _Customers(
            **{name: getattr(self, name)[block] for name in self.__dataclass_fields__}
        )


def _choose(rng: Generator, weights: np.ndarray, size: int) -> np.ndarray:
    """Category codes (int8) drawn with the given weights."""
    cdf = np.cumsum(weights / weights.sum())
    uniform = rng.random(size)
    codes = np.zeros(size, dtype=np.int8)
    for bound in cdf[:-1]:
        codes += uniform >= bound
    return codes


def _draw_customers(rng: Generator, config: SimulationConfig, calendar: _Calendar) -> _Customers:
    n, days = config.n_customers, config.days
    progress = np.arange(days) / max(days - 1, 1)
    acquisition_cdf = np.cumsum((1 + config.growth * progress) * calendar.season)
    acquisition_cdf = np.concatenate([[0.0], acquisition_cdf])
    day = _inverse_cdf(acquisition_cdf, rng.random(n) * acquisition_cdf[-1])
    acquired_sec = np.sort(day * SECONDS_PER_DAY + _time_of_day(rng, n))
    day = acquired_sec // SECONDS_PER_DAY

    region = _choose(rng, REGION_MIX, n)
    primary = _choose(rng, CHANNEL_MIX, n)
    mean_rate = config.orders_per_year / 365.25
    rate = rng.gamma(config.rate_shape, mean_rate / config.rate_shape, n)
    spread = config.basket_spread
    basket = config.mean_basket * np.exp(spread * rng.standard_normal(n) - spread**2 / 2)
    hazard = rng.gamma(HAZARD_SHAPE, 1 / (HAZARD_SHAPE * config.healthy_days), n)

    healthy = np.floor(np.minimum(rng.standard_exponential(n) / hazard, 1e7)).astype(np.int64)
    declines = rng.random(n) < config.decline_share
    decline_length = 1 + np.floor(rng.standard_exponential(n) * config.decline_days)
    decline_start = day + 1 + healthy
    churn_day = decline_start + np.where(declines, decline_length.astype(np.int64), 0)
    decline_day = np.where(declines, decline_start, np.iinfo(np.int64).max // 4)
    return _Customers(acquired_sec, region, primary, rate, basket, hazard, decline_day, churn_day)


# --- orders and what follows them --------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """Event rows as parallel arrays (one entry per row)."""

    kind: np.ndarray  # PLACED / REFUNDED / CANCELLED
    order: np.ndarray  # order index
    owner: np.ndarray  # customer index, -1 for none
    sec: np.ndarray  # seconds after start
    amount: np.ndarray  # in the row's currency, NaN for cancels
    channel: np.ndarray
    currency: np.ndarray
    region: np.ndarray
    defect: np.ndarray  # 0, or the code of a malformed kind

    def __len__(self) -> int:
        return len(self.kind)

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        fields = _Rows.__dataclass_fields__
        return _Rows(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in fields})

    def take(self, index: np.ndarray) -> _Rows:
        fields = _Rows.__dataclass_fields__
        return _Rows(**{name: getattr(self, name)[index] for name in fields})


def _decline_factor(elapsed: np.ndarray, decay_days: float) -> np.ndarray:
    """Order-rate multiplier on the ``elapsed``-th day (0, 1, ...) of a decline."""
    return np.exp(-(elapsed + 0.5) / decay_days)


def _poisson_days(
    rng: Generator, cumulative: np.ndarray, rate: np.ndarray, first: np.ndarray, stop: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Owner and day of the events of Poisson processes with intensity ``rate × season``
    on days ``[first, stop)`` (one process per owner)."""
    span = cumulative[stop] - cumulative[first]
    count = rng.poisson(rate * span)
    owner = np.repeat(np.arange(len(count), dtype=np.int32), count)
    position = cumulative[first][owner] + rng.random(len(owner)) * span[owner]
    day = np.clip(_inverse_cdf(cumulative, position), first[owner], stop[owner] - 1)
    return owner, day


def _repeat_orders(
    rng: Generator, config: SimulationConfig, calendar: _Calendar, part: _Customers
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Owner, day and basket factor of the repeat orders of some customers.

    Healthy days are a plain Poisson process; declining days one thinned by the decline.
    """
    days, cumulative = config.days, calendar.cumulative
    first = np.minimum(part.acquired_day + 1, days)
    healthy_stop = np.maximum(np.minimum(np.minimum(part.decline_day, part.churn_day), days), first)
    owner, day = _poisson_days(rng, cumulative, part.rate, first, healthy_stop)

    decline_first = np.minimum(part.decline_day, days)
    decline_stop = np.maximum(np.minimum(part.churn_day, days), decline_first)
    late_owner, late_day = _poisson_days(rng, cumulative, part.rate, decline_first, decline_stop)
    elapsed = late_day - part.decline_day[late_owner]
    factor = _decline_factor(elapsed, config.decay_days)
    keep = rng.random(len(late_owner)) < factor
    basket = np.concatenate([np.ones(len(owner)), 0.5 + 0.5 * factor[keep]])
    return (
        np.concatenate([owner, late_owner[keep]]),
        np.concatenate([day, late_day[keep]]),
        basket,
    )


def _draw_block(
    rng: Generator,
    config: SimulationConfig,
    calendar: _Calendar,
    customers: _Customers,
    block: slice,
    first_order: int,
) -> tuple[_Rows, list[_Rows]]:
    """The orders (first, then repeat; in time order) of a block of customers, and their
    follow-ups. Blocks keep every array small enough to stay in cache."""
    part = customers.part(block)
    n = len(part.rate)
    owner, day, basket_factor = _repeat_orders(rng, config, calendar, part)
    owner = np.concatenate([np.arange(n, dtype=np.int32), owner])
    repeat_sec = day * SECONDS_PER_DAY + _time_of_day(rng, len(day))
    sec = np.concatenate([part.acquired_sec, repeat_sec])
    basket_factor = np.concatenate([np.ones(n), basket_factor])
    shift = len(sec).bit_length()
    in_time_order = np.argsort((sec << shift) | np.arange(len(sec)))  # unique keys: deterministic
    owner, sec = owner[in_time_order], sec[in_time_order]
    basket_factor = basket_factor[in_time_order]

    size = len(owner)
    loyal = rng.random(size) < PRIMARY_CHANNEL_LOYALTY
    channel = np.where(loyal, part.primary_channel[owner], _choose(rng, CHANNEL_MIX, size))
    spread = ORDER_VALUE_SPREAD
    noise = np.exp(spread * rng.standard_normal(size) - spread**2 / 2)
    channel_factor = CHANNEL_BASKET / _mix_mean(CHANNEL_BASKET)
    value = part.basket[owner] * channel_factor[channel] * noise * basket_factor
    region = part.region[owner]
    currency = REGION_CURRENCY[region]
    amount = np.maximum(np.round(value / _fx_table(config)[currency], 2), 1.0)
    orders = _Rows(
        kind=np.full(size, PLACED, dtype=np.int8),
        order=np.arange(first_order, first_order + size, dtype=np.int32),
        owner=owner + np.int32(block.start),
        sec=sec,
        amount=amount,
        channel=channel,
        currency=currency,
        region=region,
        defect=np.zeros(size, dtype=np.int8),
    )
    last_sec = config.days * SECONDS_PER_DAY - 1
    follow_ups = [
        rows.take(np.flatnonzero(rows.sec <= last_sec))  # later ones have not happened yet
        for rows in _draw_follow_ups(rng, config, orders)
    ]
    return orders, follow_ups


def _fx_table(config: SimulationConfig) -> np.ndarray:
    return np.array([1.0, config.fx_rates["EUR"], config.fx_rates["GBP"], 1.0])


def _follow_up(
    orders: _Rows, index: np.ndarray, kind: int, sec: np.ndarray, amount: np.ndarray
) -> _Rows:
    return _Rows(
        kind=np.full(len(index), kind, dtype=np.int8),
        order=orders.order[index],
        owner=orders.owner[index],
        sec=sec,
        amount=amount,
        channel=orders.channel[index],
        currency=orders.currency[index],
        region=orders.region[index],
        defect=np.zeros(len(index), dtype=np.int8),
    )


def _draw_follow_ups(rng: Generator, config: SimulationConfig, orders: _Rows) -> list[_Rows]:
    """Cancels and refunds (in the return window or late, full or partial, sometimes two)."""
    draw = rng.random(len(orders))
    refund_chance = config.refund_share * CHANNEL_REFUND / _mix_mean(CHANNEL_REFUND)
    cancelled = draw < config.cancel_share
    refunded = ~cancelled & (draw < config.cancel_share + refund_chance[orders.channel])

    index = np.flatnonzero(cancelled)
    delay = np.clip(rng.standard_exponential(len(index)) * 4 * 3600, 60, 47 * 3600)
    cancel_sec = orders.sec[index] + delay.astype(np.int64)
    cancels = _follow_up(orders, index, CANCELLED, cancel_sec, np.full(len(index), np.nan))

    index = np.flatnonzero(refunded)
    size = len(index)
    window = int(config.return_window_days * SECONDS_PER_DAY)
    inside = 3600 + (rng.random(size) ** 1.6 * max(window - 7201, 1)).astype(np.int64)
    late = window + (rng.standard_exponential(size) * 25 * SECONDS_PER_DAY).astype(np.int64)
    is_late = rng.random(size) < config.late_refund_share
    first_sec = orders.sec[index] + np.where(is_late, late, inside)
    value = orders.amount[index]
    partial = rng.random(size) < config.partial_refund_share
    part = np.maximum(np.round(value * rng.uniform(0.1, 0.9, size), 2), 0.01)
    first_amount = np.where(partial, part, value)
    refunds = _follow_up(orders, index, REFUNDED, first_sec, first_amount)

    second = np.flatnonzero(partial & (rng.random(size) < config.second_refund_share))
    gap = 3600 + (rng.random(len(second)) * 10 * SECONDS_PER_DAY).astype(np.int64)
    rest = np.round(value[second] - first_amount[second], 2)
    seconds = _follow_up(orders, index[second], REFUNDED, first_sec[second] + gap, rest)
    return [cancels, refunds, seconds]


def _take_orders(parts: list[_Rows], index: np.ndarray) -> _Rows:
    """Orders by global index (sorted) from the per-block order tables."""
    bounds = np.cumsum([0] + [len(p) for p in parts])
    part_of = np.searchsorted(bounds, index, side="right") - 1
    pieces = [p.take(index[part_of == k] - bounds[k]) for k, p in enumerate(parts)]
    return _Rows.concat(pieces)


def _draw_malformed(
    rng: Generator, config: SimulationConfig, order_parts: list[_Rows], good_rows: int
) -> _Rows:
    """Extra rows with one defect each, copied from random orders (never touching good rows)."""
    orders = sum(len(p) for p in order_parts)
    size = 0
    if config.malformed_share > 0:
        size = max(len(MALFORMED_KINDS), round(config.malformed_share * good_rows))
    defect = rng.permutation(np.arange(size) % len(MALFORMED_KINDS) + 1).astype(np.int8)
    rows = _take_orders(order_parts, np.sort(rng.integers(0, orders, size)))
    last_sec = config.days * SECONDS_PER_DAY - 1
    sec = np.minimum(rows.sec + 3600 + rng.integers(0, 47 * 3600, size), last_sec)
    fresh_order = orders + np.arange(size)
    duplicate = defect == _KIND_CODES["duplicate_order"]
    unknown_order = defect == _KIND_CODES["unknown_order"]
    non_positive = defect == _KIND_CODES["non_positive_amount"]
    amount = np.where(
        non_positive, np.where(rng.random(size) < 0.5, 0.0, -rows.amount), rows.amount
    )
    amount = np.where(unknown_order, np.maximum(np.round(rows.amount * 0.5, 2), 0.01), amount)
    missing_customer = defect == _KIND_CODES["missing_customer_id"]
    bad_currency = defect == _KIND_CODES["unknown_currency"]
    return _Rows(
        kind=np.where(unknown_order, REFUNDED, PLACED).astype(np.int8),
        order=np.where(duplicate, rows.order, fresh_order).astype(np.int32),
        owner=np.where(missing_customer, -1, rows.owner).astype(np.int32),
        sec=sec,
        amount=amount,
        channel=rows.channel,
        currency=np.where(bad_currency, UNKNOWN_CURRENCY, rows.currency).astype(np.int8),
        region=rows.region,
        defect=defect,
    )


# --- delivery: replays, late rows, order of the file, ids -----------------------------------------


@dataclass(frozen=True)
class _Delivery:
    source: np.ndarray  # base row of each delivered row, in file order
    event_number: np.ndarray  # per delivered row
    order_number: np.ndarray  # per delivered row


def _deliver(
    rng: Generator, config: SimulationConfig, rows: _Rows, good_rows: int, orders: int
) -> _Delivery:
    """Add replays and late deliveries, sort rows by delivery time, and number events and orders.

    Rows ``[0, orders)`` are the orders; rows from ``good_rows`` on are malformed.
    """
    base = len(rows)
    replayed = rng.integers(0, good_rows, round(config.replay_share * good_rows))
    late = rng.integers(0, good_rows, round(config.late_delivery_share * good_rows))
    late_delay = 60 + (rng.standard_exponential(len(late)) * 3 * 3600).astype(np.int64)
    replay_delay = 60 + (rng.standard_exponential(len(replayed)) * 3 * 3600).astype(np.int64)
    # Unique keys (delivery second, then row) make every correct sort give the same order.
    shift = int(base + len(replayed)).bit_length()
    key = np.empty(base + len(replayed), dtype=np.int64)
    np.left_shift(rows.sec, shift, out=key[:base])
    np.bitwise_or(key[:base], np.arange(base), out=key[:base])
    key[late] += late_delay << shift
    key[base:] = ((rows.sec[replayed] + replay_delay) << shift) | np.arange(base, len(key))
    source = np.argsort(key, kind="stable")  # timsort: the rows are mostly sorted runs
    replay = source >= base
    source[replay] = replayed[source[replay] - base]

    number_of_row = np.empty(base, dtype=np.int32)
    number_of_row[source[~replay]] = np.arange(base)
    owns_order = np.zeros(base, dtype=bool)
    owns_order[:orders] = True
    malformed = rows.take(np.arange(good_rows, base))
    owns_order[good_rows:] = (malformed.kind == PLACED) & (
        malformed.defect != _KIND_CODES["duplicate_order"]
    )
    owning = source[~replay & owns_order[source]]
    order_number = np.full(int(rows.order.max(initial=-1)) + 1, -1, dtype=np.int32)
    order_number[rows.order[owning]] = np.arange(len(owning))
    unplaced = order_number < 0
    order_number[unplaced] = len(owning) + np.arange(int(unplaced.sum()))
    return _Delivery(source, number_of_row[source], order_number[rows.order[source]])


@cache
def _digit_words(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Little tables of 4-byte words: ``prefix`` + 3 digits (0..999), and 4 digits (0..9999)."""
    numbers = np.arange(10_000)
    four = np.stack([numbers // 1000, numbers // 100 % 10, numbers // 10 % 10, numbers % 10], 1)
    numbers = np.arange(1000)
    three = np.stack([numbers // 100, numbers // 10 % 10, numbers % 10], 1) + ord("0")
    head = np.concatenate([np.full((1000, 1), ord(prefix)), three], 1)
    return _as_words(head), _as_words(four + ord("0"))


def _as_words(digits: np.ndarray) -> np.ndarray:
    """Rows of four ASCII bytes as one uint32 each."""
    return np.ascontiguousarray(digits, dtype=np.uint8).view(np.uint32).ravel()


def _id_word_count(count: int) -> int:
    """Width of ids for ``count`` numbers in 4-byte words: 2 up to 10**7, 3 up to 10**11."""
    return 2 if count <= 10**7 else 3


def _id_words(prefix: str, numbers: np.ndarray, words: int) -> np.ndarray:
    """``prefix`` + zero-padded ``numbers`` as an (n, words) uint32 matrix of ASCII bytes."""
    head, four = _digit_words(prefix)
    matrix = np.empty((len(numbers), words), dtype=np.uint32)
    kind = np.int32 if words == 2 else np.int64  # ids up to 10**7 fit 32 bits
    rest = numbers.astype(kind, copy=False)
    for column in range(words - 1, 0, -1):
        # floor(rest / 10**4) by a float product: exact, as (r + 1/2) / 10**4 is never
        # within 5e-5 of an integer, and several times faster than integer division.
        high = ((rest + 0.5) * 1e-4).astype(kind)
        matrix[:, column] = four[rest - high * 10_000]
        rest = high
    matrix[:, 0] = head[rest]
    return matrix


def _strings(words: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Rows of a byte (or uint32 word) matrix as an Arrow string array, built from buffers."""
    rows, width = words.shape[0], words.shape[1] * words.itemsize
    offsets = np.arange(0, rows * width + 1, width, dtype=np.int64)
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    buffers = [bitmap, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(words))]
    null_count = 0 if valid is None else int(len(valid) - np.count_nonzero(valid))
    return pa.Array.from_buffers(pa.large_string(), rows, buffers, null_count=null_count)


def _take_rows(matrix: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows of a word matrix by index (one 8-byte gather when rows are two words)."""
    if matrix.shape[1] == 2:
        return matrix.view(np.uint64)[:, 0][index].view(np.uint32).reshape(len(index), 2)
    return matrix[index]


def _customer_ids(count: int) -> np.ndarray:
    """Customer ids (C0000123) of a simulation with ``count`` customers, as a word matrix."""
    return _id_words("C", np.arange(count), _id_word_count(count))


# --- frames -------------------------------------------------------------------------------


def _string_series(array: pa.Array) -> pd.api.extensions.ExtensionArray:
    """Arrow-backed strings without a copy (pandas' future default ``str`` dtype)."""
    return pd.StringDtype("pyarrow", na_value=np.nan).__from_arrow__(pa.chunked_array([array]))


def _instants(epoch_us: np.ndarray) -> pd.arrays.DatetimeArray:
    return pd.arrays.DatetimeArray._simple_new(  # zero-copy wrap of epoch microseconds
        epoch_us.view("M8[us]"), dtype=pd.DatetimeTZDtype("us", "UTC")
    )


def _events_frame(
    config: SimulationConfig, rows: _Rows, delivery: _Delivery, ids: np.ndarray
) -> pd.DataFrame:
    source = delivery.source
    kind, owner, defect = rows.kind[source], rows.owner[source], rows.defect[source]
    epoch_us = (rows.sec[source] + config.start_epoch_seconds) * MICROS_PER_SECOND
    epoch_us[defect == _KIND_CODES["unparseable_time"]] = _NAT
    amount = rows.amount[source].copy()
    amount[kind == CANCELLED] = np.nan
    present = owner >= 0
    owner_index = np.where(present, owner, 0)
    words = _id_word_count(len(rows))
    columns: dict[str, Any] = {
        "event_id": _string_series(_strings(_id_words("E", delivery.event_number, words))),
        "event_type": pd.Categorical.from_codes(kind, categories=list(EVENT_TYPES)),
        "order_id": _string_series(_strings(_id_words("O", delivery.order_number, words))),
        "customer_id": _string_series(_strings(_take_rows(ids, owner_index), present)),
        "occurred_at": _instants(epoch_us),
        "amount": amount,
        "currency": pd.Categorical.from_codes(rows.currency[source], categories=list(CURRENCIES)),
        "channel": pd.Categorical.from_codes(rows.channel[source], categories=list(CHANNELS)),
        "region": pd.Categorical.from_codes(rows.region[source], categories=list(REGIONS)),
    }
    return pd.DataFrame({name: columns[name] for name in EVENT_FIELDS}, copy=False)


def _malformed_frame(
    config: SimulationConfig, rows: _Rows, events: pd.DataFrame, delivery: _Delivery
) -> pd.DataFrame:
    position = np.flatnonzero(rows.defect[delivery.source] > 0)
    names = list(MALFORMED_KINDS)
    kinds = [names[code - 1] for code in rows.defect[delivery.source[position]]]
    typed = {name: str(reason) for name, reason in MALFORMED_KINDS.items()}
    typed["unparseable_time"] = str(RejectReason.MISSING_FIELD)
    start = pd.Timestamp(config.start)
    raw_times = [
        _garbled_time(start + pd.Timedelta(seconds=int(sec)), i)
        if kind == "unparseable_time"
        else None
        for i, (kind, sec) in enumerate(
            zip(kinds, rows.sec[delivery.source[position]], strict=True)
        )
    ]
    return pd.DataFrame(
        {
            "position": position,
            "event_id": events["event_id"].iloc[position].to_numpy(),
            "kind": kinds,
            "reason": [str(MALFORMED_KINDS[k]) for k in kinds],
            "reason_typed": [typed[k] for k in kinds],
            "raw_time": raw_times,
        }
    )


def _garbled_time(instant: pd.Timestamp, variant: int) -> str:
    """How broken exports write times: day-first dates, impossible hours (no reading fits)."""
    hour = f"{24 + instant.hour % 6}:{instant.minute:02d}"
    if variant % 2 == 0:
        return f"{instant.strftime('%d/%m/%Y')} {hour}"
    return f"{instant.strftime('%Y-%m-%d')}T{hour}:00Z"


def _truth_frame(
    config: SimulationConfig, customers: _Customers, ids: np.ndarray, placed_orders: np.ndarray
) -> pd.DataFrame:
    days = config.days
    start_s = config.start_epoch_seconds

    def midnight(day: np.ndarray) -> pd.arrays.DatetimeArray:
        epoch_us = (day * SECONDS_PER_DAY + start_s) * MICROS_PER_SECOND
        return _instants(np.where(day < days, epoch_us, _NAT))

    n = len(customers.rate)
    observed_until = (days * SECONDS_PER_DAY + start_s) * MICROS_PER_SECOND
    return pd.DataFrame(
        {
            "customer_id": _string_series(_strings(ids)),
            "region": pd.Categorical.from_codes(customers.region, categories=list(REGIONS)),
            "currency": pd.Categorical.from_codes(
                REGION_CURRENCY[customers.region], categories=list(CURRENCIES[:3])
            ),
            "primary_channel": pd.Categorical.from_codes(
                customers.primary_channel, categories=list(CHANNELS)
            ),
            "acquired_at": _instants((customers.acquired_sec + start_s) * MICROS_PER_SECOND),
            "order_rate": customers.rate,
            "mean_basket": customers.basket,
            "churn_hazard": customers.hazard,
            "decline_chance": np.full(n, config.decline_share),
            "decline_end_hazard": np.full(n, 1 / config.decline_days),
            "decline_decay_days": np.full(n, config.decay_days),
            "declining_from": midnight(customers.decline_day),
            "churn_at": midnight(customers.churn_day),
            "placed_orders": placed_orders,
            "observed_until": _instants(np.full(n, observed_until, dtype=np.int64)),
        },
        copy=False,
    )


# --- the public entry points -----------------------------------------------------------------


def simulate(config: SimulationConfig | None = None) -> Simulation:
    """Generate events and ground truth for ``config`` (pure: same config, same result)."""
    config = config or SimulationConfig()
    began = time.perf_counter()
    rng = Generator(PCG64(config.seed))
    calendar = _calendar(config)
    customers = _draw_customers(rng, config, calendar)
    order_parts: list[_Rows] = []
    follow_ups: list[_Rows] = []
    for begin in range(0, len(customers.rate), BLOCK_CUSTOMERS):
        block = slice(begin, begin + BLOCK_CUSTOMERS)
        first_order = sum(len(p) for p in order_parts)
        orders, after = _draw_block(rng, config, calendar, customers, block, first_order)
        order_parts.append(orders)
        follow_ups.extend(after)
    orders = sum(len(p) for p in order_parts)
    good_rows = orders + sum(len(p) for p in follow_ups)
    malformed = _draw_malformed(rng, config, order_parts, good_rows)
    rows = _Rows.concat([*order_parts, *follow_ups, malformed])
    delivery = _deliver(rng, config, rows, good_rows, orders)

    ids = _customer_ids(len(customers.rate))
    events = _events_frame(config, rows, delivery, ids)
    placed_orders = np.bincount(rows.owner[:orders], minlength=len(customers.rate))
    truth = _truth_frame(config, customers, ids, placed_orders)
    bad = _malformed_frame(config, rows, events, delivery)
    return Simulation(config, events, truth, bad, time.perf_counter() - began)


# --- writing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenSimulation:
    """Where a simulation was written, and how long writing took."""

    events: Path
    truth: Path
    seconds: float


def default_truth_path(events_path: str | Path) -> Path:
    """``events.parquet`` → ``events_truth.parquet`` (the truth is always Parquet)."""
    path = Path(events_path)
    return path.with_name(f"{path.stem}_truth.parquet")


def write_simulation(
    sim: Simulation, out_path: str | Path, truth_path: str | Path | None = None
) -> WrittenSimulation:
    """Write the events (CSV or Parquet, by suffix) and the truth (Parquet) beside them."""
    began = time.perf_counter()
    out = Path(out_path)
    truth = Path(truth_path) if truth_path is not None else default_truth_path(out)
    pairs = zip(sim.malformed["position"], sim.malformed["raw_time"], strict=True)
    raw_times = {int(position): text for position, text in pairs if isinstance(text, str)}
    write_events(sim.events, out, raw_times=raw_times)
    write_parquet(sim.truth, truth)
    return WrittenSimulation(out, truth, time.perf_counter() - began)


EVENT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def write_events(
    events: pd.DataFrame, path: str | Path, raw_times: dict[int, str] | None = None
) -> None:
    """Write canonical events as CSV or Parquet, by the file's suffix.

    Parquet keeps types: ``occurred_at`` timestamp[us, UTC], ``amount`` float64, strings
    elsewhere. CSV writes ISO 8601 times with ``Z``, empty cells for missing values, and
    ``raw_times`` (row position → text) in place of missing times: how a broken export
    writes an unreadable time.
    """
    path = Path(path)
    kind = EVENT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown events format {path.suffix!r}; use .csv or .parquet")
    table = _arrow_events(events, plain_strings=kind == "csv")
    if kind == "parquet":
        write_parquet(table, path)
        return
    times = _iso_text(table.column("occurred_at").combine_chunks())
    if raw_times:
        position = np.array(sorted(raw_times), dtype=np.int64)
        mask = np.zeros(len(times), dtype=bool)
        mask[position] = True
        texts = pa.array([raw_times[int(p)] for p in position], type=pa.string())
        times = pc.replace_with_mask(times, pa.array(mask), texts)
    table = table.set_column(EVENT_FIELDS.index("occurred_at"), "occurred_at", times)
    _write_csv(table, path)


def write_parquet(data: pd.DataFrame | pa.Table, path: str | Path) -> None:
    """A frame as Parquet with plain types: no pandas or Arrow schema metadata, so every
    reader sees strings (not categoricals), UTC timestamps and doubles. zstd: small files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = data if isinstance(data, pa.Table) else _plain_table(data)
    pq.write_table(table, path, store_schema=False, compression="zstd", compression_level=1)


def _plain_table(frame: pd.DataFrame) -> pa.Table:
    """Columns as Arrow arrays: UTC instants become timestamp[us, UTC], NaN/NaT null."""
    arrays = {}
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            utc = column.dt.tz_convert(None).to_numpy()
            arrays[str(name)] = pa.array(utc, from_pandas=True).cast(pa.timestamp("us", tz="UTC"))
        else:
            arrays[str(name)] = pa.array(column, from_pandas=True)
    return pa.table(arrays)


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _arrow_events(events: pd.DataFrame, plain_strings: bool = False) -> pa.Table:
    """Canonical columns with canonical types (``plain_strings``: no dictionaries)."""
    table = _plain_table(events.reindex(columns=list(EVENT_FIELDS)))
    wanted = {"occurred_at": pa.timestamp("us", tz="UTC"), "amount": pa.float64()}
    for index, field in enumerate(table.schema):
        kind = wanted.get(field.name)
        if kind is None and (plain_strings or not _is_text(field.type)):
            kind = pa.string()
        if kind is not None and field.type != kind:
            table = table.set_column(index, field.name, table.column(index).cast(kind))
    return table


def _write_csv(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (",".join(table.column_names) + "\n").encode()
    try:
        with path.open("wb") as sink:
            sink.write(header)
            options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
            pa_csv.write_csv(table, sink, options)
    except pa.ArrowInvalid:  # a value holds a comma, quote or newline: quote strings
        with path.open("wb") as sink:
            sink.write(header)
            options = pa_csv.WriteOptions(include_header=False, quoting_style="needed")
            pa_csv.write_csv(table, sink, options)


@cache
def _clock_table() -> np.ndarray:
    """The text HH:MM:SS of every second of a day, as an (86400, 8) byte matrix."""
    second = np.arange(SECONDS_PER_DAY)
    parts = [second // 3600, second // 60 % 60, second % 60]
    digits = np.stack([v for part in parts for v in (part // 10, part % 10)], axis=1) + ord("0")
    matrix = np.full((SECONDS_PER_DAY, 8), ord(":"), dtype=np.uint8)
    matrix[:, [0, 1, 3, 4, 6, 7]] = digits
    return matrix


def _iso_text(instants: pa.Array) -> pa.Array:
    """Timestamps as ISO 8601 text with ``Z`` (microseconds only when some row has them)."""
    valid = ~np.asarray(instants.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    micros = instants.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    seconds = np.floor_divide(micros, MICROS_PER_SECOND)
    fraction = micros - seconds * MICROS_PER_SECOND
    days = np.floor_divide(seconds, SECONDS_PER_DAY)
    first = int(days.min(initial=0))
    calendar = np.arange(first, int(days.max(initial=0)) + 1).astype("datetime64[D]")
    dates = np.array(np.datetime_as_string(calendar, unit="D"), dtype="S10")
    date_table = np.frombuffer(dates.tobytes(), dtype=np.uint8).reshape(-1, 10)
    with_fraction = bool(np.any(fraction[valid] != 0))
    width = 27 if with_fraction else 20
    matrix = np.empty((len(micros), width), dtype=np.uint8)
    matrix[:, :10] = date_table[days - first]
    matrix[:, 10] = ord("T")
    matrix[:, 11:19] = _clock_table()[seconds - days * SECONDS_PER_DAY]
    if with_fraction:
        matrix[:, 19] = ord(".")
        for column in range(25, 19, -1):
            matrix[:, column] = fraction % 10 + ord("0")
            fraction = fraction // 10
    matrix[:, -1] = ord("Z")
    return _strings(matrix, None if valid.all() else valid).cast(pa.string())


# --- ground truth queries ------------------------------------------------------------------------


def _instant(value: Any) -> pd.Timestamp:
    instant = pd.Timestamp(value)
    return instant.tz_localize("UTC") if instant.tzinfo is None else instant.tz_convert("UTC")


def _check_observed(truth: pd.DataFrame, instant: pd.Timestamp) -> None:
    if len(truth) and instant >= truth["observed_until"].iloc[0]:
        raise ValueError(
            f"{instant} is not before the end of the simulation "
            f"({truth['observed_until'].iloc[0]}): the latent state is unknown there"
        )


def alive_at(truth: pd.DataFrame, at: datetime | date | str | pd.Timestamp) -> pd.Series:
    """Whether each customer is acquired and has not churned at instant ``at`` (the truth)."""
    instant = _instant(at)
    _check_observed(truth, instant)
    acquired = (truth["acquired_at"] <= instant).to_numpy()
    churned = (truth["churn_at"].notna() & (truth["churn_at"] <= instant)).to_numpy()
    return pd.Series(acquired & ~churned, index=pd.Index(truth["customer_id"]), name="alive")


def oracle_churn_probability(
    truth: pd.DataFrame, cutoff: datetime | date | str | pd.Timestamp, horizon_days: float
) -> pd.Series:
    """P(no order in ``(cutoff, cutoff + horizon]``) under the generator, per customer.

    The oracle knows what the generator knows at the cutoff: every latent parameter
    and the current latent state (healthy, declining since when, or churned), but not
    the future (when a healthy customer will start to decline, when a decline ends).
    It integrates the day-level Markov chain and the seasonal Poisson process over the
    horizon, exactly up to the day grid. Customers not yet acquired get NaN.
    """
    instant = _instant(cutoff)
    _check_observed(truth, instant)
    if not horizon_days > 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    window = _window_intensity(instant, float(horizon_days))
    result = np.full(len(truth), np.nan)
    acquired = (truth["acquired_at"] <= instant).to_numpy()
    churned = acquired & (truth["churn_at"].notna() & (truth["churn_at"] <= instant)).to_numpy()
    declining = (
        acquired
        & ~churned
        & (truth["declining_from"].notna() & (truth["declining_from"] <= instant)).to_numpy()
    )
    healthy = acquired & ~churned & ~declining
    result[churned] = 1.0
    day0 = instant.floor("D")
    groups = truth[["decline_chance", "decline_end_hazard", "decline_decay_days"]].to_numpy()
    for params in np.unique(groups[acquired & ~churned], axis=0):
        chance, delta, decay = (float(v) for v in params)
        same = (groups == params).all(axis=1)
        rows = np.flatnonzero(same & declining)
        if len(rows):
            elapsed = (day0 - truth["declining_from"].iloc[rows]).dt.days.to_numpy()
            rate = truth["order_rate"].to_numpy()[rows]
            result[rows] = _no_order_declining(rate, elapsed, window, delta, decay)
        rows = np.flatnonzero(same & healthy)
        for block in range(0, len(rows), 50_000):
            part = rows[block : block + 50_000]
            rate = truth["order_rate"].to_numpy()[part]
            hazard = truth["churn_hazard"].to_numpy()[part]
            acquired_today = (truth["acquired_at"].iloc[part].dt.floor("D") == day0).to_numpy()
            result[part] = _no_order_healthy(
                rate, hazard, acquired_today, window, chance, delta, decay
            )
    return pd.Series(result, index=pd.Index(truth["customer_id"]), name="oracle_churn_probability")


def _window_intensity(instant: pd.Timestamp, horizon_days: float) -> np.ndarray:
    """Per UTC day overlapping the window: the share of a day's orders inside it × season."""
    day_us = SECONDS_PER_DAY * MICROS_PER_SECOND
    start_us = instant.value // 1000
    end_us = start_us + round(horizon_days * day_us)
    days = np.arange(start_us // day_us, (end_us - 1) // day_us + 1)
    begin = np.clip(start_us - days * day_us, 0, day_us) / MICROS_PER_SECOND
    finish = np.clip(end_us - days * day_us, 0, day_us) / MICROS_PER_SECOND
    share = _day_share_before(finish) - _day_share_before(begin)
    return share * day_seasonality(days.astype("datetime64[D]"))


def _length_probabilities(hazard: float, days: int) -> np.ndarray:
    """P(a phase left at each midnight lasts n = 1..days-1 days), then P(it lasts >= days)."""
    survive = np.exp(-hazard * np.arange(days))
    return np.append(survive[:-1] * (1 - np.exp(-hazard)), survive[-1])


def _no_order_declining(
    rate: np.ndarray, elapsed: np.ndarray, window: np.ndarray, delta: float, decay: float
) -> np.ndarray:
    """P(no order in the window) for customers declining for ``elapsed`` days at its start."""
    fading = np.exp(-(np.arange(len(window)) + 0.5) / decay)
    reach = np.cumsum(window * fading)  # expected orders per unit rate, by decline end
    scaled = rate * np.exp(-elapsed / decay)
    return np.exp(-np.outer(scaled, reach)) @ _length_probabilities(delta, len(window))


def _no_order_healthy(
    rate: np.ndarray,
    hazard: np.ndarray,
    acquired_today: np.ndarray,
    window: np.ndarray,
    chance: float,
    delta: float,
    decay: float,
) -> np.ndarray:
    """P(no order in the window) for healthy customers: stay healthy, or leave at a
    midnight inside it and then churn (1 - chance) or decline (chance)."""
    days = len(window)
    healthy_reach = np.cumsum(window)[None, :] - np.where(acquired_today, window[0], 0)[:, None]
    no_order = np.exp(-rate[:, None] * healthy_reach)  # column k: none in days 0..k
    leave_at = np.arange(1, days)
    leave = np.exp(-np.outer(hazard, leave_at - 1)) * (1 - np.exp(-hazard))[:, None]
    after = (1 - chance) + chance * _decline_from_day(rate, window, delta, decay)[:, 1:]
    stay = np.exp(-hazard * (days - 1)) * no_order[:, -1]
    return (leave * no_order[:, :-1] * after).sum(axis=1) + stay


def _decline_from_day(
    rate: np.ndarray, window: np.ndarray, delta: float, decay: float
) -> np.ndarray:
    """P(no order from window day j on | a decline starts at day j), for every rate and j.

    Computed on a log-spaced grid of rates and interpolated: O(grid × days²) once
    instead of O(customers × days²).
    """
    days = len(window)
    low, high = float(rate.min()), float(rate.max())
    grid = np.geomspace(low, high, 257) if high > low else np.array([low, low * 1.0001])
    fading = np.exp(-(np.arange(days) + 0.5) / decay)
    table = np.ones((len(grid), days))
    for start in range(1, days):
        reach = np.cumsum(window[start:] * fading[: days - start])
        table[:, start] = np.exp(-np.outer(grid, reach)) @ _length_probabilities(
            delta, days - start
        )
    position = np.log(rate)
    knots = np.log(grid)
    index = np.clip(np.searchsorted(knots, position) - 1, 0, len(grid) - 2)
    fraction = np.clip((position - knots[index]) / (knots[index + 1] - knots[index]), 0, 1)
    return table[index] * (1 - fraction)[:, None] + table[index + 1] * fraction[:, None]
