"""Re-evaluating one customer: from their ledger events to the new tier state, audit and outbox.

Pure functions, no database: the service loads a customer's events, stored
state and override, calls :func:`evaluate`, and writes what comes back in the
same transaction. The tier itself always comes from ``tier_ml.rules.replay``
(one rules engine); this module only decides what to *record*.

The store's clock only moves forward: a customer is evaluated at
``max(now, evaluated_at)``, so a backfill with an older ``--now`` never rolls a
state back.

Audit (one :class:`Transition` per change of the *effective* tier):

- ``enrolment``: the first tier of a new customer (old tier empty), dated at
  their first order; followed by every rules change up to now;
- ``upgrade`` / ``downgrade``: a rules change (``TierChange``) dated in
  ``(evaluated_at, now]``, with its cause (``order``, ``maturity``,
  ``late_refund``, ``cancel``, ``window_exit``, ``grace_end``);
- ``reclassification`` (cause ``late_events``): an event dated before the last
  evaluation rewrote the past, so the tier the replayed history had at the last
  evaluation differs from the stored one; the correction is dated at the last
  evaluation and the changes after it follow. ``apply_policy`` writes
  ``reclassification`` rows too (cause ``policy``);
- ``override``: an override set or cleared (actor: the person) or expired
  (actor ``system``, dated at its ``until``);
- ``grandfathering``: a grandfathered tier ended (cause ``grandfather_end``,
  dated at its ``until``); ``apply_policy`` records the start.

Grandfathering (:class:`Floor`). A policy applied with ``--grandfather-until``
gives current members a floor: until that date their effective tier is the
higher of the rules tier under the new policy and the tier they had; from that
date on it is the rules tier, exactly what ``classify`` gives. An override
beats both.

Overrides. While an override is active the effective tier is the override's
tier (``tier_since`` = when it was set); the rules keep running underneath
(``rules_tier``, spend, next maturities). When it expires or is cleared, the
rules take over again: the customer then has exactly the state ``classify``
gives at that instant (the rules tier with its own ``tier_since``), and the
switch is audited with reason ``override``.

Outbox: one message per evaluation whose effective tier differs from the one
stored before: ``welcome`` for a customer's first tier, else ``tier_upgraded``
or ``tier_downgraded`` from the stored tier to the new one (intermediate
steps of a long backfill are in the audit log, not sent as notifications).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from tier_ml.events import EventType, OrderEvent
from tier_ml.policy import Policy
from tier_ml.rules import CustomerTier, ReplayCheckpoint, TierChange, replay

SYSTEM_ACTOR = "system"


@dataclass(frozen=True, slots=True)
class TierState:
    """A customer's row of ``tier_state`` (see ``models.TierStateRow``)."""

    customer_id: str
    tier: str | None
    rules_tier: str | None
    eligible_tier: str | None
    tier_since_us: int | None
    qualifying_us: int
    pending_us: int
    qualifying_orders: int
    region: str | None
    last_order_at_us: int | None
    grace_ends_at_us: int | None
    next_change_at_us: int | None
    tier_changes: int
    evaluated_at_us: int
    next_due_at_us: int | None

    def as_row(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, slots=True)
class Override:
    """An override that has not been cleared (it may have expired)."""

    id: int
    customer_id: str
    tier: str
    actor: str
    reason: str
    set_at_us: int
    until_us: int | None

    def active_after(self, at_us: int) -> bool:
        """Still in force just after ``at_us``."""
        return self.until_us is None or self.until_us > at_us


@dataclass(frozen=True, slots=True)
class Floor:
    """A grandfathered tier: the effective tier is at least ``tier`` in ``[set_at, until)``."""

    customer_id: str
    tier: str
    since_us: int  # when the customer got that tier (their tier_since when it was granted)
    set_at_us: int
    until_us: int
    policy_version: int

    def active_at(self, at_us: int) -> bool:
        return self.set_at_us <= at_us < self.until_us


