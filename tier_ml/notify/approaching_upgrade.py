"""The ``approaching_upgrade`` milestone: "spend X more to reach Gold", when X is small.

A customer whose spend (qualifying, plus pending when ``include_pending``) is
short of the next tier's threshold for their region by at most the configured
distance (``within`` share of that threshold, or ``within_amount``) gets one
message in the outbox, then none for ``cooldown_days``. The cooldown is read
from the outbox itself (the customer's last ``approaching_upgrade``), in the
same transaction that queues, so two dispatchers cannot both send one.
Customers under an override, at the top tier, or not yet swept up to now are
left out. The distance is about spend only; ``orders_needed`` says what
``min_orders`` still asks for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Table, func, insert, select

from tier_ml.money import days_to_micros, micros_to_money, to_micros
from tier_ml.notify.config import ApproachingUpgradeSettings
from tier_ml.notify.downgrade_warnings import under_open_override
from tier_ml.policy import Policy
from tier_ml.store.models import OutboxRow, TierStateRow
from tier_ml.store.service import iso_instant
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction

STATES: Table = TierStateRow.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
KIND = "approaching_upgrade"


@dataclass
class MilestoneResult:
    queued: int = 0
    customers: list[str] = field(default_factory=list)


def distance_us(settings: ApproachingUpgradeSettings, threshold_us: int) -> int:
    """The largest shortfall that still counts as close to ``threshold_us``."""
    limits = []
    if settings.within is not None:
        limits.append(round(threshold_us * settings.within))
    if settings.within_amount is not None:
        limits.append(to_micros(settings.within_amount))
    return max(limits)


def upgrade_payload(
    policy: Policy,
    state: Mapping[str, Any],
    settings: ApproachingUpgradeSettings,
    policy_version: int,
    now_us: int,
) -> dict[str, Any] | None:
    """The message for one customer's tier-state row (None: not close to the next tier)."""
    tier = state["tier"]
    if tier is None or tier not in policy.tier_names:
        return None
    index = policy.tier_names.index(tier)
    if index + 1 >= len(policy.tier_names):
        return None  # nothing above the top tier
    threshold = policy.thresholds_us(state["region"])[index + 1]
    spend = int(state["qualifying_us"]) + (
        int(state["pending_us"]) if settings.include_pending else 0
    )
    missing_us = threshold - spend
    if missing_us <= 0 or missing_us > distance_us(settings, threshold):
        return None  # already there (the rules engine upgrades) or too far
    orders_needed = max(0, policy.min_orders_list[index + 1] - int(state["qualifying_orders"]))
    key = hashlib.sha256(f"{KIND}|{state['customer_id']}|{now_us}".encode()).hexdigest()[:32]
    return {
        "kind": KIND,
        "customer_id": state["customer_id"],
        "tier": tier,
        "next_tier": policy.tier_names[index + 1],
        "threshold": round(micros_to_money(threshold), 2),
        "spend_needed": round(micros_to_money(missing_us), 2),
        "orders_needed": orders_needed,
        "includes_pending": settings.include_pending,
        "currency": policy.base_currency,
        "at": iso_instant(now_us),
        "policy_version": policy_version,
        "idempotency_key": key,
    }


def queue_approaching_upgrades(
    engine: Engine, settings: ApproachingUpgradeSettings, now_us: int
) -> MilestoneResult:
    """Queue ``approaching_upgrade`` for every close customer outside their cooldown."""
    cooldown_from = now_us - days_to_micros(settings.cooldown_days)

    def work(uow: UnitOfWork) -> MilestoneResult:
        repo = uow.repo
        active = repo.active_policy()
        if active is None:
            return MilestoneResult()
        connection = repo.connection
        recent = (
            select(OUTBOX.c.id)
            .where(
                OUTBOX.c.customer_id == STATES.c.customer_id,
                OUTBOX.c.kind == KIND,
                OUTBOX.c.created_at_us > cooldown_from,
            )
            .exists()
        )
        overridden = under_open_override(now_us)
        query = (
            select(STATES)
            .where(
                STATES.c.tier.is_not(None),
                func.coalesce(STATES.c.next_due_at_us, now_us + 1) > now_us,
                ~overridden,
                ~recent,
            )
            .order_by(STATES.c.customer_id)
        )
        result = MilestoneResult()
        for row in connection.execute(query).mappings().all():
            payload = upgrade_payload(active.policy, row, settings, active.version, now_us)
            if payload is None:
                continue
            connection.execute(
                insert(OUTBOX).values(
                    idempotency_key=payload["idempotency_key"],
                    kind=KIND,
                    customer_id=row["customer_id"],
                    payload=json.dumps(payload, sort_keys=True),
                    created_at_us=now_us,
                )
            )
            result.queued += 1
            result.customers.append(row["customer_id"])
        return result

    return run_in_transaction(engine, work)
