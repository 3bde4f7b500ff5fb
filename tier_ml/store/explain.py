"""The tier ledger of one stored customer: ``customer_ledger(engine, customer_id, now_us)``.

The rules part is ``tier_ml.ledger.explain`` on the customer's ledger events
under the store's active policy (so it equals what the store computes); this
module adds what only the store knows, from its own tables:

- the tier in force: an active override, else a grandfathered tier (floor)
  when it is above the rules tier, else the rules tier (``ledger.hold`` says
  which and until when);
- transitions the rules do not make: overrides set, cleared or expired,
  reclassifications by a policy change or by late events, grandfathering, each
  from the audit log with its actor, note and policy version;
- rules transitions under earlier policy versions, from the audit log (the
  replay under the active policy only covers the time since it was applied);
- rules transitions kept from the effective tier by an override or a floor are
  listed with ``effective=False`` (a floor shows the effective old -> new).

Every effective transition listed up to the customer's last evaluation is an
audit row; later ones (before the next sweep) are marked in ``notes``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import Engine, Table, select

from tier_ml.ledger import Hold, LedgerError, LedgerTransition, TierLedger, explain, iso
from tier_ml.policy import Policy
from tier_ml.store.evaluation import Floor
from tier_ml.store.grandfather import open_floors
from tier_ml.store.models import AuditRow, OverrideRow
from tier_ml.store.repository import ActivePolicy, Repository
from tier_ml.store.service import StoreError
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction

AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]
OVERRIDES: Table = OverrideRow.__table__  # type: ignore[assignment]

#: Audit reasons written by the rules themselves (the replay lists them again).
RULES_REASONS = frozenset({"enrolment", "upgrade", "downgrade"})


def customer_ledger(engine: Engine, customer_id: str, now_us: int) -> TierLedger:
    """The explained tier ledger of ``customer_id`` at ``now_us`` (read only).

    Raises ``StoreError`` for an empty store, an unknown customer, a customer
    without an order by ``now_us``, or an instant before the active policy
    version was applied (use ``tier-ml explain --events`` for such history).
    """

    def work(uow: UnitOfWork) -> TierLedger:
        repo = uow.repo
        active = repo.active_policy()
        if active is None:
            raise StoreError("the store is empty: ingest events first")
        if active.version > 1 and now_us < active.created_at_us:
            raise StoreError(
                f"policy version {active.version} applies from {iso(active.created_at_us)}; "
                "explain an earlier instant from the events file (tier-ml explain --events)"
            )
        events, sizes = repo.customer_events([customer_id], active.policy)
        if not sizes.get(customer_id):
            raise StoreError(f"unknown customer {customer_id!r}")
        try:
            ledger = explain(active.policy, customer_id, events[customer_id], now_us)
        except LedgerError as exc:
            raise StoreError(str(exc)) from None
        return _with_store_history(repo, active, ledger, now_us)

    return run_in_transaction(engine, work, read_only=True)


def _with_store_history(
    repo: Repository, active: ActivePolicy, ledger: TierLedger, now_us: int
) -> TierLedger:
    customer_id = ledger.customer_id
    policy = active.policy
    overrides = _overrides(repo, customer_id)
    floor = open_floors(repo, [customer_id]).get(customer_id)
    audit = _audit(repo, customer_id)
    since = active.created_at_us if active.version > 1 else None

    rules = [
        _under_holds(policy, t, overrides, floor)
        for t in ledger.transitions
        if since is None or t.at_us > since
    ]
    recorded = [
        _from_audit(row)
        for row in audit
        if row["reason"] not in RULES_REASONS or (since is not None and row["at_us"] <= since)
    ]
    state = repo.tier_states([customer_id]).get(customer_id)
    if state is not None:
        rules = _unrecorded(rules, audit, state.evaluated_at_us)
    transitions = sorted([*recorded, *rules], key=lambda t: t.at_us)

    hold = _hold(policy, ledger, overrides, floor, now_us)
    notes = [f"policy version {active.version} applied {iso(active.created_at_us)}"]
    if state is not None and state.evaluated_at_us < now_us:
        notes.append(
            f"the store last evaluated this customer at {iso(state.evaluated_at_us)}: "
            "changes after it are recorded in the audit log by the next sweep"
        )
    return dataclasses.replace(
        ledger,
        effective_tier=ledger.tier if hold is None else hold.tier,
        transitions=tuple(transitions),
        hold=hold,
        policy_version=active.version,
        notes=(*ledger.notes, *notes),
    )


def _unrecorded(
    rules: list[LedgerTransition], audit: list[dict[str, Any]], evaluated_at_us: int
) -> list[LedgerTransition]:
    """Rules changes up to the last evaluation that the audit log has no row for: events
    arrived after them, so the store recorded the net effect as one ``late_events``
    correction (listed from the audit) instead; they did not take effect on their date."""
    recorded = {(row["at_us"], row["old_tier"], row["new_tier"]) for row in audit}
    out = []
    for item in rules:
        key = (item.at_us, item.old_tier, item.new_tier)
        if item.effective and item.at_us <= evaluated_at_us and key not in recorded:
            item = dataclasses.replace(
                item,
                effective=False,
                note="not recorded on this date: events arrived later, and the store "
                "recorded the net change as a correction",
            )
        out.append(item)
    return out


def _overrides(repo: Repository, customer_id: str) -> list[dict[str, Any]]:
    query = select(OVERRIDES).where(OVERRIDES.c.customer_id == customer_id).order_by(OVERRIDES.c.id)
    return [dict(row._mapping) for row in repo.connection.execute(query)]


def _audit(repo: Repository, customer_id: str) -> list[dict[str, Any]]:
    query = select(AUDIT).where(AUDIT.c.customer_id == customer_id).order_by(AUDIT.c.id)
    return [dict(row._mapping) for row in repo.connection.execute(query)]


def _override_end(row: dict[str, Any]) -> int | None:
    ends = [t for t in (row["until_us"], row["cleared_at_us"]) if t is not None]
    return min(ends, default=None)


def _override_at(overrides: list[dict[str, Any]], at_us: int) -> dict[str, Any] | None:
    """The override in force at ``at_us`` (the latest one set at or before it)."""
    found = None
    for row in overrides:
        end = _override_end(row)
        if row["set_at_us"] <= at_us and (end is None or at_us < end):
            found = row
    return found


def _rank(policy: Policy, tier: str | None) -> int:
    names = policy.tier_names
    return names.index(tier) if tier in names else -1


def _under_holds(
    policy: Policy,
    transition: LedgerTransition,
    overrides: list[dict[str, Any]],
    floor: Floor | None,
) -> LedgerTransition:
    """A rules transition as the customer saw it: hidden by an override, or lifted by a floor."""
    at = transition.at_us
    held = _override_at(overrides, at)
    if held is not None and transition.source == "rules":
        return dataclasses.replace(
            transition, effective=False, note=f"the override to {held['tier']} held the tier"
        )
    if floor is None or not floor.active_at(at) or transition.source != "rules":
        return transition
    level = _rank(policy, floor.tier)
    names = policy.tier_names
    old = names[max(_rank(policy, transition.old_tier), level)]
    new = names[max(_rank(policy, transition.new_tier), level)]
    note = (
        f"rules: {transition.old_tier} -> {transition.new_tier}; grandfathered at "
        f"{floor.tier} until {iso(floor.until_us)}"
    )
    return dataclasses.replace(
        transition, old_tier=old, new_tier=new, effective=old != new, note=note
    )


def _from_audit(row: dict[str, Any]) -> LedgerTransition:
    reason, cause = row["reason"], row["cause"] or ""
    source = {
        "reclassification": "late_events" if cause == "late_events" else "policy",
        "enrolment": "enrolment",
        "upgrade": "rules",
        "downgrade": "rules",
    }.get(reason, reason)
    old, new = row["old_tier"], row["new_tier"]
    if reason in {"enrolment", "upgrade", "downgrade"}:
        direction = reason
    elif old == new:
        direction = "held"
    else:
        direction = "change"
    rule = {
        "override": f"override ({cause.replace('_', ' ')}) by {row['actor']}",
        "grandfathering": "grandfathering"
        + (" ended" if cause == "grandfather_end" else f" by {row['actor']}"),
        "policy": f"policy version {row['policy_version']} applied by {row['actor']}",
        "late_events": "events dated in the past changed the history",
        "enrolment": "first order: every customer starts in the default tier",
        "rules": f"{cause.replace('_', ' ')} under policy version {row['policy_version']}",
    }.get(source, reason)
    if row["note"]:
        rule += f": {row['note']}"
    return LedgerTransition(
        at_us=row["at_us"],
        old_tier=old,
        new_tier=new,
        direction=direction,
        source=source,
        causes=tuple(c for c in cause.split(",") if c) or (reason,),
        rule=rule,
        actor=row["actor"],
        note=row["note"],
        policy_version=row["policy_version"],
    )


def _hold(
    policy: Policy,
    ledger: TierLedger,
    overrides: list[dict[str, Any]],
    floor: Floor | None,
    now_us: int,
) -> Hold | None:
    override = _override_at(overrides, now_us)
    if override is not None:
        return Hold(
            "override",
            override["tier"],
            override["until_us"],
            override["actor"],
            override["reason"],
        )
    if (
        floor is not None
        and floor.active_at(now_us)
        and _rank(policy, floor.tier) > _rank(policy, ledger.tier)
    ):
        return Hold(
            "grandfathering",
            floor.tier,
            floor.until_us,
            None,
            f"policy version {floor.policy_version}",
        )
    return None