@dataclass(frozen=True, slots=True)
class Transition:
    """One audit row: the effective tier went from ``old_tier`` to ``new_tier`` at ``at_us``."""

    customer_id: str
    at_us: int
    old_tier: str | None
    new_tier: str | None
    reason: str  # enrolment | upgrade | downgrade | override | reclassification
    cause: str
    actor: str = SYSTEM_ACTOR
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """One outbox message: ``welcome``, ``tier_upgraded`` or ``tier_downgraded``."""

    kind: str
    customer_id: str
    old_tier: str | None
    new_tier: str
    at_us: int

    def idempotency_key(self, recorded_at_us: int, ledger_size: int, salt: str = "") -> str:
        """Stable across retries of the same write; distinct for distinct writes."""
        text = "|".join(
            str(part)
            for part in (
                self.kind,
                self.customer_id,
                self.old_tier,
                self.new_tier,
                self.at_us,
                recorded_at_us,
                ledger_size,
                salt,
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Evaluation:
    """The outcome of evaluating one customer at ``state.evaluated_at_us``.

    ``state`` is the effective state (override applied), ``rules_state`` the
    state the rules alone give (what ``classify`` would say); ``previous_tier``
    the effective tier stored before, for the outbox message.
    """

    state: TierState
    rules_state: TierState
    transitions: list[Transition] = field(default_factory=list)
    previous_tier: str | None = None
    #: The replay's state before ``evaluated_at``: the next evaluation resumes from it.
    checkpoint: ReplayCheckpoint | None = None


def evaluate(
    policy: Policy,
    customer_id: str,
    events: Sequence[OrderEvent],
    previous: TierState | None,
    override: Override | None,
    now_us: int,
    policy_since_us: int | None = None,
    floor: Floor | None = None,
    resume: ReplayCheckpoint | None = None,
) -> Evaluation:
    """Re-evaluate one customer from all their ledger events (validated under ``policy``).

    ``previous``: the stored state (None for a new customer); ``override``: the
    customer's uncleared override, if any; ``policy_since_us``: when the active
    policy version was applied (every customer was evaluated then); ``floor``:
    the customer's latest grandfathered tier, if any; ``resume``: the checkpoint
    of the customer's last evaluation (the rules replay only what came after it
    when it still holds, and ignore it otherwise: the result is the same).
    """
    last = _last_evaluated(previous, policy_since_us)
    as_of = now_us if last is None else max(now_us, last)
    # A customer's events arrive roughly in time order (also in a backfill whose clock is far
    # ahead), so the next ones are dated at or after the latest one seen: checkpoint there.
    latest = max([t for e in events if (t := e.at_us) <= as_of], default=as_of)
    result = replay(policy, customer_id, events, as_of, resume=resume, checkpoint_before=latest)
    rules_state = _rules_state(policy, customer_id, events, result, as_of)
    held = rules_state if floor is None else with_floor(policy, rules_state, floor, result)
    live = override if override is not None and override.active_after(as_of) else None
    state = with_override(held, live) if live is not None else held
    if previous is None or previous.tier is None or last is None:
        transitions = _enrolment(policy, customer_id, events, result, as_of)
    elif floor is not None and floor.until_us > last:
        pending = override if override is not None and override.active_after(last) else None
        transitions = _history_with_floor(policy, previous, result, pending, floor, last, as_of)
    else:
        pending = override if override is not None and override.active_after(last) else None
        transitions = _history(policy, previous, result, pending, last, as_of)
    return Evaluation(
        state,
        rules_state,
        transitions,
        None if previous is None else previous.tier,
        None if result is None else result.checkpoint,
    )


def with_override(rules_state: TierState, override: Override) -> TierState:
    """The effective state under an active override (the rules keep running underneath)."""
    due = [t for t in (rules_state.next_due_at_us, override.until_us) if t is not None]
    return dataclasses.replace(
        rules_state,
        tier=override.tier,
        tier_since_us=override.set_at_us,
        next_due_at_us=min(due, default=None),
    )


def with_floor(
    policy: Policy, rules_state: TierState, floor: Floor, result: CustomerTier | None
) -> TierState:
    """The effective state under a grandfathered tier: the higher of the rules tier and the
    floor while it lasts, and a due time at its end so the sweep re-evaluates the customer."""
    at = rules_state.evaluated_at_us
    if result is None or rules_state.tier is None or not floor.active_at(at):
        return rules_state
    due = min(t for t in (rules_state.next_due_at_us, floor.until_us) if t is not None)
    if _rank(policy, rules_state.tier) >= _rank(policy, floor.tier):
        return dataclasses.replace(rules_state, next_due_at_us=due)
    level = _rank(policy, floor.tier)
    since = floor.since_us
    for change in result.changes:
        if floor.set_at_us < change.at_us <= at and max(change.old_tier, level) != max(
            change.new_tier, level
        ):
            since = change.at_us  # the effective tier last changed (back) to the floor then
    return dataclasses.replace(
        rules_state, tier=floor.tier, tier_since_us=since, next_due_at_us=due
    )


def notice_for(
    policy: Policy,
    previous_tier: str | None,
    state: TierState,
    transitions: Sequence[Transition],
) -> Notice | None:
    """The outbox message for a change of effective tier from ``previous_tier`` (or None)."""
    if state.tier is None or state.tier == previous_tier:
        return None
    at_us = transitions[-1].at_us if transitions else state.evaluated_at_us
    if previous_tier is None:
        return Notice("welcome", state.customer_id, None, state.tier, at_us)
    kind = (
        "tier_upgraded"
        if _rank(policy, state.tier) > _rank(policy, previous_tier)
        else "tier_downgraded"
    )
    return Notice(kind, state.customer_id, previous_tier, state.tier, at_us)


def _rank(policy: Policy, tier: str) -> int:
    """A tier's place on the ladder (-1 for a name the policy no longer has)."""
    names = policy.tier_names
    return names.index(tier) if tier in names else -1


def _last_evaluated(previous: TierState | None, policy_since_us: int | None) -> int | None:
    if previous is None:
        return None
    if policy_since_us is None:
        return previous.evaluated_at_us
    return max(previous.evaluated_at_us, policy_since_us)


def _rules_state(
    policy: Policy,
    customer_id: str,
    events: Sequence[OrderEvent],
    result: CustomerTier | None,
    as_of: int,
) -> TierState:
    due = _next_due(policy, events, result, as_of)
    if result is None:
        return TierState(
            customer_id, None, None, None, None, 0, 0, 0, None, None, None, None, 0, as_of, due
        )
    names = policy.tier_names
    return TierState(
        customer_id=customer_id,
        tier=names[result.tier],
        rules_tier=names[result.tier],
        eligible_tier=names[result.eligible_tier],
        tier_since_us=result.tier_since_us,
        qualifying_us=result.qualifying_us,
        pending_us=result.pending_us,
        qualifying_orders=result.qualifying_orders,
        region=result.region,
        last_order_at_us=result.last_order_at_us,
        grace_ends_at_us=result.grace_ends_at_us,
        next_change_at_us=result.next_change_at_us,
        tier_changes=len(result.changes),
        evaluated_at_us=as_of,
        next_due_at_us=due,
    )


def _next_due(
    policy: Policy, events: Sequence[OrderEvent], result: CustomerTier | None, as_of: int
) -> int | None:
    """The next instant the state may change without a new delivery.

    The rules' next change (maturity, window exit, grace end), plus two the
    rules do not report because they change no tier: a pending order's
    maturity (pending spend drops even when the order never counts) and the
    earliest event dated after ``as_of`` (it becomes visible then).
    """
    candidates = []
    if result is not None and result.next_change_at_us is not None:
        candidates.append(result.next_change_at_us)
    buffer_us = policy.buffer_us
    for event in events:
        if event.at_us > as_of:
            candidates.append(event.at_us)
        elif event.event_type == EventType.PLACED and event.at_us + buffer_us > as_of:
            candidates.append(event.at_us + buffer_us)
    return min(candidates, default=None)


def _change(policy: Policy, customer_id: str, change: TierChange) -> Transition:
    names = policy.tier_names
    return Transition(
        customer_id,
        change.at_us,
        names[change.old_tier],
        names[change.new_tier],
        change.direction,
        change.cause,
    )


def _enrolment(
    policy: Policy,
    customer_id: str,
    events: Sequence[OrderEvent],
    result: CustomerTier | None,
    as_of: int,
) -> list[Transition]:
    """A new customer: their first tier at their first order, then every change up to now."""
    if result is None:
        return []
    first_order = min(
        e.at_us for e in events if e.event_type == EventType.PLACED and e.at_us <= as_of
    )
    enrolment = Transition(
        customer_id, first_order, None, policy.tier_names[0], "enrolment", "first_order"
    )
    return [enrolment, *(_change(policy, customer_id, c) for c in result.changes)]


def _history(
    policy: Policy,
    previous: TierState,
    result: CustomerTier | None,
    override: Override | None,
    last: int,
    as_of: int,
) -> list[Transition]:
    """Audit rows for ``(last, as_of]``, given the effective tier stored at ``last``.

    ``override`` is the override in force just after ``last`` (if any).
    """
    customer_id, stored = previous.customer_id, previous.tier
    if result is None:  # no order is valid any more (a policy dropped their currency)
        return [Transition(customer_id, as_of, stored, None, "reclassification", "no_valid_orders")]
    if override is not None and override.active_after(as_of):
        return []  # the override holds the effective tier through the whole interval
    if override is not None:
        start, reason, cause = override.until_us or as_of, "override", "override_expired"
    else:
        start, reason, cause = last, "reclassification", "late_events"
    transitions = []
    rules_tier = _rules_tier_at(policy, result, start)
    if rules_tier != stored:
        transitions.append(Transition(customer_id, start, stored, rules_tier, reason, cause))
    transitions.extend(
        _change(policy, customer_id, c) for c in result.changes if start < c.at_us <= as_of
    )
    return transitions


def _history_with_floor(
    policy: Policy,
    previous: TierState,
    result: CustomerTier | None,
    override: Override | None,
    floor: Floor,
    last: int,
    as_of: int,
) -> list[Transition]:
    """Audit rows for ``(last, as_of]`` while a grandfathered tier was in force at ``last``:
    each change of the effective tier (override, else max(rules tier, floor), else rules tier)."""
    customer_id, stored = previous.customer_id, previous.tier
    if result is None:
        return [Transition(customer_id, as_of, stored, None, "reclassification", "no_valid_orders")]
    if override is not None and override.active_after(as_of):
        return []
    names = policy.tier_names
    level = _rank(policy, floor.tier)

    def rules_at(at_us: int) -> int:
        tier = 0
        for change in result.changes:
            if change.at_us > at_us:
                break
            tier = change.new_tier
        return tier

    def effective(at_us: int) -> str:
        if override is not None and override.active_after(at_us):
            return override.tier
        tier = rules_at(at_us)
        return names[max(tier, level)] if floor.active_at(at_us) else names[tier]

    by_instant = {c.at_us: c for c in result.changes}
    ends = [override.until_us if override is not None else None, floor.until_us]
    instants = sorted(
        {t for t in by_instant if last < t <= as_of} | {t for t in ends if t and last < t <= as_of}
    )
    transitions = []
    current = effective(last)
    if current != stored:
        transitions.append(
            Transition(customer_id, last, stored, current, "reclassification", "late_events")
        )
    for at_us in instants:
        new = effective(at_us)
        if new == current:
            continue
        note = None
        if override is not None and at_us == override.until_us:
            reason, cause = "override", "override_expired"
        elif at_us == floor.until_us:
            reason, cause = "grandfathering", "grandfather_end"
            note = f"grandfathered at {floor.tier} under policy version {floor.policy_version}"
        else:
            up = _rank(policy, new) > _rank(policy, current)
            reason, cause = ("upgrade" if up else "downgrade"), by_instant[at_us].cause
            if floor.active_at(at_us) and new == floor.tier:
                note = f"held at {floor.tier} by grandfathering"
        transitions.append(Transition(customer_id, at_us, current, new, reason, cause, note=note))
        current = new
    return transitions


def _rules_tier_at(policy: Policy, result: CustomerTier, at_us: int) -> str:
    """The rules tier the replayed history had at ``at_us`` (the customer had an order by then)."""
    tier = 0
    for change in result.changes:
        if change.at_us > at_us:
            break
        tier = change.new_tier
    return policy.tier_names[tier]
