"""Read use cases of the HTTP service: one customer's view, tier segments, the support queue,
ledger rows for features.

Reads never write: a customer whose next due instant has passed (a maturity, a
grace end, an override expiry since the last sweep) is re-evaluated *in
memory* at ``now_us`` with the same ``evaluation.evaluate`` the writers use, so
a read says what the tier is now even before the worker's next sweep. Time is
passed in (``now_us``, epoch microseconds).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd
from sqlalchemy import Engine, Table, func, or_, select, text

from tier_ml.events import EVENT_FIELDS
from tier_ml.money import micros_to_money
from tier_ml.policy import Policy, parse_policy
from tier_ml.rules import build_orders, pending_at
from tier_ml.store.evaluation import Override, TierState, evaluate
from tier_ml.store.models import AuditRow, OrderEventRow, TierStateRow
from tier_ml.store.repository import STATE_FIELDS, ActivePolicy, Repository
from tier_ml.store.service import tiers_frame, typed_states
from tier_ml.store.storable import storable
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction

STATES: Table = TierStateRow.__table__  # type: ignore[assignment]
AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]
EVENTS: Table = OrderEventRow.__table__  # type: ignore[assignment]
IN_CHUNK = 5_000


@dataclass(frozen=True)
class PendingOrder:
    """An order still inside its buffer: what it will add, and when."""

    order_id: str
    placed_at_us: int
    pending_us: int
    matures_at_us: int


@dataclass
class CustomerView:
    """Everything the CRM or the customer portal shows about one customer."""

    state: TierState
    policy: Policy
    policy_version: int
    override: Override | None
    pending_orders: list[PendingOrder] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    tier_row: dict[str, Any] = field(default_factory=dict)  # next_tier, spend_to_next_tier


def next_tier_of(policy: Policy, state: TierState) -> dict[str, Any]:
    """``next_tier`` and ``spend_to_next_tier`` as ``service.tiers_frame`` defines them (one
    customer, plain Python: a lookup answers in well under a millisecond)."""
    names = policy.tier_names
    if state.tier not in names or names.index(state.tier) == len(names) - 1:
        return {"next_tier": None, "spend_to_next_tier": None}
    rank = names.index(state.tier)
    missing = max(0, policy.thresholds_us(state.region)[rank + 1] - state.qualifying_us)
    return {"next_tier": names[rank + 1], "spend_to_next_tier": micros_to_money(missing)}


def _current(
    repo: Repository, active: ActivePolicy, states: Sequence[TierState], now_us: int
) -> list[TierState]:
    """The states at ``now_us``: those due re-evaluated in memory, the others as stored."""
    due = [
        s.customer_id for s in states if s.next_due_at_us is not None and s.next_due_at_us <= now_us
    ]
    if not due:
        return list(states)
    events, _ = repo.customer_events(due, active.policy)
    overrides = repo.open_overrides(due)
    fresh = {}
    for state in states:
        if state.customer_id in events:
            fresh[state.customer_id] = evaluate(
                active.policy,
                state.customer_id,
                events[state.customer_id],
                state,
                overrides.get(state.customer_id),
                now_us,
                active.created_at_us,
            ).state
    return [fresh.get(s.customer_id, s) for s in states]


def _states_frame(states: Sequence[TierState]) -> pd.DataFrame:
    return typed_states(pd.DataFrame([s.as_row() for s in states], columns=list(STATE_FIELDS)))


#: The reads of one customer's view: module-level ``text`` constructs compile once.
_ACTIVE_POLICY = text(
    "SELECT version, policy_json, created_at_us, actor FROM policy_versions ORDER BY version DESC LIMIT 1"
)
_STATE = text(f"SELECT {', '.join(STATE_FIELDS)} FROM tier_state WHERE customer_id = :customer_id")
_OVERRIDE = text(
    "SELECT id, customer_id, tier, actor, reason, set_at_us, until_us FROM overrides "
    "WHERE customer_id = :customer_id AND cleared_at_us IS NULL ORDER BY id DESC LIMIT 1"
)
_HISTORY = text(
    "SELECT at_us, recorded_at_us, old_tier, new_tier, reason, cause, note, policy_version, actor "
    "FROM audit_log WHERE customer_id = :customer_id ORDER BY id"
)


@lru_cache(maxsize=16)
def parse_stored_policy(policy_json: str) -> Policy:
    """A stored policy version, parsed once per process."""
    return parse_policy(json.loads(policy_json), source="stored policy")


def customer_view(engine: Engine, customer_id: str, now_us: int) -> CustomerView | None:
    """One customer at ``now_us`` (None when the store has no order of theirs by then).

    The hot read of the service (CRM and portal lookups): four indexed statements in
    one read transaction; the customer's ledger is only read when they are due or
    have pending spend.
    """

    if not storable(customer_id):  # no stored id holds it, and PostgreSQL refuses the lookup
        return None

    def work(uow: UnitOfWork) -> CustomerView | None:
        repo = uow.repo
        connection = repo.connection
        policy_row = connection.execute(_ACTIVE_POLICY).first()
        state_row = connection.execute(_STATE, {"customer_id": customer_id}).first()
        if policy_row is None or state_row is None:
            return None
        active = ActivePolicy(
            policy_row.version,
            parse_stored_policy(policy_row.policy_json),
            policy_row.created_at_us,
            policy_row.actor,
        )
        (state,) = _current(repo, active, [TierState(*state_row)], now_us)
        if state.tier is None:
            return None
        at_us = state.evaluated_at_us
        found = connection.execute(_OVERRIDE, {"customer_id": customer_id}).first()
        override = None if found is None else Override(*found)
        if override is not None and not override.active_after(at_us):
            override = None
        pending: list[PendingOrder] = []
        if state.pending_us > 0:
            events, _ = repo.customer_events([customer_id], active.policy)
            visible = [e for e in events[customer_id] if e.at_us <= at_us]
            for order in build_orders(visible):
                value = pending_at(order, active.policy, at_us)
                if value > 0:
                    matures = order.placed_at_us + active.policy.buffer_us
                    pending.append(PendingOrder(order.order_id, order.placed_at_us, value, matures))
        history = [
            dict(row._mapping) for row in connection.execute(_HISTORY, {"customer_id": customer_id})
        ]
        row = next_tier_of(active.policy, state)
        return CustomerView(state, active.policy, active.version, override, pending, history, row)

    return run_in_transaction(engine, work, read_only=True)


def segment_page(
    engine: Engine, tier: str, now_us: int, after: str | None = None, limit: int | None = None
) -> tuple[pd.DataFrame, Policy | None]:
    """Customers in ``tier`` at ``now_us`` as ``classify`` columns, by customer id, after the
    cursor ``after``; at most ``limit`` rows (all with None). Also the active policy.

    Candidates are the customers stored in the tier plus those due (whose tier may
    have changed since the last sweep); the due ones are re-evaluated in memory.
    """

    def work(uow: UnitOfWork) -> tuple[pd.DataFrame, Policy | None]:
        repo = uow.repo
        active = repo.active_policy()
        if active is None:
            return tiers_frame(_states_frame([]), _placeholder_policy()), None
        found: list[TierState] = []
        cursor = after
        batch = 2_000 if limit is None else max(2 * limit, 50)
        while limit is None or len(found) < limit:
            query = (
                select(STATES)
                .where(or_(STATES.c.tier == tier, STATES.c.next_due_at_us <= now_us))
                .order_by(STATES.c.customer_id)
                .limit(batch)
            )
            if cursor is not None:
                query = query.where(STATES.c.customer_id > cursor)
            rows = [TierState(**row._mapping) for row in repo.connection.execute(query)]
            if not rows:
                break
            cursor = rows[-1].customer_id
            found.extend(s for s in _current(repo, active, rows, now_us) if s.tier == tier)
            if len(rows) < batch:
                break
        if limit is not None:
            found = found[:limit]
        return tiers_frame(_states_frame(found), active.policy), active.policy

    return run_in_transaction(engine, work, read_only=True)


def _placeholder_policy() -> Policy:
    from tier_ml.policy import load_policy

    return load_policy(None)


def tier_counts(engine: Engine) -> dict[str, int]:
    """Customers per stored tier (as of the last evaluation of each)."""
    query = (
        select(STATES.c.tier, func.count())
        .where(STATES.c.tier.is_not(None))
        .group_by(STATES.c.tier)
    )
    rows = run_in_transaction(
        engine, lambda uow: uow.repo.connection.execute(query).fetchall(), read_only=True
    )
    return {tier: int(count) for tier, count in rows}


def customer_tiers(engine: Engine, customer_ids: Sequence[str], now_us: int) -> pd.DataFrame:
    """``classify`` columns of the given customers at ``now_us`` (unknown ids left out)."""
    customer_ids = [c for c in customer_ids if storable(c)]  # never stored: unknown

    def work(uow: UnitOfWork) -> pd.DataFrame:
        repo = uow.repo
        active = repo.active_policy()
        if active is None:
            return tiers_frame(_states_frame([]), _placeholder_policy())
        stored = repo.tier_states(customer_ids)
        states = _current(repo, active, list(stored.values()), now_us)
        return tiers_frame(_states_frame(states), active.policy)

    return run_in_transaction(engine, work, read_only=True)


def support_priority(
    engine: Engine,
    now_us: int,
    customer_ids: Sequence[str] | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Customers in support order: highest tier first, then by value (qualifying spend, then
    pending spend), then customer id. ``customer_ids``: the open queue (default: everyone)."""

    def work(uow: UnitOfWork) -> pd.DataFrame:
        repo = uow.repo
        active = repo.active_policy()
        if active is None:
            return tiers_frame(_states_frame([]), _placeholder_policy())
        if customer_ids is None:
            stored = [TierState(**row._mapping) for row in repo.connection.execute(select(STATES))]
        else:
            stored = list(repo.tier_states(customer_ids).values())
        states = _current(repo, active, stored, now_us)
        rank = {name: i for i, name in enumerate(active.policy.tier_names)}
        ordered = sorted(
            (s for s in states if s.tier is not None),
            key=lambda s: (
                -rank.get(s.tier or "", -1),
                -s.qualifying_us,
                -s.pending_us,
                s.customer_id,
            ),
        )
        if limit is not None:
            ordered = ordered[:limit]
        frame = tiers_frame(_states_frame(ordered), active.policy)
        order = {s.customer_id: i for i, s in enumerate(ordered)}
        frame = frame.iloc[frame["customer_id"].map(order).argsort(kind="stable")]
        return frame.reset_index(drop=True)

    return run_in_transaction(engine, work, read_only=True)


