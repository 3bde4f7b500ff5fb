"""The tier rules engine: ``classify(policy, events, as_of)``, exactly as TIER_RULES.md defines.

This module is the *reference path*: plain Python, one customer at a time, easy
to check against the contract. ``tier_ml.batch`` is the vectorized path for
millions of customers; it implements the same two definitions below in SQL and
a test proves both paths agree.

The two definitions every path shares:

1. **Spend steps of one order** (:func:`order_steps`). An order placed at ``p``
   with value ``a`` matures at ``m = p + buffer``. Refunds before ``m`` reduce
   what will count (the buffer's purpose); at ``m`` the order adds what is left
   (``+v`` spend, ``+1`` qualifying order if ``v > 0``). With
   ``late_refunds: deduct`` each later refund or cancel subtracts what it
   removes (and the order stops being a qualifying order when nothing is left);
   with ``ignore`` nothing changes after ``m``. With a rolling window the order
   stops counting at ``p + window`` (one last negative step). Qualifying spend
   at ``t`` is the sum of all steps at or before ``t``.

2. **Tier replay** (:func:`replay`). At every instant where something can
   change (events, maturities, window exits, grace ends) the *eligible* tier is
   computed from qualifying spend, qualifying orders and the customer's region
   (that of their latest ``placed`` event). A downgrade is *allowed* at ``t``
   when ``t - last_placed_at >= downgrade_grace``. The current tier is then::

       tier[t] = eligible[t]                      if downgrade allowed at t
       tier[t] = max(tier[previous], eligible[t]) otherwise

   i.e. a running maximum of the eligible tier inside segments that restart at
   each instant where a downgrade is allowed. Upgrades are therefore immediate,
   and downgrades wait for the grace period.

Money is integer micro-units of the base currency and time integer epoch
microseconds (see ``tier_ml.money``), so every path gets the same exact sums.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tier_ml.events import EventType, OrderEvent, Reject, validate
from tier_ml.money import instant_to_micros, micros_to_instant, micros_to_money
from tier_ml.policy import Policy

if TYPE_CHECKING:
    import pandas as pd

#: Columns of a classification, in output order (the first four are the contract's).
OUTPUT_COLUMNS = (
    "customer_id",
    "tier",
    "qualifying_spend",
    "pending_spend",
    "eligible_tier",
    "tier_since",
    "qualifying_orders",
    "next_tier",
    "spend_to_next_tier",
    "region",
    "last_order_at",
    "grace_ends_at",
    "next_change_at",
    "tier_changes",
)


@dataclass(frozen=True, slots=True)
class SpendStep:
    """A change of one customer's qualifying spend and qualifying orders at an instant."""

    at_us: int
    spend_us: int
    orders: int
    cause: str  # maturity | late_refund | cancel | window_exit
    event_id: str = ""  # the refund or cancel behind a late step, else the placed event


@dataclass(slots=True)
class Order:
    """One placed order with the refunds and cancels that followed it."""

    order_id: str
    placed_at_us: int
    value_us: int
    region: str
    event_id: str
    adjustments: list[OrderEvent] = field(default_factory=list)

    def refunded_by(self, at_us: int, *, before: bool = False) -> int:
        """What refunds and cancels removed by ``at_us`` (strictly before it with ``before``)."""
        removed = 0
        for event in self.adjustments:
            if event.at_us > at_us or (before and event.at_us == at_us):
                break
            removed = self.removed_after(removed, event)
        return removed

    def removed_after(self, removed: int, event: OrderEvent) -> int:
        """What is removed from the order once ``event`` applies on top of ``removed``: a cancel
        removes whatever is left, a refund its amount, capped at the order's value."""
        if event.event_type == EventType.CANCELLED:
            return self.value_us
        return min(self.value_us, removed + event.amount_us)

    def removals(self) -> list[tuple[OrderEvent, int]]:
        """Each refund or cancel, in time order, with what it removed from the order."""
        removed = 0
        out = []
        for event in self.adjustments:
            now_removed = self.removed_after(removed, event)
            out.append((event, now_removed - removed))
            removed = now_removed
        return out


