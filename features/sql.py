"""The feature definitions as SQL text: one place, parameterised, portable.

Two statements define every feature:

- :func:`behaviour_sql` aggregates a relation of *valid canonical events* (one
  row per event: ``customer_id, event_type ('placed' | 'refunded' |
  'cancelled'), order_id, at_us, amount_us, channel, region``; money in
  base-currency micro-units, time in epoch microseconds) into one row per
  customer as of ``t``: recency, frequency, monetary, rhythm, trend, returns,
  channel mix. It is two steps: :func:`behaviour_aggregates_sql` (integer sums,
  counts, extremes and the spread of the gaps per customer, ``AGGREGATE_COLUMNS``)
  and :func:`behaviour_features_sql` (the features from those aggregates).
- :func:`features_sql` joins that with a relation of *tier states* computed by
  the rules engine (``customer_id, tier_rank, eligible_rank, qualifying_us,
  pending_us, qualifying_orders, tier_since_us, last_order_at_us, region,
  tier_changes``) and adds the tier features.

The single-customer path runs them on a tiny in-memory relation, the tier
store's batch and a Spark job over their own relations: only ANSI constructs
that both DuckDB and Spark SQL share (``CASE``, ``lag`` / ``row_number``
windows, ``stddev_samp``, ``greatest`` / ``least``, ``CAST(.. AS DOUBLE)``), no
engine-specific functions. The DuckDB batch path computes the same aggregates
faster from placements sorted once (``features.placements``; tests prove it
equal) and falls back to :func:`behaviour_aggregates_sql`. Every value is
computed from integers and converted once, so the paths agree exactly (the
standard deviation, a sum of doubles, to rounding).
"""

from __future__ import annotations

from features.registry import CHANNELS, WINDOWS
from tier_ml.money import MICROS_PER_DAY, MICROS_PER_UNIT
from tier_ml.policy import Policy

DAY = float(MICROS_PER_DAY)
UNIT = float(MICROS_PER_UNIT)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _days(expr: str) -> str:
    return f"CAST({expr} AS DOUBLE) / {DAY!r}"


def _money(expr: str) -> str:
    return f"CAST({expr} AS DOUBLE) / {UNIT!r}"


