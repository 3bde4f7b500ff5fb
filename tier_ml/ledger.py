"""The tier ledger: why a customer has their tier at an instant, told by the rules engine itself.

:func:`explain` answers a customer's (or a support agent's) questions from the
customer's canonical events and the policy:

- which orders count, when each cleared (or will clear) the revenue buffer,
  what each refund or cancel removed, which orders left the rolling window;
- every tier transition with the rule behind it (a matured order, a late
  refund, a window exit, the end of the downgrade grace period, ...);
- what it takes to reach the next tier and to keep the current one, and the
  dates that matter (maturities, window exits, the grace end).

Nothing here re-derives a rule. Per-order spend comes from
``rules.order_steps`` (the same steps ``rules.replay`` sums), pending spend from
``rules.pending_at``, transitions from ``rules.replay``'s ``TierChange`` list,
and the projection ("if nothing else happens") from ``rules.replay`` at later
instants on the same events. So the ledger's sums *are* the engine's
qualifying and pending spend, and its transitions *are* the engine's changes:
the explanation cannot disagree with the tier.

The online store adds what only it knows (overrides, grandfathered tiers,
policy versions): see ``tier_ml.store.explain``. Pure functions; time is
passed in as epoch microseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tier_ml.events import EventType, OrderEvent, frame_records, validate
from tier_ml.money import micros_to_instant, micros_to_money
from tier_ml.policy import Policy
from tier_ml.rules import Order, SpendStep, build_orders, order_steps, pending_at, replay

#: Plain-language names of the engine's causes (``SpendStep.cause`` / ``TierChange.cause``).
CAUSE_LABELS = {
    "order": "new order",
    "maturity": "matured order",
    "late_refund": "late refund",
    "cancel": "late cancel",
    "window_exit": "window exit",
    "grace_end": "grace end",
    "override": "override",
    "policy": "policy change",
    "grandfathering": "grandfathering",
    "late_events": "late events",
}


class LedgerError(ValueError):
    """A ledger that cannot be explained (no order at or before the instant)."""


# --- the ledger's parts ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerStep:
    """One change of qualifying spend caused by one order (a ``rules.SpendStep``)."""

    at_us: int
    order_id: str
    event_id: str
    cause: str  # maturity | late_refund | cancel | window_exit
    spend_us: int
    orders: int


@dataclass(frozen=True, slots=True)
class LedgerAdjustment:
    """A refund or cancel of an order and what it did.

    ``effect``: ``before_maturity`` (reduced what the order will count: the
    buffer's purpose), ``deducted`` (a late refund or cancel taken off qualifying
    spend), ``ignored`` (late refund, policy ``late_refunds: ignore``),
    ``after_window`` (the order had already left the window), ``not_counted``
    (the order never counted), ``nothing_left`` (the order was already fully refunded).
    """

    event_id: str
    event_type: str
    at_us: int
    amount_us: int
    removed_us: int
    effect: str
    spend_effect_us: int


@dataclass(frozen=True, slots=True)
class LedgerOrder:
    """One placed order: value, buffer, window, refunds and what it counts at the instant.

    ``status``: ``pending`` (in the buffer), ``counting``, ``voided`` (fully
    refunded or cancelled before it matured: never counts), ``refunded`` (counted,
    then fully removed by late refunds), ``left_window`` (stopped counting at
    ``leaves_window_at``), ``expired`` (left the window before it matured).
    """

    order_id: str
    event_id: str
    placed_at_us: int
    value_us: int
    region: str
    channel: str
    matures_at_us: int
    leaves_window_at_us: int | None
    status: str
    counted_us: int
    pending_us: int
    counts_as_order: bool
    adjustments: tuple[LedgerAdjustment, ...]
    steps: tuple[LedgerStep, ...]
    upcoming: tuple[LedgerStep, ...]


@dataclass(frozen=True, slots=True)
class LedgerTransition:
    """A change of tier with the rule behind it.

    ``source``: ``enrolment`` (the first tier at the first order), ``rules`` (a
    ``TierChange`` of the engine), or, in the store, ``override``,
    ``policy``, ``grandfathering`` and ``late_events`` from its audit log.
    ``effective`` is False for a rules change that an override or a
    grandfathered tier kept from the customer's effective tier.
    """

    at_us: int
    old_tier: str | None
    new_tier: str | None
    direction: str  # enrolment | upgrade | downgrade | change
    source: str
    causes: tuple[str, ...]
    rule: str
    qualifying_us: int | None = None
    qualifying_orders: int | None = None
    eligible_tier: str | None = None
    events: tuple[str, ...] = ()
    effective: bool = True
    actor: str | None = None
    note: str | None = None
    policy_version: int | None = None


@dataclass(frozen=True, slots=True)
class TierTarget:
    """What it takes to reach the next tier."""

    tier: str
    min_spend_us: int
    min_orders: int
    spend_needed_us: int
    orders_needed: int
    spend_needed_after_pending_us: int
    reached_by_pending_at_us: int | None  # the pending orders alone get there then, if kept


@dataclass(frozen=True, slots=True)
class KeepTarget:
    """What it takes to keep the current tier, and when it is at stake."""

    tier: str
    min_spend_us: int
    min_orders: int
    eligible: bool  # the spend and orders meet the tier now
    spend_needed_us: int  # to meet the tier now (0 when eligible)
    orders_needed: int
    headroom_us: int  # spend that can go (refunds, window exits) before the tier is not met
    grace_ends_at_us: int | None  # protected by the grace period until then
    at_risk_at_us: int | None  # the projected downgrade if nothing else happens
    falls_to: str | None
    spend_needed_by_then_us: int  # spend to add (counted by then) to stay


@dataclass(frozen=True, slots=True)
class Hold:
    """Something outside the rules that holds the effective tier (store only)."""

    kind: str  # override | grandfathering
    tier: str
    until_us: int | None
    actor: str | None
    reason: str | None


@dataclass(frozen=True)
class TierLedger:
    """A customer's tier at ``as_of_us`` and everything behind it (money in micro-units of
    ``base_currency``, instants in epoch microseconds; :meth:`to_dict` converts)."""

    customer_id: str
    as_of_us: int
    base_currency: str
    policy_fingerprint: str
    tier: str  # the rules tier (what ``classify`` says)
    effective_tier: str  # the tier in force (an override or grandfathered tier, else ``tier``)
    eligible_tier: str
    tier_since_us: int
    qualifying_us: int
    pending_us: int
    qualifying_orders: int
    region: str
    last_order_at_us: int
    grace_ends_at_us: int | None
    next_change_at_us: int | None
    buffer_days: float
    window_days: float | None
    grace_days: float
    late_refunds: str
    orders: tuple[LedgerOrder, ...]
    transitions: tuple[LedgerTransition, ...]
    projected: tuple[LedgerTransition, ...]
    next_tier: TierTarget | None
    keep: KeepTarget | None
    hold: Hold | None = None
    policy_version: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def counted_sum_us(self) -> int:
        """Qualifying spend as the sum of the orders' counted values (equals ``qualifying_us``)."""
        return sum(order.counted_us for order in self.orders)

    @property
    def pending_sum_us(self) -> int:
        return sum(order.pending_us for order in self.orders)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict: money in the base currency rounded to cents, ISO 8601 instants."""
        return _jsonable(self)

    def to_text(self) -> str:
        """The ledger as plain text, for people (see ``render_text``)."""
        return render_text(self)


# --- explain ---------------------------------------------------------------------------------


def customer_events(
    frame: pd.DataFrame, policy: Policy, customer_id: str, as_of_us: int
) -> list[OrderEvent]:
    """One customer's validated events from a whole events table, as ``classify`` would see them.

    Only the rows that can matter are validated: the customer's own, and any row
    sharing an event_id (a replay) or an order_id (a second ``placed``) with
    them, so the answer equals validating the whole table, at a fraction of the cost.
    """
    customers = frame["customer_id"].map(_key)
    own = customers == customer_id
    event_ids = set(frame.loc[own, "event_id"].map(_key))
    order_ids = set(frame.loc[own, "order_id"].map(_key))
    related = (
        own
        | frame["event_id"].map(_key).isin(event_ids)
        | frame["order_id"].map(_key).isin(order_ids)
    )
    validation = validate(frame_records(frame[related]), policy, as_of_us)
    return [event for event in validation.events if event.customer_id == customer_id]


def _key(value: Any) -> str:
    """Text as the validator reads an id (missing as empty, outer spaces dropped)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip(" ")