def order_steps(order: Order, policy: Policy) -> list[SpendStep]:
    """How one order moves qualifying spend over time (definition 1 of the module docstring)."""
    matures_at = order.placed_at_us + policy.buffer_us
    leaves_window_at = None if policy.window_us is None else order.placed_at_us + policy.window_us
    if leaves_window_at is not None and leaves_window_at <= matures_at:
        return []  # leaves the window before it ever counts
    removed = order.refunded_by(matures_at, before=True)
    counted = order.value_us - removed
    steps: list[SpendStep] = []
    if counted > 0:
        steps.append(SpendStep(matures_at, counted, 1, "maturity", order.event_id))
    if policy.late_refunds == "deduct":
        for event in order.adjustments:
            if event.at_us < matures_at:
                continue
            if leaves_window_at is not None and event.at_us >= leaves_window_at:
                break
            now_removed = order.removed_after(removed, event)
            delta = now_removed - removed
            removed = now_removed
            if delta > 0 and counted > 0:
                counted -= delta
                cause = "cancel" if event.event_type == EventType.CANCELLED else "late_refund"
                steps.append(
                    SpendStep(event.at_us, -delta, -1 if counted == 0 else 0, cause, event.event_id)
                )
    if leaves_window_at is not None and counted > 0:
        steps.append(SpendStep(leaves_window_at, -counted, -1, "window_exit", order.event_id))
    return steps


def pending_at(order: Order, policy: Policy, at_us: int) -> int:
    """The order's pending value at ``at_us``: placed, not yet mature, net of refunds."""
    if not order.placed_at_us <= at_us < order.placed_at_us + policy.buffer_us:
        return 0
    return order.value_us - order.refunded_by(at_us)


@dataclass(frozen=True, slots=True)
class TierChange:
    """One transition of a customer's tier, with what happened at that instant."""

    at_us: int
    old_tier: int
    new_tier: int
    cause: str
    #: What the engine had at that instant (after its steps): the numbers behind the change.
    qualifying_us: int = 0
    qualifying_orders: int = 0
    eligible_tier: int = 0
    region: str = ""

    @property
    def direction(self) -> str:
        return "upgrade" if self.new_tier > self.old_tier else "downgrade"


@dataclass(frozen=True, slots=True)
class CustomerTier:
    """A customer's tier state as of an instant (integers in engine units)."""

    customer_id: str
    tier: int
    eligible_tier: int
    qualifying_us: int
    pending_us: int
    qualifying_orders: int
    tier_since_us: int
    region: str
    last_order_at_us: int
    grace_ends_at_us: int | None
    next_change_at_us: int | None
    changes: tuple[TierChange, ...]
    #: The replay's state before an instant the caller asked for (see ``replay``), else None.
    checkpoint: ReplayCheckpoint | None = None

    @property
    def qualifying_spend(self) -> float:
        return micros_to_money(self.qualifying_us)

    @property
    def pending_spend(self) -> float:
        return micros_to_money(self.pending_us)

    def row(self, policy: Policy) -> dict[str, Any]:
        """The output row of ``classify`` (see ``OUTPUT_COLUMNS``)."""
        names = policy.tier_names
        has_next = self.tier + 1 < len(names)
        to_next = None
        if has_next:
            threshold = policy.thresholds_us(self.region)[self.tier + 1]
            to_next = micros_to_money(max(0, threshold - self.qualifying_us))
        return {
            "customer_id": self.customer_id,
            "tier": names[self.tier],
            "qualifying_spend": self.qualifying_spend,
            "pending_spend": self.pending_spend,
            "eligible_tier": names[self.eligible_tier],
            "tier_since": micros_to_instant(self.tier_since_us),
            "qualifying_orders": self.qualifying_orders,
            "next_tier": names[self.tier + 1] if has_next else None,
            "spend_to_next_tier": to_next,
            "region": self.region,
            "last_order_at": micros_to_instant(self.last_order_at_us),
            "grace_ends_at": _instant_or_none(self.grace_ends_at_us),
            "next_change_at": _instant_or_none(self.next_change_at_us),
            "tier_changes": len(self.changes),
        }


def _instant_or_none(micros: int | None) -> datetime | None:
    return None if micros is None else micros_to_instant(micros)


def build_orders(events: Iterable[OrderEvent]) -> list[Order]:
    """Group one customer's validated events into orders, adjustments in time order."""
    orders: dict[str, Order] = {}
    adjustments: list[OrderEvent] = []
    for event in sorted(events, key=OrderEvent.sort_key):
        if event.event_type == EventType.PLACED:
            orders[event.order_id] = Order(
                event.order_id, event.at_us, event.amount_us, event.region, event.event_id
            )
        else:
            adjustments.append(event)
    for event in adjustments:
        orders[event.order_id].adjustments.append(event)
    return sorted(orders.values(), key=lambda o: (o.placed_at_us, o.event_id))


