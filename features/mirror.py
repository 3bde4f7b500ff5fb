"""The feature SQL of ``features.sql``, mirrored in plain Python for one customer.

The online endpoint needs one customer's row in a few milliseconds; planning the
feature SQL on DuckDB costs tens of milliseconds per call on this machine. This
module evaluates the *same formulas* (same integer sums, same conversions in the
same order) on a handful of events, and tests prove it equals the SQL row for
row (``tests/unit/test_features.py``). A change to a feature is a change to
``features.sql`` *and* here; the equality tests fail until both agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from features.registry import CHANNELS, WINDOWS
from tier_ml.events import EventType, OrderEvent
from tier_ml.money import MICROS_PER_DAY, MICROS_PER_UNIT
from tier_ml.policy import Policy
from tier_ml.rules import CustomerTier

DAY = float(MICROS_PER_DAY)
UNIT = float(MICROS_PER_UNIT)


def _stddev_samp(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def behaviour_row(events: Iterable[OrderEvent], as_of_us: int) -> dict[str, Any] | None:
    """``features.sql.behaviour_sql`` for one customer's valid events; None without a placed order."""
    placed: list[tuple[int, str, int, str]] = []
    refunded_us: dict[str, int] = {}
    has_refund: set[str] = set()
    cancelled: set[str] = set()
    for event in events:
        if event.at_us > as_of_us:
            continue
        if event.event_type == EventType.PLACED:
            placed.append((event.at_us, event.order_id, event.amount_us, (event.channel or "").lower()))
        elif event.event_type == EventType.REFUNDED:
            refunded_us[event.order_id] = refunded_us.get(event.order_id, 0) + event.amount_us
            has_refund.add(event.order_id)
        else:
            cancelled.add(event.order_id)
    if not placed:
        return None
    placed.sort(key=lambda order: order[0])  # by time only, as the SQL orders them
    n = len(placed)
    last_at = placed[-1][0]
    ages = [as_of_us - at for at, _, _, _ in placed]
    values = [value for _, _, value, _ in placed]
    removed = [
        value if order in cancelled else min(value, refunded_us.get(order, 0))
        for _, order, value, _ in placed
    ]
    gaps = [placed[i][0] - placed[i - 1][0] for i in range(1, n)]
    recency_us, tenure_us = min(ages), max(ages)
    gross_us, removed_us = sum(values), sum(removed)

    def within(days: int) -> list[int]:
        return [i for i, age in enumerate(ages) if age < days * MICROS_PER_DAY]

    prior = [i for i, age in enumerate(ages) if 90 * MICROS_PER_DAY <= age < 180 * MICROS_PER_DAY]
    recent90 = within(90)
    spend_90_us = sum(values[i] for i in recent90)
    spend_prior_us = sum(values[i] for i in prior)
    channels = [channel for _, _, _, channel in placed]
    row: dict[str, Any] = {
        "recency_days": float(recency_us) / DAY,
        "tenure_days": float(tenure_us) / DAY,
    }
    for days in WINDOWS:
        row[f"orders_{days}d"] = len(within(days))
    row["orders_lifetime"] = n
    for days in WINDOWS:
        row[f"spend_{days}d"] = float(sum(values[i] for i in within(days))) / UNIT
    row["spend_lifetime"] = float(gross_us) / UNIT
    row["net_spend_365d"] = float(sum(values[i] - removed[i] for i in within(365))) / UNIT
    row["net_spend_lifetime"] = float(gross_us - removed_us) / UNIT
    row["avg_order_value"] = float(gross_us) / UNIT / float(n)
    row["last_order_value"] = float(max(v for (at, _, v, _) in placed if at == last_at)) / UNIT
    row["max_order_value"] = float(max(values)) / UNIT
    row["orders_per_month"] = float(n) * 30.0 / max(float(tenure_us) / DAY, 30.0)
    row["interpurchase_days_mean"] = float(tenure_us - recency_us) / DAY / float(n - 1) if n > 1 else None
    row["interpurchase_days_std"] = _stddev_samp([float(gap) / DAY for gap in gaps])
    last_gaps = [gaps[i - 1] for i in range(1, n) if placed[i][0] == last_at]
    row["last_interpurchase_days"] = float(min(last_gaps)) / DAY if last_gaps else None
    row["gap_ratio"] = (
        float(recency_us) / float(tenure_us - recency_us) * float(n - 1)
        if n > 1 and tenure_us > recency_us
        else None
    )
    row["orders_trend_90d"] = float(len(recent90) + 1) / float(len(prior) + 1)
    row["spend_trend_90d"] = (
        float(spend_90_us * n + gross_us) / float(spend_prior_us * n + gross_us) if gross_us > 0 else 1.0
    )
    row["refund_rate"] = float(sum(1 for _, o, _, _ in placed if o in has_refund)) / float(n)
    row["cancel_rate"] = float(sum(1 for _, o, _, _ in placed if o in cancelled)) / float(n)
    row["refunded_value_share"] = float(removed_us) / float(gross_us) if gross_us > 0 else 0.0
    for channel in CHANNELS:
        row[f"channel_share_{channel}"] = float(channels.count(channel)) / float(n)
    row["channel_share_other"] = float(sum(1 for c in channels if c not in CHANNELS)) / float(n)
    row["channels_used"] = sum(1 for c in CHANNELS if c in channels) + (
        1 if any(c not in CHANNELS and c != "" for c in channels) else 0
    )
    return row


def tier_row(state: CustomerTier, policy: Policy, as_of_us: int) -> dict[str, Any]:
    """The tier columns of ``features.sql.features_sql`` from a rules-engine state."""
    thresholds = policy.thresholds_us(state.region)
    top = len(policy.tiers) - 1
    rank = state.tier
    q = state.qualifying_us
    following = thresholds[rank + 1] if rank < top else None
    return {
        "region": state.region,
        "tier": policy.tier_names[rank],
        "tier_rank": rank,
        "eligible_tier_rank": state.eligible_tier,
        "in_grace": 1 if rank > state.eligible_tier else 0,
        "qualifying_spend": float(q) / UNIT,
        "pending_spend": float(state.pending_us) / UNIT,
        "qualifying_orders": state.qualifying_orders,
        "spend_to_next_tier": None if following is None else float(max(0, following - q)) / UNIT,
        "progress_to_next_tier": (
            None if following is None else (float(q) / float(following) if following > 0 else 1.0)
        ),
        "margin_above_threshold": float(q - thresholds[rank]) / UNIT,
        "days_until_grace_end": float(max(0, state.last_order_at_us + policy.grace_us - as_of_us)) / DAY,
        "days_in_tier": float(as_of_us - state.tier_since_us) / DAY,
        "tier_changes": len(state.changes),
    }