def explain(
    policy: Policy, customer_id: str, events: Iterable[OrderEvent], as_of_us: int
) -> TierLedger:
    """The tier ledger of one customer at ``as_of_us`` from their validated events.

    Raises :class:`LedgerError` when the customer has no order at or before ``as_of_us``.
    """
    visible = [event for event in events if event.at_us <= as_of_us]
    state = replay(policy, customer_id, visible, as_of_us)
    if state is None:
        raise LedgerError(f"customer {customer_id!r} has no order at or before that instant")
    names = policy.tier_names
    channels = {e.event_id: e.channel for e in visible if e.event_type == EventType.PLACED}
    orders = build_orders(visible)
    ledger_orders = tuple(
        _ledger_order(policy, order, channels.get(order.event_id, ""), as_of_us) for order in orders
    )
    steps = {
        (step.at_us, step.event_id, step.cause): (order.order_id, step)
        for order in orders
        for step in order_steps(order, policy)
    }
    first_order = orders[0]
    enrolment = LedgerTransition(
        first_order.placed_at_us,
        None,
        names[0],
        "enrolment",
        "enrolment",
        ("order",),
        f"first order {first_order.order_id}: every customer starts in {names[0]}",
        events=(first_order.event_id,),
    )
    transitions = (
        enrolment,
        *(_rules_transition(policy, change, steps, orders) for change in state.changes),
    )
    projection = _projection(policy, customer_id, visible, orders, as_of_us)
    projected = tuple(
        _rules_transition(policy, change, steps, orders)
        for change in projection
        if change.at_us > as_of_us
    )
    tier = names[state.tier]
    return TierLedger(
        customer_id=customer_id,
        as_of_us=as_of_us,
        base_currency=policy.base_currency,
        policy_fingerprint=policy.fingerprint,
        tier=tier,
        effective_tier=tier,
        eligible_tier=names[state.eligible_tier],
        tier_since_us=state.tier_since_us,
        qualifying_us=state.qualifying_us,
        pending_us=state.pending_us,
        qualifying_orders=state.qualifying_orders,
        region=state.region,
        last_order_at_us=state.last_order_at_us,
        grace_ends_at_us=state.grace_ends_at_us,
        next_change_at_us=state.next_change_at_us,
        buffer_days=policy.buffer_days,
        window_days=policy.window_days,
        grace_days=policy.downgrade_grace_days,
        late_refunds=policy.late_refunds,
        orders=ledger_orders,
        transitions=transitions,
        projected=projected,
        next_tier=_next_target(policy, customer_id, visible, state, as_of_us, projection),
        keep=_keep_target(policy, state, projection, as_of_us),
    )


