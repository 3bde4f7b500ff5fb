"""Use cases of the tier store: ingest events, sweep due customers, overrides, policy versions,
exports.

Each function opens one transaction (``unit_of_work.run_in_transaction``),
calls the domain (``intake.admit`` for the ledger rules, ``evaluation.evaluate``
which calls ``tier_ml.rules.replay``), writes the results, commits. Time is
always passed in (``now_us``, epoch microseconds): the CLI is the only place
that reads the clock, so backfills and tests choose theirs.

- :func:`apply_events`: one transaction per batch; idempotent by ``event_id``;
  every touched customer is re-evaluated from their whole ledger history and
  their tier state, audit rows and outbox rows are written in that same
  transaction. The first batch into an empty store records the policy in use
  as version 1.
- :func:`sweep`: re-evaluates customers whose ``next_due_at`` has come (a
  pending order matures, an order leaves the window, a grace period ends, an
  override expires), in chunks of one transaction each, so upgrades at
  maturity happen without a new order.
- :func:`set_override` / :func:`clear_override`: manual tiers, audited.
- :func:`apply_policy`: a new policy version; every customer reclassified by
  replaying their history under it on the batch path (``tier_ml.batch``);
  optionally grandfathering current members until a date (``grandfather``).
- :func:`preview_policy`: who a new policy would move (old x new tier counts,
  movers with their revenue, the revenue share affected); writes nothing.
- :func:`export_tiers`: the ``classify`` columns from the stored state. With
  ``now_us`` the customers due by then are re-evaluated *in memory* first
  (nothing is written), so the export is the tiers at ``now_us`` even if no
  sweep has run since; ``now_us`` may not be earlier than the store's clock.
- :func:`export_audit`: the audit log for compliance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Engine

from tier_ml.events import EVENT_FIELDS, OrderEvent
from tier_ml.money import micros_to_instant
from tier_ml.policy import Policy, load_policy
from tier_ml.rules import OUTPUT_COLUMNS
from tier_ml.store import grandfather
from tier_ml.store.db import create_store_engine, upgrade_to_head
from tier_ml.store.evaluation import (
    SYSTEM_ACTOR,
    Evaluation,
    Floor,
    Notice,
    Override,
    TierState,
    Transition,
    evaluate,
    notice_for,
    with_override,
)
from tier_ml.store.intake import EventResult, RowChecker, Status, admit, canonical_raw
from tier_ml.store.repository import STATE_FIELDS, ActivePolicy, Repository
from tier_ml.store.storable import refusal, storable
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction

SWEEP_CHUNK = 1_000
NO_TIER = "(none)"
TEXT_STATE_FIELDS = frozenset({"customer_id", "tier", "rules_tier", "eligible_tier", "region"})


class StoreError(ValueError):
    """A request the store refuses, with a message a person can act on."""


class StoreInputError(StoreError):
    """A value of one named input the store refuses (the API answers 422 on ``field``)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def open_store(url: str) -> Engine:
    """An engine for the store at ``url``, its schema migrated to the latest revision."""
    engine = create_store_engine(url)
    upgrade_to_head(engine)
    return engine


# --- results ---------------------------------------------------------------------------------


@dataclass
class ApplyResult:
    """What one batch did: a result per event, customers re-evaluated, audit rows written."""

    results: list[EventResult]
    customers: int
    transitions: int
    policy_version: int

    @property
    def counts(self) -> dict[str, int]:
        counts = {str(status): 0 for status in Status}
        for result in self.results:
            counts[str(result.status)] += 1
        return counts

    @property
    def rejects_by_reason(self) -> dict[str, int]:
        by_reason: dict[str, int] = {}
        for result in self.results:
            if result.reason is not None:
                by_reason[result.reason] = by_reason.get(result.reason, 0) + 1
        return dict(sorted(by_reason.items()))


@dataclass
class SweepResult:
    customers: int = 0
    transitions: int = 0


@dataclass
class PolicyApplyResult:
    """A policy re-apply: the transitions matrix (old tier x new tier counts) and what was written."""

    matrix: pd.DataFrame
    customers: int
    changed: int  # customers whose effective tier changes
    version: int | None = None
    states_written: int = 0
    dry_run: bool = True
    transitions: list[Transition] = field(default_factory=list)
    preview: PolicyPreview | None = None