def ledger_rows(engine: Engine, customer_ids: Sequence[str]) -> pd.DataFrame:
    """The canonical raw ledger rows of the given customers (for features), in arrival order."""
    ids = sorted(set(customer_ids))
    columns = [EVENTS.c[name] for name in EVENT_FIELDS]

    def work(uow: UnitOfWork) -> pd.DataFrame:
        frames = []
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start : start + IN_CHUNK]
            query = select(EVENTS.c.id, *columns).where(EVENTS.c.customer_id.in_(chunk))
            frames.append(uow.repo._frame(query, ["id", *EVENT_FIELDS]))
        if not frames:
            return pd.DataFrame(columns=["id", *EVENT_FIELDS])
        return pd.concat(frames, ignore_index=True)

    frame = run_in_transaction(engine, work, read_only=True)
    return frame.sort_values("id", kind="stable")[list(EVENT_FIELDS)].reset_index(drop=True)


def store_version(engine: Engine) -> tuple[int, int, int]:
    """A cheap fingerprint of the store's content: (latest ledger id, latest audit id, policy
    version). Anything derived from the ledger and the tiers can be cached under it."""

    def work(uow: UnitOfWork) -> tuple[int, int, int]:
        connection = uow.repo.connection
        ledger = connection.execute(select(func.max(EVENTS.c.id))).scalar() or 0
        audit = connection.execute(select(func.max(AUDIT.c.id))).scalar() or 0
        active = uow.repo.active_policy()
        return int(ledger), int(audit), 0 if active is None else active.version

    return run_in_transaction(engine, work, read_only=True)


def ping(engine: Engine) -> None:
    """Raise when the store cannot be read."""
    run_in_transaction(
        engine, lambda uow: uow.repo.connection.exec_driver_sql("SELECT 1").scalar(), read_only=True
    )
