"""Downgrade warnings: "spend X by D to keep Gold", a set number of days before a grace end.

A customer above their eligible tier keeps it until ``grace_ends_at`` (no
order for ``downgrade_grace_days``, TIER_RULES.md rule 8). When that instant
is within ``days_before`` of now, one ``downgrade_warning`` message is queued
in the outbox, once per grace period (``downgrade_warnings`` remembers the
customer and grace end; a new order starts a new grace period and so a new
warning later). Customers under an override, and states not yet brought up
to now by the sweep, are left for later.

What the message says: ``spend_needed`` is what is missing (qualifying plus
pending spend against the tier's threshold for the customer's region) to be
eligible for the tier again, ``orders_needed`` likewise for ``min_orders``;
any order placed before ``grace_ends_at`` also restarts the grace period.

The same rule is the ``will_downgrade`` milestone: ``kind`` names the message
(``ChannelsConfig.warning_rule`` picks it), the payload and the once-per-grace-
period bookkeeping are shared, so a customer is never told twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Exists, Table, insert, or_, select

from tier_ml.money import days_to_micros, micros_to_money
from tier_ml.policy import Policy
from tier_ml.store.models import DowngradeWarningRow, OutboxRow, OverrideRow, TierStateRow
from tier_ml.store.service import iso_instant
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction

STATES: Table = TierStateRow.__table__  # type: ignore[assignment]
WARNINGS: Table = DowngradeWarningRow.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
OVERRIDES: Table = OverrideRow.__table__  # type: ignore[assignment]
KIND = "downgrade_warning"
KINDS = (KIND, "will_downgrade")


@dataclass
class WarningsResult:
    """Grace-end warnings queued by a due check (and, from ``dispatch_due``, the customers
    told they are approaching an upgrade)."""

    queued: int = 0
    customers: list[str] = field(default_factory=list)
    approaching_upgrade: list[str] = field(default_factory=list)



def under_open_override(now_us: int) -> Exists:
    """EXISTS for a tier-state row: its customer has an override in force at ``now_us``
    (the rules tier does not apply to them, so rules-based messages skip them)."""
    return (
        select(OVERRIDES.c.id)
        .where(
            OVERRIDES.c.customer_id == STATES.c.customer_id,
            OVERRIDES.c.cleared_at_us.is_(None),
            or_(OVERRIDES.c.until_us.is_(None), OVERRIDES.c.until_us > now_us),
        )
        .exists()
    )

def warning_key(customer_id: str, grace_ends_at_us: int, kind: str = KIND) -> str:
    """One key per customer and grace period: a re-run can never queue a second warning."""
    return hashlib.sha256(f"{kind}|{customer_id}|{grace_ends_at_us}".encode()).hexdigest()[:32]


def warning_payload(
    policy: Policy,
    state: Mapping[str, Any],
    policy_version: int,
    now_us: int,
    kind: str = KIND,
) -> dict[str, Any] | None:
    """The message for one protected customer's tier-state row (None: nothing to warn about)."""
    tier, grace_ends = state["tier"], state["grace_ends_at_us"]
    if tier is None or grace_ends is None or tier not in policy.tier_names:
        return None
    index = policy.tier_names.index(tier)
    if index == 0:
        return None  # nobody drops below the default tier
    threshold = policy.thresholds_us(state["region"])[index]
    missing_us = max(0, threshold - int(state["qualifying_us"]) - int(state["pending_us"]))
    orders_needed = max(0, policy.min_orders_list[index] - int(state["qualifying_orders"]))
    key = warning_key(state["customer_id"], int(grace_ends), kind)
    return {
        "kind": kind,
        "customer_id": state["customer_id"],
        "tier": tier,
        "eligible_tier": state["eligible_tier"],
        "grace_ends_at": iso_instant(int(grace_ends)),
        "spend_needed": round(micros_to_money(missing_us), 2),
        "orders_needed": orders_needed,
        "currency": policy.base_currency,
        "at": iso_instant(now_us),
        "policy_version": policy_version,
        "idempotency_key": key,
    }


def queue_downgrade_warnings(
    engine: Engine, days_before: float, now_us: int, kind: str = KIND
) -> WarningsResult:
    """Queue a warning for every customer whose grace period ends within ``days_before``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, not {kind!r}")
    if days_before <= 0:
        return WarningsResult()
    horizon_us = now_us + days_to_micros(days_before)

    def work(uow: UnitOfWork) -> WarningsResult:
        repo = uow.repo
        active = repo.active_policy()
        if active is None:
            return WarningsResult()
        connection = repo.connection
        warned = (
            select(WARNINGS.c.customer_id)
            .where(
                WARNINGS.c.customer_id == STATES.c.customer_id,
                WARNINGS.c.grace_ends_at_us == STATES.c.grace_ends_at_us,
            )
            .exists()
        )
        overridden = under_open_override(now_us)
        query = (
            select(STATES)
            .where(
                STATES.c.grace_ends_at_us > now_us,
                STATES.c.grace_ends_at_us <= horizon_us,
                ~overridden,
                or_(STATES.c.next_due_at_us.is_(None), STATES.c.next_due_at_us > now_us),
                ~warned,
            )
            .order_by(STATES.c.customer_id)
        )
        result = WarningsResult()
        for row in connection.execute(query).mappings().all():
            payload = warning_payload(active.policy, row, active.version, now_us, kind)
            if payload is None:
                continue
            key = payload["idempotency_key"]
            outbox_id = connection.execute(
                insert(OUTBOX)
                .values(
                    idempotency_key=key,
                    kind=kind,
                    customer_id=row["customer_id"],
                    payload=json.dumps(payload, sort_keys=True),
                    created_at_us=now_us,
                )
                .returning(OUTBOX.c.id)
            ).scalar_one()
            connection.execute(
                insert(WARNINGS).values(
                    customer_id=row["customer_id"],
                    grace_ends_at_us=row["grace_ends_at_us"],
                    tier=row["tier"],
                    warned_at_us=now_us,
                    outbox_id=outbox_id,
                )
            )
            result.queued += 1
            result.customers.append(row["customer_id"])
        return result

    return run_in_transaction(engine, work)


def warnings_sent(engine: Engine) -> list[dict[str, Any]]:
    """Every warning queued so far (for reports and tests)."""
    query = select(WARNINGS).order_by(WARNINGS.c.warned_at_us, WARNINGS.c.customer_id)
    return run_in_transaction(
        engine,
        lambda uow: [dict(r) for r in uow.repo.connection.execute(query).mappings()],
        read_only=True,
    )