def _ledger_order(policy: Policy, order: Order, channel: str, as_of_us: int) -> LedgerOrder:
    matures_at = order.placed_at_us + policy.buffer_us
    leaves = None if policy.window_us is None else order.placed_at_us + policy.window_us
    all_steps = [_step(order, s) for s in order_steps(order, policy)]
    steps = tuple(s for s in all_steps if s.at_us <= as_of_us)
    upcoming = tuple(s for s in all_steps if s.at_us > as_of_us)
    counted = sum(s.spend_us for s in steps)
    counts_as_order = sum(s.orders for s in steps) > 0
    pending = pending_at(order, policy, as_of_us)
    late = {s.event_id: s.spend_us for s in all_steps if s.cause in {"late_refund", "cancel"}}
    matured_value = next((s.spend_us for s in all_steps if s.cause == "maturity"), 0)
    adjustments = []
    removed_total = 0
    for event, removed in order.removals():
        if event.at_us > as_of_us:
            break
        before_removed = removed_total
        removed_total += removed
        if event.at_us < matures_at:
            effect = "before_maturity"
        elif event.event_id in late:
            effect = "deducted"
        elif leaves is not None and event.at_us >= leaves:
            effect = "after_window"
        elif policy.late_refunds == "ignore":
            effect = "ignored"
        elif matured_value == 0:
            effect = "not_counted"
        else:
            effect = "nothing_left" if before_removed >= order.value_us else "deducted"
        adjustments.append(
            LedgerAdjustment(
                event.event_id,
                str(event.event_type),
                event.at_us,
                event.amount_us,
                removed,
                effect,
                late.get(event.event_id, 0),
            )
        )
    return LedgerOrder(
        order_id=order.order_id,
        event_id=order.event_id,
        placed_at_us=order.placed_at_us,
        value_us=order.value_us,
        region=order.region,
        channel=channel,
        matures_at_us=matures_at,
        leaves_window_at_us=leaves,
        status=_status(
            as_of_us,
            matures_at,
            pending,
            steps,
            order.refunded_by(matures_at, before=True) >= order.value_us,
        ),
        counted_us=counted,
        pending_us=pending,
        counts_as_order=counts_as_order,
        adjustments=tuple(adjustments),
        steps=steps,
        upcoming=upcoming,
    )


