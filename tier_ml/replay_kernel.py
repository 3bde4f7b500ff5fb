"""The tier replay of ``tier_ml.rules`` (definition 2) over many customers at once, in numpy.

Input: one row per spend step or placement, sorted by customer, instant and
(for placements at the same instant) event_id. Output: each customer's state at
``as_of``. The formula is the one in ``tier_ml.rules``::

    tier[t] = eligible[t]                      if a downgrade is allowed at t
    tier[t] = max(tier[previous], eligible[t]) otherwise

evaluated as a running maximum of the eligible tier inside segments that restart
where a downgrade is allowed. A grace period can end *between* two rows
(``last_placed + grace`` falls strictly between them, or after the last row but
not after ``as_of``); there the tier drops to the eligible tier of the row before,
so such a gap also restarts a segment. No extra rows are needed for grace ends.

The kernel is pure numpy (no database), so a distributed engine can run it per
partition of customers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KernelResult:
    """Per customer (in input order of customer keys): the state at ``as_of``."""

    customer: np.ndarray  # customer key
    tier: np.ndarray
    eligible: np.ndarray
    qualifying_us: np.ndarray
    qualifying_orders: np.ndarray
    region: np.ndarray  # region code
    last_placed_us: np.ndarray
    tier_since_us: np.ndarray
    tier_changes: np.ndarray


def eligible_tiers(
    spend: np.ndarray, orders: np.ndarray, region: np.ndarray, thresholds: np.ndarray, min_orders: np.ndarray
) -> np.ndarray:
    """Rule 6 vectorized: the highest tier whose spend (per region) and order thresholds are met.

    ``thresholds`` has one row per region code and one column per tier (micro-units).
    """
    eligible = np.zeros(len(spend), dtype=np.int64)
    one_ladder = len(thresholds) == 1
    for tier in range(1, thresholds.shape[1]):
        met = spend >= (thresholds[0, tier] if one_ladder else thresholds[region, tier])
        if min_orders[tier] > 0:
            met &= orders >= min_orders[tier]
        eligible[met] = tier
    return eligible


def _starts(keys: np.ndarray) -> np.ndarray:
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return first


def _previous(values: np.ndarray) -> np.ndarray:
    shifted = np.empty_like(values)
    if len(values):
        shifted[0] = values[0]
        shifted[1:] = values[:-1]
    return shifted


def replay_customers(
    customer: np.ndarray,
    at_us: np.ndarray,
    spend_us: np.ndarray,
    orders: np.ndarray,
    placed: np.ndarray,
    region: np.ndarray,
    *,
    thresholds: np.ndarray,
    min_orders: np.ndarray,
    grace_us: int,
    as_of_us: int,
) -> KernelResult:
    """Replay every customer's rows (sorted by customer, at_us, tie) up to ``as_of_us``.

    ``spend_us``/``orders`` are step deltas; ``placed`` marks placements, whose
    ``region`` code (>= 0) becomes the customer's region. Each customer's first row
    must be a placement (every customer starts at their first order).
    """
    n = len(customer)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return KernelResult(*([empty] * 9))
    row_first = _starts(customer)
    # Running sums restart per customer: subtract the total before each customer's first row.
    spend_total = np.cumsum(spend_us)
    orders_total = np.cumsum(orders)
    row_starts = np.flatnonzero(row_first)
    counts = np.diff(np.append(row_starts, n))
    spend = spend_total - np.repeat(spend_total[row_starts] - spend_us[row_starts], counts)
    order_count = orders_total - np.repeat(orders_total[row_starts] - orders[row_starts], counts)
    # Forward fill of the latest placement (its instant and region).
    latest = np.maximum.accumulate(np.where(placed, np.arange(n), 0))

    # One evaluation per instant: the last row of each (customer, instant) group.
    instant_end = np.ones(n, dtype=bool)
    instant_end[:-1] = (customer[1:] != customer[:-1]) | (at_us[1:] != at_us[:-1])
    ends = np.flatnonzero(instant_end)
    c, t = customer[ends], at_us[ends]
    s, q = spend[ends], order_count[ends]
    reg, last_placed = region[latest[ends]], at_us[latest[ends]]
    eligible = eligible_tiers(s, q, reg, thresholds, min_orders)

    first = _starts(c)
    allowed = t - last_placed >= grace_us
    grace_end_before = _previous(last_placed) + grace_us
    between = ~first & (grace_end_before > _previous(t)) & (grace_end_before < t)
    eligible_before = _previous(eligible)
    effective = np.where(between & ~allowed, np.maximum(eligible, eligible_before), eligible)
    segment = np.cumsum(first | allowed | between)
    width = thresholds.shape[1]
    tier = np.maximum.accumulate(segment * width + effective) - segment * width

    tier_before = _previous(tier)
    tier_before[first] = 0
    dropped_between = between & (tier_before != eligible_before)
    base = np.where(between, eligible_before, tier_before)
    changed = tier != base

    starts = np.flatnonzero(first)
    lasts = np.append(starts[1:] - 1, len(c) - 1)
    since = np.maximum(
        np.maximum.reduceat(np.where(changed | first, t, -1), starts),
        np.maximum.reduceat(np.where(dropped_between, grace_end_before, -1), starts),
    )
    changes = np.add.reduceat(changed.astype(np.int64) + dropped_between, starts)

    final_tier = tier[lasts].copy()
    final_eligible = eligible[lasts]
    if grace_us > 0:
        tail_end = last_placed[lasts] + grace_us
        tail = (tail_end > t[lasts]) & (tail_end <= as_of_us) & (final_tier != final_eligible)
        final_tier[tail] = final_eligible[tail]
        since[tail] = tail_end[tail]
        changes[tail] += 1
    return KernelResult(
        customer=c[lasts],
        tier=final_tier,
        eligible=final_eligible,
        qualifying_us=s[lasts],
        qualifying_orders=q[lasts],
        region=reg[lasts],
        last_placed_us=last_placed[lasts],
        tier_since_us=since,
        tier_changes=changes,
    )


def replay_steady_customers(
    customer: np.ndarray,
    placed_at_us: np.ndarray,
    counted_us: np.ndarray,
    region: np.ndarray,
    *,
    buffer_us: int,
    thresholds: np.ndarray,
    min_orders: np.ndarray,
    as_of_us: int,
) -> KernelResult:
    """The replay for customers whose eligible tier can never fall, without a timeline.

    The caller passes only customers with no late refund steps, no window exits and
    one threshold ladder (region) for all their placements, under a policy whose
    default tier is the only one eligible with nothing spent. Their spend and order
    count only grow, so their eligible tier only rises: the tier *is* the eligible
    tier at every instant (rule 7; rule 8 never applies), and the replay reduces to
    the eligible tier after each maturity. Rows are one per placement, sorted by
    customer and placement instant (so maturities ``p + buffer`` are sorted too).
    The result equals :func:`replay_customers` on the same customers.
    """
    count = len(customer)
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return KernelResult(*([empty] * 9))
    first_row = _starts(customer)
    starts = np.flatnonzero(first_row)
    lasts = np.append(starts[1:], count) - 1
    per_customer = lasts - starts + 1
    # Every placement is a step at its maturity; one that counts nothing by as_of adds zero.
    # (Working on all rows, not just the counting ones, saves gathering ten million of them.)
    counts = (counted_us > 0) & (placed_at_us <= as_of_us - buffer_us)
    spend = np.cumsum(np.where(counts, counted_us, 0))
    orders = np.cumsum(counts, dtype=np.int64)
    spend_before = np.zeros(len(starts), dtype=np.int64)  # running sums restart per customer
    orders_before = np.zeros(len(starts), dtype=np.int64)
    spend_before[1:], orders_before[1:] = spend[lasts[:-1]], orders[lasts[:-1]]
    spend -= np.repeat(spend_before, per_customer)
    orders -= np.repeat(orders_before, per_customer)
    # The eligible tier once every step of an instant is in (maturities are sorted like placements).
    instant_end = np.ones(count, dtype=bool)
    instant_end[:-1] = ~first_row[1:] & (placed_at_us[1:] == placed_at_us[:-1])
    np.logical_not(instant_end[:-1], out=instant_end[:-1])
    ends = np.flatnonzero(instant_end)
    eligible = eligible_tiers(spend[ends], orders[ends], region[ends], thresholds, min_orders)
    end_owner = (np.cumsum(first_row) - 1)[ends]  # position of each instant's customer
    first_end = _starts(end_owner)  # each customer's first instant
    last_end = np.append(np.flatnonzero(first_end)[1:], len(ends)) - 1  # and last
    previous = np.zeros(len(ends), dtype=np.int64)
    previous[1:] = eligible[:-1]
    previous[first_end] = 0  # every customer starts in the default tier
    changed = eligible != previous
    changes = np.bincount(end_owner[changed], minlength=len(starts)).astype(np.int64)
    since = placed_at_us[starts].copy()  # the first instant, when nothing ever changed
    changed_at = np.flatnonzero(changed)
    changed_owner = end_owner[changed_at]
    latest = np.ones(len(changed_at), dtype=bool)  # the last change of each customer
    latest[:-1] = changed_owner[1:] != changed_owner[:-1]
    since[changed_owner[latest]] = placed_at_us[ends[changed_at[latest]]] + buffer_us
    final = eligible[last_end]
    return KernelResult(
        customer=customer[starts],
        tier=final,
        eligible=final.copy(),
        qualifying_us=spend[lasts],
        qualifying_orders=orders[lasts],
        region=region[lasts],
        last_placed_us=placed_at_us[lasts],
        tier_since_us=since,
        tier_changes=changes,
    )