def _ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator as a double (callers make sure the denominator is not 0)."""
    return f"CAST({numerator} AS DOUBLE) / CAST({denominator} AS DOUBLE)"


#: The per-customer aggregates behind the event features: integers (micro-units, microseconds,
#: counts) and one double, the standard deviation of the gaps between orders in days. Both
#: engines' first step yields these (``behaviour_aggregates_sql``, or ``features.sorted`` from
#: sorted placements); :func:`behaviour_features_sql` turns them into the features.
AGGREGATE_COLUMNS: tuple[str, ...] = (
    "n_orders", "recency_us", "tenure_us", "gross_us", "removed_us", "net_365_us", "max_value_us",
    "last_value_us", "last_gap_us", "gap_std_days", "orders_prior_90", "spend_prior_90_us",
    "refunded_orders", "cancelled_orders", "named_other_orders",
    *(f"orders_{n}" for n in WINDOWS), *(f"spend_{n}_us" for n in WINDOWS),
    *(f"channel_{c}_orders" for c in CHANNELS), "channel_other_orders",
)


def channel_code_sql(column: str = "channel") -> str:
    """The channel as a small code: 1..k the named channels (any case), 0 none, -1 another.

    The exact lower-case names are tried first (nearly every row), so ``lower`` only runs
    on the rest.
    """
    named = " ".join(f"WHEN {_quote(c)} THEN {i}" for i, c in enumerate(CHANNELS, start=1))
    return (
        f"CASE {column} {named} "
        f"ELSE CASE lower(coalesce({column}, '')) {named} WHEN '' THEN 0 ELSE -1 END END"
    )


def within_sql(days: int, age: str = "age_us") -> str:
    """The order is inside the window ``(t - days, t]`` (``age`` = t - placed at, never negative)."""
    return f"{age} < {days * MICROS_PER_DAY}"


#: The 90 days before the last 90 (the base of the trend features).
PRIOR_90 = f"age_us >= {90 * MICROS_PER_DAY} AND age_us < {180 * MICROS_PER_DAY}"


def behaviour_aggregates_sql(events: str, as_of_us: int) -> str:
    """One row per customer with a placed order at or before ``as_of_us``: ``AGGREGATE_COLUMNS``.

    ``events`` is a table name or a parenthesised subquery with the columns in the
    module docstring; rows after ``as_of_us`` are ignored here too, so the text is
    point-in-time correct whatever it is given. Orders are ordered by time only
    (no string tie-break to sort): orders placed at one instant give gaps of 0
    whatever their order, and the "last" order is the largest at the last instant.
    """
    t = int(as_of_us)
    windows = [f"sum(CASE WHEN {within_sql(n)} THEN 1 ELSE 0 END) AS orders_{n}" for n in WINDOWS]
    windows += [f"sum(CASE WHEN {within_sql(n)} THEN value_us ELSE 0 END) AS spend_{n}_us" for n in WINDOWS]
    channels = [
        f"sum(CASE WHEN channel_code = {i} THEN 1 ELSE 0 END) AS channel_{c}_orders"
        for i, c in enumerate(CHANNELS, start=1)
    ]
    channels.append("sum(CASE WHEN channel_code <= 0 THEN 1 ELSE 0 END) AS channel_other_orders")
    n_sql = ",\n           ".join([*windows, *channels])
    return f"""
    WITH placed AS (
        SELECT customer_id, order_id, at_us, amount_us AS value_us, {channel_code_sql()} AS channel_code
        FROM {events}
        WHERE event_type = 'placed' AND at_us <= {t}
    ), adjusted AS (
        SELECT order_id,
               sum(CASE WHEN event_type = 'refunded' THEN amount_us ELSE 0 END) AS refunded_us,
               max(CASE WHEN event_type = 'refunded' THEN 1 ELSE 0 END) AS has_refund,
               max(CASE WHEN event_type = 'cancelled' THEN 1 ELSE 0 END) AS is_cancelled
        FROM {events}
        WHERE event_type <> 'placed' AND at_us <= {t}
        GROUP BY order_id
    ), orders AS (
        SELECT p.customer_id, p.at_us, p.value_us, p.channel_code,
               {t} - p.at_us AS age_us,
               coalesce(a.has_refund, 0) AS has_refund,
               coalesce(a.is_cancelled, 0) AS is_cancelled,
               CASE WHEN a.is_cancelled = 1 THEN p.value_us
                    ELSE least(p.value_us, coalesce(a.refunded_us, 0)) END AS removed_us,
               p.at_us - lag(p.at_us) OVER (PARTITION BY p.customer_id ORDER BY p.at_us) AS gap_us,
               CASE WHEN p.at_us = max(p.at_us) OVER (PARTITION BY p.customer_id) THEN 1 ELSE 0 END
                   AS is_last
        FROM placed p LEFT JOIN adjusted a ON a.order_id = p.order_id
    )
    SELECT customer_id,
           count(*) AS n_orders,
           min(age_us) AS recency_us,
           max(age_us) AS tenure_us,
           sum(value_us) AS gross_us,
           sum(removed_us) AS removed_us,
           sum(CASE WHEN {within_sql(365)} THEN value_us - removed_us ELSE 0 END) AS net_365_us,
           max(value_us) AS max_value_us,
           max(CASE WHEN is_last = 1 THEN value_us END) AS last_value_us,
           min(CASE WHEN is_last = 1 THEN gap_us END) AS last_gap_us,
           stddev_samp(CAST(gap_us AS DOUBLE) / {DAY!r}) AS gap_std_days,
           sum(CASE WHEN {PRIOR_90} THEN 1 ELSE 0 END) AS orders_prior_90,
           sum(CASE WHEN {PRIOR_90} THEN value_us ELSE 0 END) AS spend_prior_90_us,
           sum(has_refund) AS refunded_orders,
           sum(is_cancelled) AS cancelled_orders,
           sum(CASE WHEN channel_code < 0 THEN 1 ELSE 0 END) AS named_other_orders,
           {n_sql}
    FROM orders
    GROUP BY customer_id
    """


def behaviour_features_sql(aggregates: str) -> str:
    """The event features (``customer_id`` then behaviour columns) from per-customer ``AGGREGATE_COLUMNS``.

    Every value is computed from the integer aggregates and converted once.
    """
    windows = [f"CAST(orders_{n} AS BIGINT) AS orders_{n}d" for n in WINDOWS]
    spends = [f"{_money(f'spend_{n}_us')} AS spend_{n}d" for n in WINDOWS]
    shares = [f"{_ratio(f'channel_{c}_orders', 'n_orders')} AS channel_share_{c}" for c in CHANNELS]
    used = " + ".join(f"CASE WHEN channel_{c}_orders > 0 THEN 1 ELSE 0 END" for c in CHANNELS)
    return f"""
    SELECT customer_id,
           {_days('recency_us')} AS recency_days,
           {_days('tenure_us')} AS tenure_days,
           {", ".join(windows)},
           CAST(n_orders AS BIGINT) AS orders_lifetime,
           {", ".join(spends)},
           {_money('gross_us')} AS spend_lifetime,
           {_money('net_365_us')} AS net_spend_365d,
           {_money('gross_us - removed_us')} AS net_spend_lifetime,
           {_money('gross_us')} / CAST(n_orders AS DOUBLE) AS avg_order_value,
           {_money('last_value_us')} AS last_order_value,
           {_money('max_value_us')} AS max_order_value,
           CAST(n_orders AS DOUBLE) * 30.0
               / greatest({_days('tenure_us')}, 30.0) AS orders_per_month,
           CASE WHEN n_orders > 1 THEN {_days('tenure_us - recency_us')} / CAST(n_orders - 1 AS DOUBLE) END
               AS interpurchase_days_mean,
           gap_std_days AS interpurchase_days_std,
           {_days('last_gap_us')} AS last_interpurchase_days,
           CASE WHEN n_orders > 1 AND tenure_us > recency_us
                THEN {_ratio('recency_us', 'tenure_us - recency_us')} * CAST(n_orders - 1 AS DOUBLE) END
               AS gap_ratio,
           CAST(orders_90 + 1 AS DOUBLE) / CAST(orders_prior_90 + 1 AS DOUBLE) AS orders_trend_90d,
           CASE WHEN gross_us > 0
                THEN {_ratio('spend_90_us * n_orders + gross_us', 'spend_prior_90_us * n_orders + gross_us')}
                ELSE 1.0 END AS spend_trend_90d,
           {_ratio('refunded_orders', 'n_orders')} AS refund_rate,
           {_ratio('cancelled_orders', 'n_orders')} AS cancel_rate,
           CASE WHEN gross_us > 0 THEN {_ratio('removed_us', 'gross_us')} ELSE 0.0 END AS refunded_value_share,
           {", ".join(shares)},
           {_ratio('channel_other_orders', 'n_orders')} AS channel_share_other,
           CAST({used} + CASE WHEN named_other_orders > 0 THEN 1 ELSE 0 END AS BIGINT) AS channels_used
    FROM {aggregates}
    """


def behaviour_sql(events: str, as_of_us: int) -> str:
    """One row per customer with a placed order at or before ``as_of_us``: the event features.

    ``events``: as for :func:`behaviour_aggregates_sql`; the features are
    :func:`behaviour_features_sql` of its aggregates.
    """
    return behaviour_features_sql(f"({behaviour_aggregates_sql(events, as_of_us)})")


def _ladder_sql(policy: Policy, rank_expr: str, region_expr: str) -> str:
    """The spend threshold (micro-units) of tier rank ``rank_expr`` in a region, from the policy."""

    def ladder(region: str | None) -> str:
        whens = " ".join(f"WHEN {i} THEN {t}" for i, t in enumerate(policy.thresholds_us(region)))
        return f"CASE {rank_expr} {whens} END"

    if not policy.regions:
        return ladder(None)
    regional = " ".join(f"WHEN {_quote(r)} THEN {ladder(r)}" for r in sorted(policy.regions))
    return f"CASE {region_expr} {regional} ELSE {ladder(None)} END"


def features_sql(policy: Policy, as_of_us: int, behaviour: str, tiers: str) -> str:
    """The feature rows: ``behaviour`` (rows of :func:`behaviour_sql`) joined with rule-engine ``tiers``.

    Columns: ``customer_id`` then ``features.FEATURE_COLUMNS`` in order, sorted by customer.
    """
    from features.registry import FEATURE_COLUMNS  # the order is the registry's

    t = int(as_of_us)
    top = len(policy.tiers) - 1
    names = " ".join(f"WHEN {i} THEN {_quote(n)}" for i, n in enumerate(policy.tier_names))
    current = _ladder_sql(policy, "s.tier_rank", "s.region")
    following = _ladder_sql(policy, "s.tier_rank + 1", "s.region")
    tier_columns = {
        "region": "s.region",
        "tier": f"CASE s.tier_rank {names} END",
        "tier_rank": "CAST(s.tier_rank AS BIGINT)",
        "eligible_tier_rank": "CAST(s.eligible_rank AS BIGINT)",
        "in_grace": "CAST(CASE WHEN s.tier_rank > s.eligible_rank THEN 1 ELSE 0 END AS BIGINT)",
        "qualifying_spend": _money("s.qualifying_us"),
        "pending_spend": _money("s.pending_us"),
        "qualifying_orders": "CAST(s.qualifying_orders AS BIGINT)",
        "spend_to_next_tier": (
            f"CASE WHEN s.tier_rank < {top} THEN {_money(f'greatest(0, {following} - s.qualifying_us)')} END"
        ),
        "progress_to_next_tier": (
            f"CASE WHEN s.tier_rank < {top} THEN CASE WHEN {following} > 0 "
            f"THEN {_ratio('s.qualifying_us', following)} ELSE 1.0 END END"
        ),
        "margin_above_threshold": _money(f"s.qualifying_us - {current}"),
        "days_until_grace_end": _days(f"greatest(0, s.last_order_at_us + {policy.grace_us} - {t})"),
        "days_in_tier": _days(f"{t} - s.tier_since_us"),
        "tier_changes": "CAST(s.tier_changes AS BIGINT)",
    }
    columns = [f"{tier_columns[name]} AS {name}" if name in tier_columns else f"b.{name}" for name in FEATURE_COLUMNS]
    select = ",\n           ".join(columns)
    return f"""
    SELECT b.customer_id,
           {select}
    FROM {behaviour} b JOIN {tiers} s ON s.customer_id = b.customer_id
    ORDER BY b.customer_id
    """


def batch_events_sql() -> str:
    """The valid events as the batch engine (``tier_ml.batch``) left them after its ``orders`` stage.

    Placements are ``placed_orders`` (replays and duplicate orders removed; their
    ``channel`` is the source's trimmed text), refunds and cancels the
    ``adjustments`` without a reject reason. Event type codes are ``tier_ml.batch``'s.
    """
    from tier_ml.batch import CANCELLED

    return f"""
    SELECT p.customer_id, 'placed' AS event_type, p.order_id, p.at_us, p.amount_us, p.channel, p.region
    FROM placed_orders p
    UNION ALL
    SELECT a.customer_id, CASE WHEN a.event_type = {CANCELLED} THEN 'cancelled' ELSE 'refunded' END,
           a.order_id, a.at_us, a.amount_us, CAST(NULL AS STRING), CAST(NULL AS STRING)
    FROM adjustments a
    WHERE a.reason IS NULL
    """


def batch_removals_sql(as_of_us: int) -> str:
    """Per customer, what refunds and cancels at or before ``as_of_us`` removed, from the batch engine's ledger.

    Columns ``customer_id, removed_us, removed_365_us`` (what was removed from orders
    placed in the last 365 days), ``refunded_orders, cancelled_orders``: the refund parts
    of ``behaviour_aggregates_sql``, read from table ``adjustments`` alone (a valid
    adjustment carries its order's customer, time and value), so the ten million
    placements need no join.
    """
    from tier_ml.batch import CANCELLED, REFUNDED

    t = int(as_of_us)
    return f"""
    SELECT customer_id,
           sum(removed_us) AS removed_us,
           sum(CASE WHEN {t} - placed_at_us < {365 * MICROS_PER_DAY} THEN removed_us ELSE 0 END)
               AS removed_365_us,
           sum(has_refund) AS refunded_orders,
           sum(is_cancelled) AS cancelled_orders
    FROM (
        SELECT customer_id, placed_at_us, has_refund, is_cancelled,
               CASE WHEN is_cancelled = 1 THEN value_us ELSE least(value_us, refunded_us) END AS removed_us
        FROM (
            SELECT customer_id, order_id, max(placed_at_us) AS placed_at_us, max(value_us) AS value_us,
                   sum(CASE WHEN event_type = {REFUNDED} THEN amount_us ELSE 0 END) AS refunded_us,
                   max(CASE WHEN event_type = {REFUNDED} THEN 1 ELSE 0 END) AS has_refund,
                   max(CASE WHEN event_type = {CANCELLED} THEN 1 ELSE 0 END) AS is_cancelled
            FROM adjustments
            WHERE reason IS NULL AND at_us <= {t} AND placed_at_us <= {t}
            GROUP BY customer_id, order_id
        ) per_order
    ) removals
    GROUP BY customer_id
    """


def batch_tiers_sql() -> str:
    """The rules engine's tier states as the batch engine left them (table ``customer_state``)."""
    return """
    SELECT customer_id, tier AS tier_rank, eligible AS eligible_rank, qualifying_us, pending_us,
           qualifying_orders, tier_since_us, last_placed_us AS last_order_at_us, region, tier_changes
    FROM customer_state
    """
