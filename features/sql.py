"""The feature definitions as SQL text: one place, parameterised, portable.

Two statements define every feature:

- :func:`behaviour_sql` aggregates a relation of *valid canonical events* (one
  row per event: ``customer_id, event_type ('placed' | 'refunded' |
  'cancelled'), order_id, at_us, amount_us, channel, region``; money in
  base-currency micro-units, time in epoch microseconds) into one row per
  customer as of ``t``: recency, frequency, monetary, rhythm, trend, returns,
  channel mix.
- :func:`features_sql` joins that with a relation of *tier states* computed by
  the rules engine (``customer_id, tier_rank, eligible_rank, qualifying_us,
  pending_us, qualifying_orders, tier_since_us, last_order_at_us, region,
  tier_changes``) and adds the tier features.

The batch path runs them on DuckDB over the batch engine's validated tables,
the single-customer path on a tiny in-memory relation, and a Spark job can run
the same text on Spark SQL: only ANSI constructs that both engines share
(``CASE``, ``lag`` / ``row_number`` windows, ``stddev_samp``, ``greatest`` /
``least``, ``CAST(.. AS DOUBLE)``), no engine-specific functions. Every value is
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


def behaviour_sql(events: str, as_of_us: int) -> str:
    """One row per customer with a placed order at or before ``as_of_us``: the event features.

    ``events`` is a table name or a parenthesised subquery with the columns in the
    module docstring; rows after ``as_of_us`` are ignored here too, so the text is
    point-in-time correct whatever it is given. Orders are ordered by time only
    (no string tie-break to sort): orders placed at one instant give gaps of 0
    whatever their order, and the "last" order is the largest at the last instant.
    """
    t = int(as_of_us)

    def within(days: int) -> str:
        return f"age_us < {days * MICROS_PER_DAY}"

    prior = f"age_us >= {90 * MICROS_PER_DAY} AND age_us < {180 * MICROS_PER_DAY}"
    windows = []
    for n in WINDOWS:
        windows.append(f"CAST(sum(CASE WHEN {within(n)} THEN 1 ELSE 0 END) AS BIGINT) AS orders_{n}d")
    for n in WINDOWS:
        windows.append(f"{_money(f'sum(CASE WHEN {within(n)} THEN value_us ELSE 0 END)')} AS spend_{n}d")
    # channel as a small code, computed once per order: 1..k the named channels, 0 none, -1 another
    channel_code = (
        "CASE lower(coalesce(channel, '')) "
        + " ".join(f"WHEN {_quote(c)} THEN {i}" for i, c in enumerate(CHANNELS, start=1))
        + " WHEN '' THEN 0 ELSE -1 END"
    )
    channels = [
        f"{_ratio(f'sum(CASE WHEN channel_code = {i} THEN 1 ELSE 0 END)', 'count(*)')} AS channel_share_{c}"
        for i, c in enumerate(CHANNELS, start=1)
    ]
    channels.append(
        f"{_ratio('sum(CASE WHEN channel_code <= 0 THEN 1 ELSE 0 END)', 'count(*)')} AS channel_share_other"
    )
    n_sql = ",\n           ".join([*windows, *channels])
    return f"""
    WITH placed AS (
        SELECT customer_id, order_id, at_us, amount_us AS value_us, {channel_code} AS channel_code
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
    ), per_customer AS (
        SELECT customer_id,
           count(*) AS n_orders,
           min(age_us) AS recency_us,
           max(age_us) AS tenure_us,
           sum(value_us) AS gross_us,
           sum(removed_us) AS removed_us,
           sum(CASE WHEN age_us < {365 * MICROS_PER_DAY} THEN value_us - removed_us ELSE 0 END) AS net_365_us,
           max(value_us) AS max_value_us,
           max(CASE WHEN is_last = 1 THEN value_us END) AS last_value_us,
           min(CASE WHEN is_last = 1 THEN gap_us END) AS last_gap_us,
           stddev_samp(CAST(gap_us AS DOUBLE) / {DAY!r}) AS gap_std_days,
           sum(CASE WHEN {within(90)} THEN 1 ELSE 0 END) AS orders_90,
           sum(CASE WHEN {prior} THEN 1 ELSE 0 END) AS orders_prior_90,
           sum(CASE WHEN {within(90)} THEN value_us ELSE 0 END) AS spend_90_us,
           sum(CASE WHEN {prior} THEN value_us ELSE 0 END) AS spend_prior_90_us,
           sum(has_refund) AS refunded_orders,
           sum(is_cancelled) AS cancelled_orders,
           sum(CASE WHEN channel_code < 0 THEN 1 ELSE 0 END) AS named_other_orders,
           {n_sql}
        FROM orders
        GROUP BY customer_id
    )
    SELECT customer_id,
           {_days('recency_us')} AS recency_days,
           {_days('tenure_us')} AS tenure_days,
           {", ".join(f"orders_{n}d" for n in WINDOWS)},
           CAST(n_orders AS BIGINT) AS orders_lifetime,
           {", ".join(f"spend_{n}d" for n in WINDOWS)},
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
           {", ".join(f"channel_share_{c}" for c in CHANNELS)},
           channel_share_other,
           CAST({" + ".join(f"CASE WHEN channel_share_{c} > 0 THEN 1 ELSE 0 END" for c in CHANNELS)}
                + CASE WHEN named_other_orders > 0 THEN 1 ELSE 0 END AS BIGINT) AS channels_used
    FROM per_customer
    """


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

    Placements are ``placed_orders`` (replays and duplicate orders removed), refunds
    and cancels the ``adjustments`` without a reject reason. The features read the
    channel of placements only, so only those are joined to the source rows for it.
    Event type codes are ``tier_ml.batch``'s.
    """
    from tier_ml.batch import CANCELLED

    return f"""
    SELECT p.customer_id, 'placed' AS event_type, p.order_id, p.at_us, p.amount_us,
           s.channel, p.region
    FROM placed_orders p JOIN src s ON s.row = p.row
    UNION ALL
    SELECT a.customer_id, CASE WHEN a.event_type = {CANCELLED} THEN 'cancelled' ELSE 'refunded' END,
           a.order_id, a.at_us, a.amount_us, CAST(NULL AS STRING), CAST(NULL AS STRING)
    FROM adjustments a
    WHERE a.reason IS NULL
    """


def batch_tiers_sql() -> str:
    """The rules engine's tier states as the batch engine left them (table ``customer_state``)."""
    return """
    SELECT customer_id, tier AS tier_rank, eligible AS eligible_rank, qualifying_us, pending_us,
           qualifying_orders, tier_since_us, last_placed_us AS last_order_at_us, region, tier_changes
    FROM customer_state
    """