def _step(order: Order, step: SpendStep) -> LedgerStep:
    return LedgerStep(
        step.at_us, order.order_id, step.event_id, step.cause, step.spend_us, step.orders
    )


def _status(
    as_of_us: int, matures_at: int, pending: int, steps: Sequence[LedgerStep], voided: bool
) -> str:
    if as_of_us < matures_at:
        return "pending" if pending > 0 else "voided"
    if not any(s.cause == "maturity" for s in steps):
        return "voided" if voided else "expired"
    if any(s.cause == "window_exit" for s in steps):
        return "left_window"
    return "counting" if sum(s.spend_us for s in steps) > 0 else "refunded"


def _projection(
    policy: Policy,
    customer_id: str,
    visible: Sequence[OrderEvent],
    orders: Sequence[Order],
    as_of_us: int,
) -> tuple[Any, ...]:
    """The engine's changes up to the last instant anything can still happen with the events
    known now (no new order, no new refund): the ``TierChange`` list of a later replay."""
    horizon = as_of_us
    for order in orders:
        horizon = max(horizon, order.placed_at_us + policy.grace_us)
        for step in order_steps(order, policy):
            horizon = max(horizon, step.at_us)
    later = replay(policy, customer_id, visible, horizon)
    return () if later is None else later.changes


def _next_target(
    policy: Policy,
    customer_id: str,
    visible: Sequence[OrderEvent],
    state: Any,
    as_of_us: int,
    projection: Sequence[Any],
) -> TierTarget | None:
    names = policy.tier_names
    if state.tier + 1 >= len(names):
        return None
    index = state.tier + 1
    threshold = policy.thresholds_us(state.region)[index]
    min_orders = policy.min_orders_list[index]
    reached = next(
        (c.at_us for c in projection if c.at_us > as_of_us and c.new_tier >= index), None
    )
    return TierTarget(
        tier=names[index],
        min_spend_us=threshold,
        min_orders=min_orders,
        spend_needed_us=max(0, threshold - state.qualifying_us),
        orders_needed=max(0, min_orders - state.qualifying_orders),
        spend_needed_after_pending_us=max(0, threshold - state.qualifying_us - state.pending_us),
        reached_by_pending_at_us=reached,
    )


def _keep_target(
    policy: Policy, state: Any, projection: Sequence[Any], as_of_us: int
) -> KeepTarget | None:
    if state.tier == 0:
        return None  # the default tier is never lost
    names = policy.tier_names
    threshold = policy.thresholds_us(state.region)[state.tier]
    min_orders = policy.min_orders_list[state.tier]
    eligible = state.eligible_tier >= state.tier
    drop = next((c for c in projection if c.at_us > as_of_us and c.new_tier < c.old_tier), None)
    needed_then = 0
    if drop is not None:  # the engine's own numbers at that instant
        needed_then = max(0, policy.thresholds_us(drop.region)[state.tier] - drop.qualifying_us)
    return KeepTarget(
        tier=names[state.tier],
        min_spend_us=threshold,
        min_orders=min_orders,
        eligible=eligible,
        spend_needed_us=max(0, threshold - state.qualifying_us),
        orders_needed=max(0, min_orders - state.qualifying_orders),
        headroom_us=max(0, state.qualifying_us - threshold) if eligible else 0,
        grace_ends_at_us=state.grace_ends_at_us,
        at_risk_at_us=None if drop is None else drop.at_us,
        falls_to=None if drop is None else names[drop.new_tier],
        spend_needed_by_then_us=needed_then,
    )