@dataclass(frozen=True, slots=True)
class ReplayCheckpoint:
    """The running state of :func:`replay` after every instant before ``before_us``.

    That state depends only on the events dated before ``before_us`` (an event
    moves spend, region and grace only at or after its own instant), so a later
    replay of the same customer whose events before ``before_us`` are still
    exactly these ``events_before`` can start there (the online store adds
    events as they arrive and re-evaluates after each batch).
    """

    customer_id: str
    policy_fingerprint: str
    before_us: int
    events_before: int
    events_digest: int  # order-free hash of those events (within one process)
    qualifying: int
    orders_count: int
    tier: int
    since: int
    region: str
    last_placed: int
    changes: tuple[TierChange, ...]


def replay(
    policy: Policy,
    customer_id: str,
    events: Iterable[OrderEvent],
    as_of_us: int,
    *,
    resume: ReplayCheckpoint | None = None,
    checkpoint_before: int | None = None,
) -> CustomerTier | None:
    """Replay one customer's validated events up to ``as_of_us`` (definition 2).

    Returns None when the customer has no ``placed`` event at or before ``as_of_us``.
    ``resume``: a checkpoint of an earlier replay of this customer; used when it
    still holds (same policy, the same events before its instant), else ignored.
    ``checkpoint_before``: also return the state before that instant (``checkpoint``).
    The answer is the same with or without either.
    """
    visible = [e for e in events if e.at_us <= as_of_us]
    start = _resumable(policy, customer_id, visible, as_of_us, resume)
    grace = policy.grace_us
    if start is None:
        begin = -(2**63)
        orders = build_orders(visible)
        if not orders:
            return None
        grace_ends = {order.placed_at_us + grace for order in orders}
    else:  # only what can still move something from the checkpoint on
        begin = start.before_us
        horizon = begin - max(policy.buffer_us, policy.window_us or 0)
        recent = {e.order_id for e in visible if e.at_us >= horizon}
        orders = build_orders(e for e in visible if e.order_id in recent)
        grace_ends = {
            e.at_us + grace
            for e in visible
            if e.event_type == EventType.PLACED and e.at_us + grace >= begin
        }
    spend_at: dict[int, list[SpendStep]] = defaultdict(list)
    placed_at: dict[int, list[Order]] = defaultdict(list)
    for order in orders:
        if order.placed_at_us >= begin:
            placed_at[order.placed_at_us].append(order)
        if _may_step_from(order, policy, begin):
            for step in order_steps(order, policy):
                if step.at_us >= begin:
                    spend_at[step.at_us].append(step)
    instants = sorted(
        t for t in spend_at.keys() | placed_at.keys() | grace_ends if begin <= t <= as_of_us
    )

    if start is None:
        qualifying = orders_count = tier = 0
        since = last_placed = instants[0]
        region = ""
        changes: list[TierChange] = []
    else:
        qualifying, orders_count, tier = start.qualifying, start.orders_count, start.tier
        since, region, last_placed = start.since, start.region, start.last_placed
        changes = list(start.changes)
    cut = None if checkpoint_before is None else min(checkpoint_before, as_of_us + 1)
    checkpoint = None
    # The running state holds every instant before ``ready`` (and none after): a checkpoint
    # is dated at ``cut`` or, when that state already holds instants at or after ``cut``
    # (the resumed ones, or the customer's first instant), at ``ready``.
    ready = begin
    for t in instants:
        if cut is not None and checkpoint is None and t >= cut and (start is not None or t > instants[0]):
            before = max(cut, ready)
            checkpoint = ReplayCheckpoint(
                customer_id, policy.fingerprint, before, *_events_before(visible, before),
                qualifying, orders_count, tier, since, region, last_placed, tuple(changes),
            )
        ready = t + 1
        causes: set[str] = set()
        for step in spend_at.get(t, ()):
            qualifying += step.spend_us
            orders_count += step.orders
            causes.add(step.cause)
        if t in placed_at:
            region = placed_at[t][-1].region  # the latest placed event wins (event_id breaks ties)
            last_placed = t
            causes.add("order")
        eligible = policy.eligible_tier(qualifying, orders_count, region)
        allowed = t - last_placed >= grace
        new_tier = eligible if allowed else max(tier, eligible)
        if new_tier != tier:
            if new_tier < tier and t == last_placed + grace and grace > 0:
                causes.add("grace_end")
            cause = ",".join(sorted(causes)) or "grace_end"
            changes.append(
                TierChange(t, tier, new_tier, cause, qualifying, orders_count, eligible, region)
            )
            tier, since = new_tier, t

    if cut is not None and checkpoint is None and (start is not None or instants[0] < cut):
        before = max(cut, ready)
        checkpoint = ReplayCheckpoint(
            customer_id, policy.fingerprint, before, *_events_before(visible, before),
            qualifying, orders_count, tier, since, region, last_placed, tuple(changes),
        )
    eligible = policy.eligible_tier(qualifying, orders_count, region)
    pending = sum(pending_at(order, policy, as_of_us) for order in orders)
    protected = tier > eligible
    return CustomerTier(
        customer_id=customer_id,
        tier=tier,
        eligible_tier=eligible,
        qualifying_us=qualifying,
        pending_us=pending,
        qualifying_orders=orders_count,
        tier_since_us=since,
        region=region,
        last_order_at_us=last_placed,
        grace_ends_at_us=last_placed + grace if protected else None,
        next_change_at_us=_next_change(
            policy,
            [o for o in orders if _may_step_from(o, policy, as_of_us + 1)],
            as_of_us,
            last_placed + grace if protected else None,
        ),
        changes=tuple(changes),
        checkpoint=checkpoint,
    )