@dataclass
class PolicyPreview:
    """Who a new policy moves, before (or as) it is applied.

    ``matrix``: old tier x new tier counts under the new policy alone (overrides
    kept); ``matrix_now``: the same right after applying, grandfathering
    included (equal to ``matrix`` without it). ``movers``: every customer whose
    tier the new policy changes (``grandfather.MOVER_COLUMNS`` plus
    ``revenue_us``), largest revenue first; ``sample``: the first of them.
    Revenue is what the programme counts for a customer today (qualifying
    plus pending spend under the current policy).
    """

    matrix: pd.DataFrame
    matrix_now: pd.DataFrame
    customers: int
    movers: pd.DataFrame
    sample: pd.DataFrame
    revenue_us: int
    movers_revenue_us: int
    upgrade_revenue_us: int
    downgrade_revenue_us: int
    grandfather_until_us: int | None = None
    grandfathered: int = 0  # current members covered by a floor
    held: int = 0  # customers the floor keeps above the new rules right away
    leaving: int = 0  # members with no order the new policy can read (none of its currencies)

    @property
    def revenue_share(self) -> float:
        """Share of the programme's revenue that belongs to customers who move."""
        return self.movers_revenue_us / self.revenue_us if self.revenue_us else 0.0

    @property
    def movers_by_direction(self) -> dict[str, int]:
        counts = self.movers["direction"].value_counts()
        return {name: int(counts.get(name, 0)) for name in ("upgrade", "downgrade")}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: matrices as nested counts, the sample as records, money in the base
        currency."""

        def counts(matrix: pd.DataFrame) -> dict[str, dict[str, int]]:
            return {
                str(old): {str(new): int(v) for new, v in row.items()}
                for old, row in matrix.iterrows()
            }

        sample = self.sample[list(grandfather.MOVER_COLUMNS)]
        return {
            "customers": self.customers,
            "movers": len(self.movers),
            "movers_by_direction": self.movers_by_direction,
            "matrix": counts(self.matrix),
            "matrix_now": counts(self.matrix_now),
            "revenue": _money_value(self.revenue_us),
            "movers_revenue": _money_value(self.movers_revenue_us),
            "revenue_share": self.revenue_share,
            "upgrade_revenue_share": self.upgrade_revenue_us / self.revenue_us
            if self.revenue_us
            else 0.0,
            "downgrade_revenue_share": self.downgrade_revenue_us / self.revenue_us
            if self.revenue_us
            else 0.0,
            "grandfather_until": None
            if self.grandfather_until_us is None
            else iso_instant(self.grandfather_until_us),
            "grandfathered": self.grandfathered,
            "held": self.held,
            "leaving": self.leaving,
            "sample": _nulls_as_none(sample).to_dict("records"),
        }


def _money_value(micros: int) -> float:
    return ((int(micros) + 5_000) // 10_000) / 100


# --- the active policy -----------------------------------------------------------------------


def _active_policy(repo: Repository, wanted: Policy | None, now_us: int) -> ActivePolicy:
    """The stored active policy; an empty store records ``wanted`` (or the default) as version 1."""
    active = repo.active_policy()
    if active is None:
        policy = wanted if wanted is not None else load_policy(None)
        return repo.add_policy_version(policy, SYSTEM_ACTOR, now_us, None)
    if wanted is not None and wanted.fingerprint != active.policy.fingerprint:
        raise StoreError(
            f"the store uses policy version {active.version} (fingerprint {active.policy.fingerprint}); "
            f"the policy given has fingerprint {wanted.fingerprint}: change it with `tier-ml policy apply`"
        )
    return active


def order_owners(engine: Engine, order_ids: Iterable[str]) -> dict[str, str]:
    """The customer of each order the ledger knows (for adapters whose refunds name no customer)."""
    ids = list(order_ids)
    placed = run_in_transaction(engine, lambda uow: uow.repo.placed_orders(ids), read_only=True)
    return {order_id: order.customer_id for order_id, order in placed.items()}


def active_policy(engine: Engine) -> ActivePolicy | None:
    return run_in_transaction(engine, lambda uow: uow.repo.active_policy(), read_only=True)


def policy_versions(engine: Engine) -> tuple[list[dict[str, Any]], ActivePolicy | None]:
    """Every stored policy version (oldest first) and the active one."""

    def work(uow: UnitOfWork) -> tuple[list[dict[str, Any]], ActivePolicy | None]:
        return uow.repo.policy_versions(), uow.repo.active_policy()

    return run_in_transaction(engine, work, read_only=True)


# --- ingest ----------------------------------------------------------------------------------


def apply_events(
    engine: Engine,
    rows: Sequence[Mapping[str, Any]],
    now_us: int,
    policy: Policy | None = None,
) -> ApplyResult:
    """Apply one batch of raw canonical events at ``now_us`` in one transaction.

    ``policy`` is only needed for an empty store (it becomes version 1; default:
    the packaged policy); when given for a store that already has a policy it
    must be the active one.
    """
    raws = [canonical_raw(row) for row in rows]

    def work(uow: UnitOfWork) -> ApplyResult:
        repo = uow.repo
        active = _active_policy(repo, policy, now_us)
        checked = RowChecker(active.policy).check_all(raws)
        good = [event for event in checked if isinstance(event, OrderEvent)]
        customers = sorted({event.customer_id for event in good})
        repo.ensure_customers(customers, now_us)
        repo.lock_customers(customers)
        admission = admit(
            raws,
            active.policy,
            repo.ledger_events(e.event_id for e in good),
            repo.placed_orders(e.order_id for e in good),
            checked=checked,
            claims=repo.rejected_claims(e.event_id for e in good),
        )
        repo.add_events(admission.accepted, now_us)
        repo.add_rejects(_rejects(admission.results, raws), now_us)
        touched = sorted({event.customer_id for event, _ in admission.accepted})
        evaluations = _reevaluate(repo, active, touched, now_us)
        return ApplyResult(
            admission.results,
            len(evaluations),
            sum(len(e.transitions) for e in evaluations),
            active.version,
        )

    return run_in_transaction(engine, work)


def _rejects(
    results: Iterable[EventResult], raws: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    # the raw row is kept as JSON (which escapes any character); an event_id the store cannot
    # keep (rejected as unsupported_character) is left out of its column
    return [
        {
            "event_id": r.event_id if storable(r.event_id) else None,
            "reason": r.reason,
            "detail": r.detail,
            "raw": raws[r.position],
        }
        for r in results
        if r.status == Status.REJECTED
    ]


def _evaluate_customers(
    repo: Repository, active: ActivePolicy, customer_ids: Sequence[str], now_us: int
) -> tuple[list[Evaluation], dict[str, int], dict[str, Override]]:
    """Evaluate customers (nothing written): evaluations, ledger sizes, open overrides."""
    events, sizes = repo.customer_events(customer_ids, active.policy)
    states = repo.tier_states(customer_ids)
    overrides = repo.open_overrides(customer_ids)
    floors = grandfather.open_floors(repo, customer_ids) if repo.has_floors() else {}
    checkpoints = repo.replay_checkpoints(customer_ids)
    evaluations = []
    for customer_id in customer_ids:
        evaluations.append(
            evaluate(
                active.policy,
                customer_id,
                events[customer_id],
                states.get(customer_id),
                overrides.get(customer_id),
                now_us,
                active.created_at_us,
                floors.get(customer_id),
                resume=checkpoints.get(customer_id),
            )
        )
    repo.keep_checkpoints(e.checkpoint for e in evaluations if e.checkpoint is not None)
    return evaluations, sizes, overrides


def _reevaluate(
    repo: Repository, active: ActivePolicy, customer_ids: Sequence[str], now_us: int
) -> list[Evaluation]:
    """Evaluate customers and write their states, audit rows and outbox rows."""
    evaluations, sizes, _ = _evaluate_customers(repo, active, customer_ids, now_us)
    _record(repo, active, evaluations, sizes, now_us)
    return evaluations


def _record(
    repo: Repository,
    active: ActivePolicy,
    evaluations: Sequence[Evaluation],
    ledger_sizes: Mapping[str, int],
    now_us: int,
    salt: str = "",
) -> None:
    repo.save_states(e.state for e in evaluations)
    transitions = [t for e in evaluations for t in e.transitions]
    repo.add_audit(transitions, active.version, now_us)
    messages = []
    for evaluation in evaluations:
        notice = notice_for(
            active.policy, evaluation.previous_tier, evaluation.state, evaluation.transitions
        )
        if notice is not None:
            size = ledger_sizes.get(notice.customer_id, 0)
            messages.append(_outbox_row(notice, active.version, now_us, size, salt))
    repo.add_outbox(messages)


def _outbox_row(
    notice: Notice, version: int, now_us: int, ledger_size: int, salt: str
) -> dict[str, Any]:
    key = notice.idempotency_key(now_us, ledger_size, salt)
    payload = {
        "kind": notice.kind,
        "customer_id": notice.customer_id,
        "old_tier": notice.old_tier,
        "new_tier": notice.new_tier,
        "at": iso_instant(notice.at_us),
        "policy_version": version,
        "idempotency_key": key,
    }
    return {
        "idempotency_key": key,
        "kind": notice.kind,
        "customer_id": notice.customer_id,
        "payload": json.dumps(payload, sort_keys=True),
        "created_at_us": now_us,
        "delivered_at_us": None,
    }


# --- sweep -----------------------------------------------------------------------------------


def sweep(engine: Engine, now_us: int, chunk: int = SWEEP_CHUNK) -> SweepResult:
    """Re-evaluate every customer whose next due time is at or before ``now_us``."""
    total = SweepResult()
    while True:

        def work(uow: UnitOfWork) -> tuple[int, int]:
            repo = uow.repo
            active = repo.active_policy()
            if active is None:
                return 0, 0
            due = repo.due_customers(now_us, chunk)
            repo.lock_customers(due)
            due = repo.due_customers_among(due, now_us)  # a concurrent writer may have done them
            evaluations = _reevaluate(repo, active, due, now_us)
            return len(due), sum(len(e.transitions) for e in evaluations)

        customers, transitions = run_in_transaction(engine, work)
        total.customers += customers
        total.transitions += transitions
        if customers < chunk:
            return total


# --- overrides -------------------------------------------------------------------------------


def set_override(
    engine: Engine,
    customer_id: str,
    tier: str,
    actor: str,
    reason: str,
    now_us: int,
    until_us: int | None = None,
) -> TierState:
    """Give a customer ``tier`` until ``until_us`` (or until cleared), whatever the rules say.

    The customer is first brought up to ``now_us`` by the rules (their own audit
    rows), then the override is audited (reason ``override``, the actor and
    their reason). A new override replaces an open one. ``tier`` may be in any
    letter case: the policy's spelling is stored. ``now_us`` may not be earlier
    than the customer's last evaluation (see :func:`_evaluate_known_customer`).
    """
    _require_text(actor=actor, reason=reason)
    _require_storable(customer_id=customer_id, tier=tier, actor=actor, reason=reason)

    def work(uow: UnitOfWork) -> TierState:
        repo = uow.repo
        active = _existing_policy(repo)
        name = policy_tier(active.policy, tier)
        evaluation, size = _evaluate_known_customer(
            repo, active, customer_id, now_us, "an override takes effect from now on"
        )
        at_us = evaluation.state.evaluated_at_us
        if until_us is not None and until_us <= at_us:
            raise StoreInputError(
                f"until {iso_instant(until_us)} is not after now ({iso_instant(at_us)})",
                "until",
            )
        repo.close_overrides(customer_id, at_us, actor)
        override = repo.add_override(customer_id, name, actor, reason, at_us, until_us)
        state = with_override(evaluation.rules_state, override)
        change = Transition(
            customer_id,
            at_us,
            evaluation.state.tier,
            name,
            "override",
            "override_set",
            actor,
            reason,
        )
        final = Evaluation(
            state,
            evaluation.rules_state,
            [*evaluation.transitions, change],
            evaluation.previous_tier,
        )
        _record(repo, active, [final], {customer_id: size}, now_us, salt=f"override-{override.id}")
        return state

    return run_in_transaction(engine, work)


def clear_override(
    engine: Engine, customer_id: str, actor: str, reason: str, now_us: int
) -> TierState:
    """End a customer's active override now: the rules tier applies again (audited).
    ``now_us`` may not be earlier than the customer's last evaluation (as for
    :func:`set_override`)."""
    _require_text(actor=actor, reason=reason)
    _require_storable(customer_id=customer_id, actor=actor, reason=reason)

    def work(uow: UnitOfWork) -> TierState:
        repo = uow.repo
        active = _existing_policy(repo)
        evaluation, size = _evaluate_known_customer(
            repo, active, customer_id, now_us, "clearing an override takes effect from now on"
        )
        at_us = evaluation.state.evaluated_at_us
        current = repo.open_overrides([customer_id]).get(customer_id)
        if current is None or not current.active_after(at_us):
            raise StoreError(f"customer {customer_id} has no active override")
        repo.close_overrides(customer_id, at_us, actor)
        state = evaluation.rules_state
        change = Transition(
            customer_id,
            at_us,
            evaluation.state.tier,
            state.tier,
            "override",
            "override_cleared",
            actor,
            reason,
        )
        final = Evaluation(
            state, state, [*evaluation.transitions, change], evaluation.previous_tier
        )
        _record(repo, active, [final], {customer_id: size}, now_us, salt=f"clear-{current.id}")
        return state

    return run_in_transaction(engine, work)


OVERRIDE_COLUMNS = (
    "id",
    "customer_id",
    "tier",
    "status",
    "actor",
    "reason",
    "set_at",
    "until",
    "cleared_at",
    "cleared_by",
)


def list_overrides(engine: Engine, now_us: int) -> pd.DataFrame:
    """Every override with its status at ``now_us``: ``active``, ``expired`` or ``cleared``
    (a replaced override is cleared by whoever set the new one)."""
    frame = run_in_transaction(engine, lambda uow: uow.repo.overrides_frame(), read_only=True)
    cleared = frame["cleared_at_us"].notna()
    until = pd.to_numeric(frame["until_us"])  # all NULL comes back as objects (epoch µs fit a float)
    expired = ~cleared & until.notna() & (until <= now_us)
    out = frame[["id", "customer_id", "tier", "actor", "reason", "cleared_by"]].copy()
    out["status"] = np.select([cleared, expired], ["cleared", "expired"], default="active")
    out["set_at"] = iso_instants(frame["set_at_us"])
    out["until"] = iso_instants(frame["until_us"])
    out["cleared_at"] = iso_instants(frame["cleared_at_us"])
    return _nulls_as_none(out[list(OVERRIDE_COLUMNS)])


def _require_text(**values: str) -> None:
    for name, value in values.items():
        if not value or not value.strip():
            raise StoreInputError(
                f"{name} is required (who did it and why, for the audit log)", name
            )


def _require_storable(**values: str) -> None:
    """Refuse text the store cannot keep (NUL, lone surrogates), naming the input, before
    the database is asked: PostgreSQL raised, which reached a person as a 500."""
    for name, value in values.items():
        message = refusal(name, value)
        if message is not None:
            raise StoreInputError(message, name)


def policy_tier(policy: Policy, tier: str) -> str:
    """The policy's spelling of a tier named in any letter case (``gold`` is ``Gold``).

    An exact name wins (a policy may hold names that differ only in case); a name that
    matches none, or several only by case, is refused with the policy's tiers.
    """
    names = policy.tier_names
    if tier in names:
        return tier
    folded = [name for name in names if name.casefold() == tier.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    if folded:
        message = f"tier {tier!r} matches {', '.join(folded)} by letter case: name one exactly"
    else:
        message = f"unknown tier {tier!r}; the policy's tiers are {', '.join(names)}"
    raise StoreInputError(message, "tier")


def _existing_policy(repo: Repository) -> ActivePolicy:
    active = repo.active_policy()
    if active is None:
        raise StoreError("the store is empty: ingest events first")
    return active


def _evaluate_known_customer(
    repo: Repository, active: ActivePolicy, customer_id: str, now_us: int, what: str
) -> tuple[Evaluation, int]:
    """A customer brought up to ``now_us`` (locked first) for a manual change, and the size
    of their ledger.

    ``now_us`` may not be earlier than the store's clock for this customer (when it last
    evaluated them, or applied the active policy): the change would be dated before tier
    changes the audit log already records for them. The evaluation would silently move it
    to that instant instead, a date the person did not ask for. The clock of this customer,
    not of the whole store: the API reads the wall clock before its transaction, and an
    event batch of another customer committed in between must not refuse the override.
    """
    repo.lock_customers([customer_id])
    state = repo.tier_states([customer_id]).get(customer_id)
    if state is not None:
        clock = max(state.evaluated_at_us, active.created_at_us)
        if now_us < clock:
            raise StoreError(
                f"now {iso_instant(now_us)} is before the store's clock for customer "
                f"{customer_id} ({iso_instant(clock)}, when it last evaluated them); {what}"
            )
    evaluations, sizes, _ = _evaluate_customers(repo, active, [customer_id], now_us)
    evaluation = evaluations[0]
    if evaluation.state.tier is None:
        raise StoreError(f"customer {customer_id!r} has no order in the store")
    return evaluation, sizes[customer_id]


# --- exports ---------------------------------------------------------------------------------


def iso_instant(micros: int) -> str:
    """An instant as ISO 8601 UTC with ``Z`` (fraction only when there is one), as ``classify`` writes it."""
    instant = micros_to_instant(int(micros))
    text = instant.strftime("%Y-%m-%dT%H:%M:%S.%f").removesuffix(".000000")
    return text + "Z"


def iso_instants(micros: pd.Series) -> pd.Series:
    """``iso_instant`` over a column (nulls stay null)."""
    values = pd.to_numeric(micros, errors="coerce")
    present = values.notna()
    out = pd.Series([None] * len(values), index=values.index, dtype=object)
    if present.any():
        us = values[present].astype("int64")
        stamps = pd.to_datetime(us, unit="us", utc=True)
        text = stamps.dt.strftime("%Y-%m-%dT%H:%M:%S")
        fraction = us % 1_000_000
        text = text.where(fraction == 0, text + "." + fraction.astype(str).str.zfill(6))
        out[present] = (text + "Z").to_numpy()
    return out


def _money(micros: pd.Series) -> pd.Series:
    """Micro-units to money rounded to cents, half up (``tier_ml.money.micros_to_money``)."""
    return ((micros.astype("int64") + 5_000) // 10_000) / 100


def tiers_frame(states: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """Stored states (customers with a tier) as the ``classify`` output columns."""
    states = states[states["tier"].notna()].sort_values("customer_id").reset_index(drop=True)
    names = policy.tier_names
    rank = states["tier"].map({name: i for i, name in enumerate(names)})
    top = len(names) - 1
    next_tier = [names[int(r) + 1] if r == r and r < top else None for r in rank]
    to_next = [
        None
        if not (r == r and r < top)
        else max(0, policy.thresholds_us(region)[int(r) + 1] - int(spend))
        for r, region, spend in zip(rank, states["region"], states["qualifying_us"], strict=True)
    ]
    out = pd.DataFrame(
        {
            "customer_id": states["customer_id"],
            "tier": states["tier"],
            "qualifying_spend": _money(states["qualifying_us"]),
            "pending_spend": _money(states["pending_us"]),
            "eligible_tier": states["eligible_tier"],
            "tier_since": iso_instants(states["tier_since_us"]),
            "qualifying_orders": states["qualifying_orders"].astype("int64"),
            "next_tier": next_tier,
            "spend_to_next_tier": [
                None if v is None else ((v + 5_000) // 10_000) / 100 for v in to_next
            ],
            "region": states["region"],
            "last_order_at": iso_instants(states["last_order_at_us"]),
            "grace_ends_at": iso_instants(states["grace_ends_at_us"]),
            "next_change_at": iso_instants(states["next_change_at_us"]),
            "tier_changes": states["tier_changes"].astype("int64"),
        }
    )
    return out[list(OUTPUT_COLUMNS)]


def _current_states(repo: Repository, active: ActivePolicy, now_us: int | None) -> pd.DataFrame:
    """Stored states, with customers due by ``now_us`` re-evaluated in memory (not written)."""
    table = repo.states_table()
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    states = typed_states(frame.sort_values("customer_id", ignore_index=True))
    if now_us is None or states.empty:
        return states
    clock = repo.clock()
    if clock is not None and now_us < max(clock, active.created_at_us):
        raise StoreError(
            f"the store has evaluated customers up to {iso_instant(max(clock, active.created_at_us))}; "
            f"it cannot report the earlier instant {iso_instant(now_us)} (use `tier-ml classify` on the ledger)"
        )
    due = states.loc[
        states["next_due_at_us"].notna() & (states["next_due_at_us"] <= now_us), "customer_id"
    ]
    if due.empty:
        return states
    evaluations, _, _ = _evaluate_customers(repo, active, list(due), now_us)
    fresh = typed_states(pd.DataFrame([e.state.as_row() for e in evaluations]))
    kept = states[~states["customer_id"].isin(set(due))]
    merged = pd.concat([kept, fresh], ignore_index=True)
    return merged.sort_values("customer_id", ignore_index=True)


def export_tiers(engine: Engine, now_us: int | None = None) -> pd.DataFrame:
    """Every customer's tier as the ``classify`` columns (see the module docstring for ``now_us``)."""

    def work(uow: UnitOfWork) -> pd.DataFrame:
        active = uow.repo.active_policy()
        if active is None:
            return pd.DataFrame(columns=list(OUTPUT_COLUMNS))
        return tiers_frame(_current_states(uow.repo, active, now_us), active.policy)

    return run_in_transaction(engine, work, read_only=True)