def _rules_transition(
    policy: Policy,
    change: Any,
    steps: dict[tuple[int, str, str], tuple[str, SpendStep]],
    orders: Sequence[Order],
) -> LedgerTransition:
    """A ``TierChange`` with the orders and events behind it and the rule in words."""
    names = policy.tier_names
    at = change.at_us
    parts: list[str] = []
    event_ids: list[str] = []
    for (step_at, event_id, cause), (order_id, step) in sorted(steps.items()):
        if step_at != at:
            continue
        event_ids.append(event_id)
        amount = _money(abs(step.spend_us), policy.base_currency)
        if cause == "maturity":
            parts.append(
                f"order {order_id} cleared the {policy.buffer_days:g}-day buffer (+{amount})"
            )
        elif cause == "late_refund":
            parts.append(f"late refund {event_id} on order {order_id} (-{amount})")
        elif cause == "cancel":
            parts.append(f"order {order_id} cancelled after the buffer (-{amount})")
        else:
            parts.append(f"order {order_id} left the {policy.window_days:g}-day window (-{amount})")
    placed = [o for o in orders if o.placed_at_us == at]
    for order in placed:
        event_ids.append(order.event_id)
        parts.append(f"new order {order.order_id} (region {order.region or 'none'})")
    causes = tuple(change.cause.split(","))
    old, new = names[change.old_tier], names[change.new_tier]
    spend = _money(change.qualifying_us, policy.base_currency)
    if change.new_tier > change.old_tier:
        threshold = policy.thresholds_us(change.region)[change.new_tier]
        outcome = (
            f"qualifying spend {spend} ({_orders(change.qualifying_orders)}) meets {new} "
            f"({_money(threshold, policy.base_currency)}"
            + (
                f", {policy.min_orders_list[change.new_tier]} orders"
                if policy.min_orders_list[change.new_tier]
                else ""
            )
            + "): upgrades are immediate"
        )
        direction = "upgrade"
    else:
        threshold = policy.thresholds_us(change.region)[change.old_tier]
        outcome = (
            f"qualifying spend {spend} ({_orders(change.qualifying_orders)}) no longer meets {old} "
            f"({_money(threshold, policy.base_currency)}); eligible for {names[change.eligible_tier]}"
        )
        if "grace_end" in causes:
            outcome += f"; the {policy.downgrade_grace_days:g}-day grace period ended"
        elif policy.grace_us == 0:
            outcome += "; downgrades are immediate (no grace period)"
        else:
            outcome += f"; the last order was over {policy.downgrade_grace_days:g} days before"
        direction = "downgrade"
    if not parts and "grace_end" in causes:
        parts.append(f"no new order since {iso(at - policy.grace_us)}")
    rule = "; ".join([*parts, outcome])
    return LedgerTransition(
        at_us=at,
        old_tier=old,
        new_tier=new,
        direction=direction,
        source="rules",
        causes=causes,
        rule=rule,
        qualifying_us=change.qualifying_us,
        qualifying_orders=change.qualifying_orders,
        eligible_tier=names[change.eligible_tier],
        events=tuple(event_ids),
    )


# --- output ----------------------------------------------------------------------------------


def _orders(count: int) -> str:
    return f"{count} order" if count == 1 else f"{count} orders"


def _money(micros: int, currency: str) -> str:
    return f"{micros_to_money(micros):,.2f} {currency}"


def iso(micros: int | None) -> str | None:
    """An instant as ISO 8601 UTC with ``Z`` (fraction only when there is one)."""
    if micros is None:
        return None
    text = micros_to_instant(micros).strftime("%Y-%m-%dT%H:%M:%S.%f").removesuffix(".000000")
    return text + "Z"