def _resumable(
    policy: Policy,
    customer_id: str,
    visible: list[OrderEvent],
    as_of_us: int,
    resume: ReplayCheckpoint | None,
) -> ReplayCheckpoint | None:
    """``resume`` when it holds for these events (nothing dated before it was added), else None."""
    if resume is None or resume.customer_id != customer_id:
        return None
    if resume.policy_fingerprint != policy.fingerprint or resume.before_us > as_of_us + 1:
        return None  # another policy, or a replay that stops before the checkpoint
    if _events_before(visible, resume.before_us) != (resume.events_before, resume.events_digest):
        return None
    return resume


def _events_before(visible: list[OrderEvent], before_us: int) -> tuple[int, int]:
    """How many events are dated before ``before_us``, and an order-free hash of their ids
    (an ``event_id`` names one event among validated events)."""
    earlier = [e.event_id for e in visible if e.at_us < before_us]
    return len(earlier), hash(frozenset(earlier))


def _may_step_from(order: Order, policy: Policy, at_us: int) -> bool:
    """Whether the order can have a spend step at or after ``at_us`` (its maturity, a late
    refund or cancel, or its window exit): the others need not be replayed from there."""
    if order.placed_at_us + policy.buffer_us >= at_us:
        return True
    if policy.window_us is not None and order.placed_at_us + policy.window_us >= at_us:
        return True
    return bool(order.adjustments) and order.adjustments[-1].at_us >= at_us


def _next_change(
    policy: Policy, orders: list[Order], as_of_us: int, grace_end: int | None
) -> int | None:
    """The next instant after ``as_of_us`` at which this customer's tier may change by itself."""
    candidates = [] if grace_end is None else [grace_end]
    for order in orders:
        candidates.extend(s.at_us for s in order_steps(order, policy) if s.at_us > as_of_us)
    return min(candidates, default=None)


@dataclass
class Classification:
    """The result of ``classify``: one state per customer, and the rejected rows."""

    policy: Policy
    as_of_us: int
    tiers: dict[str, CustomerTier]
    rejects: list[Reject]
    replays: int = 0

    def frame(self) -> pd.DataFrame:
        """The output table, sorted by customer_id (columns as in ``OUTPUT_COLUMNS``)."""
        import pandas as pd  # here: the batch command line never needs it (see tier_ml.events._pandas)

        rows = [self.tiers[c].row(self.policy) for c in sorted(self.tiers)]
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def classify(
    policy: Policy,
    events: Iterable[Mapping[str, Any] | OrderEvent],
    as_of: datetime | int,
) -> Classification:
    """Every customer's tier at ``as_of`` from raw rows (validated here) or validated events."""
    as_of_us = as_of if isinstance(as_of, int) else instant_to_micros(as_of)
    items = list(events)
    if all(isinstance(item, OrderEvent) for item in items):
        good = [e for e in items if e.at_us <= as_of_us]  # type: ignore[union-attr]
        rejects: list[Reject] = []
        replays = 0
    else:
        validation = validate(items, policy, as_of_us)  # type: ignore[arg-type]
        good, rejects, replays = validation.events, validation.rejects, validation.replays
    by_customer: dict[str, list[OrderEvent]] = defaultdict(list)
    for event in good:
        by_customer[event.customer_id].append(event)
    tiers = {}
    for customer_id, customer_events in by_customer.items():
        state = replay(policy, customer_id, customer_events, as_of_us)
        if state is not None:
            tiers[customer_id] = state
    return Classification(policy, as_of_us, tiers, rejects, replays)
