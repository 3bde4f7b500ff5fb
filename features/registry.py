"""The feature registry: every model input with its type, range and what it measures.

One list, in a fixed order, is the contract between the feature builders, the
models (``FEATURE_COLUMNS`` is logged with every MLflow run) and serving. The
schema check (``features.schema``) and the documentation table are derived
from it, so a feature is described in exactly one place.

Units: money in the policy's base currency (every amount converted with the
policy's fx rates), durations in days (floats), all as of the cutoff ``t``
with only events at or before ``t``. Windows ``Nd`` are ``(t - N days, t]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Kind = Literal["int", "float", "category"]

#: Channels with their own share feature; any other channel counts as ``other``.
CHANNELS = ("web", "pos", "marketplace", "app")
#: The frequency / monetary windows, in days.
WINDOWS = (30, 90, 180, 365)


@dataclass(frozen=True, slots=True)
class Feature:
    """One model input: name, kind, allowed range, whether it may be missing, and meaning."""

    name: str
    kind: Kind
    description: str
    low: float = -math.inf
    high: float = math.inf
    nullable: bool = False

    @property
    def dtype(self) -> str:
        """The pandas dtype of the column in a feature frame."""
        return {"int": "int64", "float": "float64", "category": "object"}[self.kind]


def _f(name: str, description: str, low: float = 0.0, high: float = math.inf, nullable: bool = False) -> Feature:
    return Feature(name, "float", description, low, high, nullable)


def _i(name: str, description: str, low: float = 0.0, high: float = math.inf) -> Feature:
    return Feature(name, "int", description, low, high)


def _c(name: str, description: str) -> Feature:
    return Feature(name, "category", description)


FEATURES: tuple[Feature, ...] = (
    # recency and tenure
    _f("recency_days", "Days since the customer's last placed order."),
    _f("tenure_days", "Days since the customer's first placed order."),
    # frequency
    *(_i(f"orders_{n}d", f"Orders placed in the last {n} days.") for n in WINDOWS),
    _i("orders_lifetime", "Orders placed since the first order."),
    # monetary (gross placed value)
    *(_f(f"spend_{n}d", f"Value of orders placed in the last {n} days (gross, base currency).") for n in WINDOWS),
    _f("spend_lifetime", "Value of all orders placed (gross, base currency)."),
    _f("net_spend_365d", "Value of orders placed in the last 365 days minus what refunds and cancels removed by t."),
    _f("net_spend_lifetime", "Value of all orders placed minus what refunds and cancels removed by t."),
    # order value
    _f("avg_order_value", "Average gross order value (spend_lifetime / orders_lifetime)."),
    _f("last_order_value", "Gross value of the most recent order (the largest of several placed at that instant)."),
    _f("max_order_value", "Gross value of the largest order."),
    # rhythm
    _f("orders_per_month", "Purchase rate: orders_lifetime per 30 days of tenure (tenure at least 30 days)."),
    _f("interpurchase_days_mean", "Mean days between consecutive orders (missing with fewer than 2 orders).", nullable=True),
    _f("interpurchase_days_std", "Standard deviation of days between orders (missing with fewer than 3 orders).", nullable=True),
    _f("last_interpurchase_days", "Days between the last two orders (missing with fewer than 2 orders).", nullable=True),
    _f("gap_ratio", "Current gap over the usual gap: recency_days / interpurchase_days_mean (missing with fewer than 2 orders).", nullable=True),
    # trend
    _f("orders_trend_90d", "Orders in the last 90 days vs the 90 before, smoothed: (a + 1) / (b + 1)."),
    _f("spend_trend_90d", "Spend in the last 90 days vs the 90 before, smoothed by one average order: (a + aov) / (b + aov)."),
    # returns
    _f("refund_rate", "Share of orders with at least one refund by t.", high=1.0),
    _f("cancel_rate", "Share of orders cancelled by t.", high=1.0),
    _f("refunded_value_share", "Share of gross order value removed by refunds and cancels by t.", high=1.0),
    # channel mix
    *(_f(f"channel_share_{c}", f"Share of orders placed through the {c} channel.", high=1.0) for c in CHANNELS),
    _f("channel_share_other", "Share of orders placed through any other (or no) channel.", high=1.0),
    _i("channels_used", "Channels the customer ordered through: each of the four named ones, any others as one."),
    # where
    _c("region", "Region of the latest placed order (as the tier engine uses it; empty when unknown)."),
    # tier state, from the rules engine
    _c("tier", "Current tier name, from the rules engine."),
    _i("tier_rank", "Current tier as its rank on the ladder (0 = the default tier)."),
    _i("eligible_tier_rank", "Rank of the tier that qualifying spend alone gives (below tier_rank while in grace)."),
    _i("in_grace", "1 when the customer is kept above their eligible tier by the downgrade grace period."),
    _f("qualifying_spend", "Matured spend that counts towards the tier (rules engine)."),
    _f("pending_spend", "Spend still inside the buffer period, not yet counting (rules engine)."),
    _i("qualifying_orders", "Orders that count towards the tier (rules engine)."),
    _f("spend_to_next_tier", "Qualifying spend still needed for the next tier (missing at the top tier).", nullable=True),
    _f("progress_to_next_tier", "Qualifying spend over the next tier's threshold (missing at the top tier).", nullable=True),
    _f("margin_above_threshold", "Qualifying spend minus the current tier's threshold (negative while in grace).", low=-math.inf),
    _f("days_until_grace_end", "Days until a downgrade is allowed: last order + grace period - t, at least 0."),
    _f("days_in_tier", "Days since the current tier began (rules engine tier_since)."),
    _i("tier_changes", "Tier transitions so far (rules engine)."),
)

FEATURE_COLUMNS: list[str] = [feature.name for feature in FEATURES]
CATEGORICAL_COLUMNS: list[str] = [feature.name for feature in FEATURES if feature.kind == "category"]
FEATURES_BY_NAME: dict[str, Feature] = {feature.name: feature for feature in FEATURES}
#: The key columns before the features in every feature frame.
KEY_COLUMNS: list[str] = ["customer_id", "cutoff"]
#: Label columns of a training set, after the features.
LABEL_COLUMNS: list[str] = ["churned", "tier_at_cutoff", "tier_at_horizon", "tier_change"]
TIER_CHANGES = ("down", "same", "up")


def markdown_table() -> str:
    """The feature table of ``docs/features.md`` (a test keeps the document in step with the code)."""

    def bound(value: float) -> str:
        return "" if math.isinf(value) else f"{value:g}"

    lines = ["| feature | type | range | may be missing | what it measures |", "|---|---|---|---|---|"]
    for feature in FEATURES:
        if feature.kind == "category":
            span = "text"
        else:
            span = f"[{bound(feature.low) or '-inf'}, {bound(feature.high) or 'inf'}]"
        missing = "yes" if feature.nullable else ""
        lines.append(f"| `{feature.name}` | {feature.kind} | {span} | {missing} | {feature.description} |")
    return "\n".join(lines) + "\n"