def _jsonable(value: Any, name: str = "") -> Any:
    """Dataclasses to dicts: ``*_at_us``/``*_since_us`` to ISO text, other ``*_us`` money to
    base-currency amounts, names without the ``_us`` suffix."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for item in dataclasses.fields(value):
            key, converted = _convert(item.name, getattr(value, item.name))
            out[key] = converted
        if isinstance(value, TierLedger):
            out["counted_sum"] = micros_to_money(value.counted_sum_us)
            out["pending_sum"] = micros_to_money(value.pending_sum_us)
        return out
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    return value


def _convert(name: str, value: Any) -> tuple[str, Any]:
    if name.endswith("_us"):
        base = name.removesuffix("_us")
        if base.endswith(("_at", "_since")) or base in {"at", "as_of", "until"}:
            return base, iso(value)
        return base, None if value is None else micros_to_money(value)
    return name, _jsonable(value)


def render_text(ledger: TierLedger) -> str:
    """The ledger as plain text: the tier, the numbers, the orders, the transitions, the targets."""
    cur = ledger.base_currency
    lines = [
        f"Customer {ledger.customer_id} as of {iso(ledger.as_of_us)}",
        (
            f"  tier {ledger.effective_tier}; by the rules {ledger.tier}"
            if ledger.effective_tier != ledger.tier
            else f"  tier {ledger.tier}"
        )
        + f" since {iso(ledger.tier_since_us)}; eligible for {ledger.eligible_tier}",
        f"  qualifying spend {_money(ledger.qualifying_us, cur)} from "
        f"{ledger.qualifying_orders} orders; pending {_money(ledger.pending_us, cur)}",
        f"  rules: {ledger.buffer_days:g}-day buffer, "
        + ("lifetime spend" if ledger.window_days is None else f"{ledger.window_days:g}-day window")
        + f", late refunds {ledger.late_refunds}, {ledger.grace_days:g}-day downgrade grace",
    ]
    if ledger.hold is not None:
        hold = ledger.hold
        until = "until cleared" if hold.until_us is None else f"until {iso(hold.until_us)}"
        lines.append(
            f"  held at {hold.tier} by {hold.kind} {until}"
            + (f" ({hold.reason})" if hold.reason else "")
        )
    lines.append("")
    lines.append("Orders")
    for order in ledger.orders:
        lines.append(
            f"  {order.order_id}  placed {iso(order.placed_at_us)}  {_money(order.value_us, cur)}  "
            f"{order.status}: counts {_money(order.counted_us, cur)}, pending {_money(order.pending_us, cur)}; "
            f"clears the buffer {iso(order.matures_at_us)}"
            + (
                ""
                if order.leaves_window_at_us is None
                else f", leaves the window {iso(order.leaves_window_at_us)}"
            )
        )
        for adj in order.adjustments:
            lines.append(
                f"      {adj.event_type} {adj.event_id} at {iso(adj.at_us)}: removed "
                f"{_money(adj.removed_us, cur)} ({adj.effect.replace('_', ' ')}"
                + (
                    f", qualifying spend {_money(adj.spend_effect_us, cur)}"
                    if adj.spend_effect_us
                    else ""
                )
                + ")"
            )
    lines.append("")
    lines.append("Transitions")
    for item in ledger.transitions:
        flag = "" if item.effective else " [not in force: held]"
        lines.append(
            f"  {iso(item.at_us)}  {item.old_tier or '-'} -> {item.new_tier or '-'}  "
            f"({', '.join(CAUSE_LABELS.get(c, c) for c in item.causes)}){flag}: {item.rule}"
        )
    if ledger.projected:
        lines.append("")
        lines.append("If nothing else happens")
        for item in ledger.projected:
            lines.append(
                f"  {iso(item.at_us)}  {item.old_tier} -> {item.new_tier}  "
                f"({', '.join(CAUSE_LABELS.get(c, c) for c in item.causes)}): {item.rule}"
            )
    lines.append("")
    lines.extend(_target_lines(ledger))
    for note in ledger.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def _target_lines(ledger: TierLedger) -> list[str]:
    cur = ledger.base_currency
    lines = []
    target = ledger.next_tier
    if target is None:
        lines.append(f"Next tier: none ({ledger.tier} is the top tier)")
    else:
        text = f"Next tier {target.tier}: spend {_money(target.spend_needed_us, cur)} more"
        if target.orders_needed:
            text += f" and {target.orders_needed} more qualifying orders"
        text += f" (counted {ledger.buffer_days:g} days after each order)"
        if target.reached_by_pending_at_us is not None:
            text += (
                f"; the pending orders get there on {iso(target.reached_by_pending_at_us)} if kept"
            )
        elif ledger.pending_us:
            text += f"; {_money(target.spend_needed_after_pending_us, cur)} more once the pending orders count"
        lines.append(text)
    keep = ledger.keep
    if keep is not None:
        if keep.eligible:
            text = f"Keep {keep.tier}: met with {_money(keep.headroom_us, cur)} to spare"
        else:
            text = (
                f"Keep {keep.tier}: {_money(keep.spend_needed_us, cur)} short"
                + (f" and {keep.orders_needed} orders short" if keep.orders_needed else "")
                + (
                    f"; protected until the grace period ends on {iso(keep.grace_ends_at_us)} "
                    "(any new order restarts it)"
                    if keep.grace_ends_at_us is not None
                    else ""
                )
            )
        if keep.at_risk_at_us is not None:
            text += (
                f"; if nothing else happens, drops to {keep.falls_to} on {iso(keep.at_risk_at_us)}"
                f" unless {_money(keep.spend_needed_by_then_us, cur)} more counts by then"
            )
        lines.append(text)
    return lines