AUDIT_COLUMNS = (
    "id",
    "customer_id",
    "at",
    "recorded_at",
    "old_tier",
    "new_tier",
    "reason",
    "cause",
    "note",
    "policy_version",
    "actor",
)


def export_audit(engine: Engine, since_us: int | None = None) -> pd.DataFrame:
    """Audit rows recorded at or after ``since_us``, in the order they were written.

    Filtering on the recording time (not the time a change took effect) means
    consecutive exports never miss a row, even a correction dated in the past.
    """
    frame = run_in_transaction(engine, lambda uow: uow.repo.audit_frame(since_us), read_only=True)
    frame["at"] = iso_instants(frame["at_us"])
    frame["recorded_at"] = iso_instants(frame["recorded_at_us"])
    return _nulls_as_none(frame[list(AUDIT_COLUMNS)].reset_index(drop=True))


REJECT_EXPORT_COLUMNS = ("received_at", "reason", "detail", *EVENT_FIELDS)


def export_rejects(
    engine: Engine, since_us: int | None = None, reasons: Sequence[str] = ()
) -> pd.DataFrame:
    """Rejected events received at or after ``since_us`` (with one of ``reasons``, when given),
    in the order they arrived: why, then the nine event fields as delivered, so that a file
    of them can be ingested again once the cause is fixed (a currency added to the policy)."""
    frame = run_in_transaction(
        engine, lambda uow: uow.repo.rejects_frame(since_us, reasons), read_only=True
    )
    fields = pd.DataFrame(
        [json.loads(raw) for raw in frame["raw"]], columns=list(EVENT_FIELDS), dtype=object
    )
    frame = pd.concat([frame.drop(columns=["event_id"]).reset_index(drop=True), fields], axis=1)
    frame["received_at"] = iso_instants(frame["received_at_us"])
    return _nulls_as_none(frame[list(REJECT_EXPORT_COLUMNS)])


def _nulls_as_none(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing values as None (text columns stay text, integer columns stay integers)."""
    return frame.astype(object).where(frame.notna(), None)


def export_outbox(engine: Engine) -> pd.DataFrame:
    return run_in_transaction(engine, lambda uow: uow.repo.outbox_frame(), read_only=True)


def export_ledger(engine: Engine) -> pd.DataFrame:
    """The ledger as canonical raw rows, in arrival order."""
    frame = run_in_transaction(engine, lambda uow: uow.repo.ledger_frame(), read_only=True)
    return frame[list(EVENT_FIELDS)]


# --- policy versions -------------------------------------------------------------------------


def apply_policy(
    engine: Engine,
    policy: Policy,
    actor: str,
    now_us: int,
    *,
    dry_run: bool = False,
    source_text: str | None = None,
    grandfather_until_us: int | None = None,
    note: str | None = None,
    sample: int = 20,
    batch_engine: str = "duckdb",
) -> PolicyApplyResult:
    """Reclassify every customer under ``policy`` at ``now_us`` (``dry_run``: only the matrix
    and the preview).

    The ledger is replayed on the batch path (``tier_ml.batch.classify_frame``), or on
    Spark with ``batch_engine="spark"`` (same plan, same writes; without ``dry_run`` the
    write lock is held while Spark runs).
    Without ``dry_run``, in one transaction that holds every other writer off:
    customers due under the old policy are first brought up to ``now_us`` (their
    own audit rows), the new version is stored, and every customer whose state
    differs is rewritten, with a ``reclassification`` audit row (cause
    ``policy``, the actor) and an outbox message when the effective tier changes.
    Active overrides keep their tier; their tier must exist in the new policy.

    ``grandfather_until_us``: current members keep at least their tier until
    then (a floor per member above the default tier, ``grandfather``); the
    choice and ``note`` are stored with the version, and every member the floor
    keeps above the new rules gets a ``grandfathering`` audit row (cause
    ``policy``, the actor, a note saying until when and what the new rules give).
    """
    _require_text(actor=actor)
    _check_batch_engine(batch_engine)
    if dry_run:

        def preview(uow: UnitOfWork) -> PolicyApplyResult:
            plan = _policy_plan(uow.repo, policy, now_us, grandfather_until_us, None, batch_engine)
            result = plan.result()
            result.preview = plan.preview(sample)
            return result

        return run_in_transaction(engine, preview, read_only=True)

    def work(uow: UnitOfWork) -> PolicyApplyResult:
        repo = uow.repo
        old = _existing_policy(repo)
        _check_clock(repo, old, now_us)
        due = repo.due_customers(now_us, limit=2**62)
        _reevaluate(repo, old, due, now_us)
        plan = _policy_plan(
            repo, policy, now_us, grandfather_until_us, old.version + 1, batch_engine
        )
        new = repo.add_policy_version(policy, actor, now_us, source_text)
        grandfather.record_choice(repo, new.version, grandfather_until_us, note)
        grandfather.add_floors(repo, plan.new_floors, actor, note)
        changed = plan.changed_states()
        # The states are written by a worker thread while this one builds the audit and outbox
        # rows and the preview (no database work): on PostgreSQL the upsert is mostly the
        # server's time. The connection is the worker's until the write is done.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tier-ml-save") as pool:
            saving = pool.submit(repo.save_state_tuples, _state_tuples(changed))
            transitions = plan.transitions(actor, note)
            held = grandfather.held_transitions(plan.merged, plan.new_floors, policy, actor, note)
            messages = [
                _outbox_row(n, new.version, now_us, 0, f"policy-{new.version}")
                for n in plan.notices(transitions)
            ]
            result = plan.result()
            result.preview = plan.preview(sample)
            saving.result()
        repo.add_audit([*transitions, *held], new.version, now_us)
        repo.add_outbox(messages)
        result.version, result.dry_run, result.states_written = new.version, False, len(changed)
        result.transitions = transitions
        return result

    return run_in_transaction(engine, work, exclusive=True)


def _check_clock(repo: Repository, active: ActivePolicy, now_us: int) -> None:
    latest = max(repo.clock() or active.created_at_us, active.created_at_us)
    if now_us < latest:
        raise StoreError(
            f"now {iso_instant(now_us)} is before the store's clock ({iso_instant(latest)}); "
            "a policy applies from now on"
        )


@dataclass
class _PolicyPlan:
    """The state every customer gets under a new policy, beside their current one."""

    policy: Policy
    now_us: int
    merged: pd.DataFrame  # current state columns suffixed _old, proposed ones unsuffixed
    new_floors: list[Floor] = field(default_factory=list)
    floors: dict[str, Floor] = field(default_factory=dict)  # in force at now_us
    grandfather_until_us: int | None = None

    def preview(self, sample: int = 20) -> PolicyPreview:
        """Who moves under the new policy alone, with revenue; the grandfathering counts."""
        old = self.merged["tier_old"].fillna(NO_TIER)
        seen = (old != NO_TIER) | self.merged["tier"].notna()
        plain = self.merged["plain_tier"].fillna(NO_TIER)
        matrix = pd.crosstab(old[seen].rename("old tier"), plain[seen].rename("new tier"))
        movers = grandfather.movers_frame(self.merged, self.policy, self.floors)
        members = self.merged["tier_old"].notna()
        revenue = self.merged.loc[members, "qualifying_us_old"].fillna(0).astype("int64").sum()
        revenue += self.merged.loc[members, "pending_us_old"].fillna(0).astype("int64").sum()
        by_direction = movers.groupby("direction")["revenue_us"].sum()
        held = grandfather.held_transitions(self.merged, self.new_floors, self.policy, "", None)
        return PolicyPreview(
            matrix=matrix,
            matrix_now=self.result().matrix,
            customers=int(seen.sum()),
            movers=movers,
            sample=movers.head(sample),
            revenue_us=int(revenue),
            movers_revenue_us=int(movers["revenue_us"].sum()),
            upgrade_revenue_us=int(by_direction.get("upgrade", 0)),
            downgrade_revenue_us=int(by_direction.get("downgrade", 0)),
            grandfather_until_us=self.grandfather_until_us,
            grandfathered=len(self.new_floors),
            held=len(held),
            leaving=int(((old != NO_TIER) & (plain == NO_TIER)).sum()),
        )

    def result(self) -> PolicyApplyResult:
        old = self.merged["tier_old"].fillna(NO_TIER)
        new = self.merged["tier"].fillna(NO_TIER)
        seen = (old != NO_TIER) | (new != NO_TIER)
        matrix = pd.crosstab(old[seen].rename("old tier"), new[seen].rename("new tier"))
        return PolicyApplyResult(
            matrix=matrix, customers=int(seen.sum()), changed=int((old != new)[seen].sum())
        )

    def changed_states(self) -> pd.DataFrame:
        """The tier-state rows that differ from the stored ones (unchanged rows stay as they
        are: the policy version's ``created_at`` counts as their evaluation instant)."""
        differs = np.zeros(len(self.merged), dtype=bool)
        for name in STATE_FIELDS:
            if name in {"customer_id", "evaluated_at_us"}:
                continue
            old, new = self.merged[f"{name}_old"], self.merged[name]
            same = (old == new).fillna(False).to_numpy(dtype=bool) | (
                old.isna().to_numpy() & new.isna().to_numpy()
            )
            differs |= ~same
        return self.merged.loc[differs, list(STATE_FIELDS)]

    def transitions(self, actor: str, note: str | None = None) -> list[Transition]:
        old = self.merged["tier_old"].fillna(NO_TIER)
        new = self.merged["tier"].fillna(NO_TIER)
        moved = self.merged[old != new]
        return [
            Transition(
                c, self.now_us, _none(o), _none(n), "reclassification", "policy", actor, note
            )
            for c, o, n in zip(moved["customer_id"], moved["tier_old"], moved["tier"], strict=True)
        ]

    def notices(self, transitions: Sequence[Transition]) -> list[Notice]:
        notices = []
        for t in transitions:
            if t.new_tier is None:
                continue
            if t.old_tier is None:
                notices.append(Notice("welcome", t.customer_id, None, t.new_tier, t.at_us))
                continue
            up = self.policy.tier_names.index(t.new_tier) > _rank(self.policy, t.old_tier)
            kind = "tier_upgraded" if up else "tier_downgraded"
            notices.append(Notice(kind, t.customer_id, t.old_tier, t.new_tier, t.at_us))
        return notices


def _rank(policy: Policy, tier: str) -> int:
    return policy.tier_names.index(tier) if tier in policy.tier_names else -1


def _none(value: Any) -> Any:
    return None if value is None or value is pd.NA or value != value else value


def typed_states(frame: pd.DataFrame) -> pd.DataFrame:
    """Tier-state rows with nullable integer and text columns (comparable, NULL-safe)."""
    frame = frame.reindex(columns=list(STATE_FIELDS))
    for name in STATE_FIELDS:
        if name in TEXT_STATE_FIELDS:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
        else:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("Int64")
    return frame


def _state_tuples(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Typed tier-state rows as tuples in ``STATE_FIELDS`` order, with Python values (None
    for missing ones): what the driver binds, built a column at a time."""
    columns = [frame[name].to_numpy(dtype=object, na_value=None).tolist() for name in STATE_FIELDS]
    return list(zip(*columns, strict=True))


def state_records(frame: pd.DataFrame) -> list[TierState]:
    """Typed tier-state rows as :class:`TierState` values."""
    states = []
    for record in frame.to_dict("records"):
        values = {
            name: None
            if _none(value) is None
            else (value if name in TEXT_STATE_FIELDS else int(value))
            for name, value in record.items()
        }
        states.append(TierState(**values))
    return states


def _policy_plan(
    repo: Repository,
    policy: Policy,
    now_us: int,
    grandfather_until_us: int | None = None,
    version: int | None = None,
    batch_engine: str = "duckdb",
) -> _PolicyPlan:
    """Every customer's state under ``policy`` at ``now_us`` beside the current one: the batch
    path's rules states (on ``batch_engine``), then floors in force (earlier grandfathering,
    and new floors when ``grandfather_until_us`` is given), then active overrides on top.

    A worker thread reads the ledger (ADBC, on a connection of its own, as this
    transaction sees it) and DuckDB classifies it, both outside the GIL, while this
    thread reads the stored states, floors and overrides from the transaction."""
    active = _existing_policy(repo)
    _check_clock(repo, active, now_us)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tier-ml-classify") as pool:
        classified = (
            pool.submit(_read_and_classify, repo.detached_ledger_read(), policy, now_us)
            if batch_engine == "duckdb"
            else None
        )
        current = _current_states(repo, active, now_us)
        recent = repo.recent_events(now_us - policy.buffer_us)
        stored_floors = grandfather.all_floors(repo)
        overrides = repo.all_open_overrides()
        engine_states = classified.result() if classified is not None else None
    if engine_states is None:  # Spark, or ADBC could not read the store (not tried again)
        ledger = repo.ledger_table(adbc=classified is None)
        engine_states = _classify_ledger(policy, ledger, now_us, batch_engine)
    proposed = _states_from_engine(engine_states, policy, current["customer_id"], now_us)
    proposed["next_due_at_us"] = _next_due_column(proposed, recent, policy, now_us)
    floors = {c: f for c, f in stored_floors.items() if f.active_at(now_us)}
    new_floors: list[Floor] = []
    try:
        if grandfather_until_us is not None:
            number = version if version is not None else active.version + 1
            new_floors = grandfather.new_floors(
                current, policy, now_us, grandfather_until_us, number
            )
            floors.update((f.customer_id, f) for f in new_floors)
        proposed = grandfather.apply_floors(proposed, floors, policy, now_us, current)
    except grandfather.GrandfatherError as exc:
        raise StoreError(str(exc)) from None
    proposed = _with_overrides(proposed, overrides, policy, now_us)
    merged = current.merge(proposed, on="customer_id", how="outer", suffixes=("_old", ""))
    live = {c for c, o in overrides.items() if o.active_after(now_us)}
    merged["plain_tier"] = merged["tier"].where(
        merged["customer_id"].isin(live), merged["rules_tier"]
    )
    return _PolicyPlan(policy, now_us, merged, new_floors, floors, grandfather_until_us)


def preview_policy(
    engine: Engine,
    policy: Policy,
    now_us: int,
    *,
    grandfather_until_us: int | None = None,
    sample: int = 20,
    batch_engine: str = "duckdb",
) -> PolicyPreview:
    """Who ``policy`` would move if applied at ``now_us`` (``PolicyPreview``); writes nothing.

    The same plan ``apply_policy`` writes, read in a read-only transaction (the
    API's ``POST /v1/policy?dry_run=true``); ``batch_engine`` as ``apply_policy``."""
    _check_batch_engine(batch_engine)

    def work(uow: UnitOfWork) -> PolicyPreview:
        plan = _policy_plan(uow.repo, policy, now_us, grandfather_until_us, None, batch_engine)
        return plan.preview(sample)

    return run_in_transaction(engine, work, read_only=True)


def _read_and_classify(
    read_ledger: Callable[[], pa.Table | None], policy: Policy, now_us: int
) -> pd.DataFrame | None:
    """``_classify_ledger`` on DuckDB of the ledger ``read_ledger`` gives (``None`` if none)."""
    ledger = read_ledger()
    return None if ledger is None else _classify_ledger(policy, ledger, now_us)


def _classify_ledger(
    policy: Policy, ledger: pa.Table, now_us: int, batch_engine: str = "duckdb"
) -> pd.DataFrame:
    """The batch path's own state of every customer of the ledger as of ``now_us``
    (``customer_state``: tier indexes, exact micro-units and instants; integers ``Int64``).

    The ledger (Arrow text columns, ``Repository.ledger_table``) goes through a
    temporary Parquet file: DuckDB reads it natively, so millions of rows need no
    per-value Python work. ``batch_engine="spark"`` classifies that file on Spark
    instead (the session of ``tier_ml.engines.spark``), with the same answer.
    """
    import tempfile

    import pyarrow.parquet as pq

    _check_batch_engine(batch_engine)
    with tempfile.TemporaryDirectory(prefix="tier-ml-ledger-") as folder:
        path = Path(folder) / "ledger.parquet"
        # read once, right away: plain pages are the quickest to write and to read back
        pq.write_table(
            ledger, path, compression="none", use_dictionary=False, write_statistics=False
        )
        if batch_engine == "spark":
            frame = _spark_states(policy, path, now_us)
        else:
            from tier_ml.batch import classify_states  # DuckDB: loaded only for a policy change

            table = classify_states(policy, path, now_us)
            frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    for name in frame.columns:
        if name not in {"customer_id", "region"}:
            frame[name] = pd.to_numeric(frame[name]).astype("Int64")
    return frame


def _spark_states(policy: Policy, path: Path, now_us: int) -> pd.DataFrame:
    """``customer_state`` of the ledger file on Spark (``tier_ml.engines.spark``)."""
    from tier_ml.engines import spark as engine  # pyspark: only when asked

    session = engine.spark_session()
    source: Path | pd.DataFrame = path
    if not session.sparkContext.master.startswith("local"):
        import pyarrow.parquet as pq  # a cluster cannot read the driver's temporary folder

        source = pq.read_table(path).to_pandas()
    raw = engine.read_source(session, source)
    checked = engine.check_rows(raw, policy, now_us)
    ledger = engine.build_ledger(checked)
    try:
        buckets = engine.bucket_count(session, raw)
        return engine.customer_stage(session, ledger, policy, now_us, "state", buckets).toPandas()
    finally:
        ledger.release()
        checked.unpersist()


def _check_batch_engine(batch_engine: str) -> None:
    from tier_ml.engines import check_engine

    try:
        check_engine(batch_engine)
    except ValueError as exc:
        raise StoreError(str(exc)) from None


def _states_from_engine(
    state: pd.DataFrame, policy: Policy, known: pd.Series, now_us: int
) -> pd.DataFrame:
    """The batch path's ``customer_state`` as tier-state rows (exact micro-units, as the
    streaming path stores them), plus an empty state for every known customer without a
    row (no order at or before ``now_us``)."""
    names = np.array(policy.tier_names, dtype=object)
    tier = names[state["tier"].to_numpy(dtype="int64")]
    rules = pd.DataFrame(
        {
            "customer_id": state["customer_id"].astype(object),
            "tier": tier,
            "rules_tier": tier,
            "eligible_tier": names[state["eligible"].to_numpy(dtype="int64")],
            "tier_since_us": state["tier_since_us"],
            "qualifying_us": state["qualifying_us"],
            "pending_us": state["pending_us"],
            "qualifying_orders": state["qualifying_orders"],
            "region": state["region"],
            "last_order_at_us": state["last_placed_us"],
            "grace_ends_at_us": state["grace_ends_at_us"],
            "next_change_at_us": state["next_change_at_us"],
            "tier_changes": state["tier_changes"],
        }
    )
    missing = sorted(set(known) - set(rules["customer_id"]))
    empty = pd.DataFrame(
        {
            "customer_id": missing,
            "qualifying_us": 0,
            "pending_us": 0,
            "qualifying_orders": 0,
            "tier_changes": 0,
        }
    )
    states = pd.concat([rules, empty], ignore_index=True) if missing else rules
    states["evaluated_at_us"] = now_us
    return typed_states(states)


def _next_due_column(
    states: pd.DataFrame, recent: pd.DataFrame, policy: Policy, now_us: int
) -> pd.Series:
    """``next_due_at_us`` as ``evaluation._next_due`` defines it, for every customer at once.

    ``recent``: the ledger events dated after ``now_us`` minus the buffer (``customer_id``,
    ``event_type``, ``at_us``); earlier events neither mature nor become visible later."""
    at = recent["at_us"].astype("int64")
    customer = recent["customer_id"]
    maturing = (
        (recent["event_type"] == "placed") & (at <= now_us) & (at + policy.buffer_us > now_us)
    )
    future = at > now_us
    soonest = (
        pd.concat(
            [
                (at[maturing] + policy.buffer_us).groupby(customer[maturing]).min(),
                at[future].groupby(customer[future]).min(),
            ]
        )
        .groupby(level=0)
        .min()
    )
    candidates = pd.DataFrame(
        {
            "event": states["customer_id"].map(soonest).astype("Int64"),
            "change": states["next_change_at_us"],
        }
    )
    return candidates.min(axis=1, skipna=True).astype("Int64")


def _with_overrides(
    states: pd.DataFrame, overrides: Mapping[str, Override], policy: Policy, now_us: int
) -> pd.DataFrame:
    """Apply the overrides still active at ``now_us`` on top of the rules states."""
    live = {c: o for c, o in overrides.items() if o.active_after(now_us)}
    unknown = sorted(c for c, o in live.items() if o.tier not in policy.tier_names)
    if unknown:
        raise StoreError(
            f"active overrides name tiers the new policy does not have (customers {unknown[:5]}); "
            "clear them first"
        )
    if not live:
        return states
    states = states.set_index("customer_id", drop=False)
    for customer_id, override in live.items():
        if customer_id not in states.index or states.at[customer_id, "tier"] is None:
            continue
        (rules_state,) = state_records(states.loc[[customer_id]])
        for name, value in with_override(rules_state, override).as_row().items():
            states.at[customer_id, name] = value
    return typed_states(states.reset_index(drop=True))
