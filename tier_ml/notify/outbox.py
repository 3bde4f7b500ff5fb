"""The outbox's delivery state in the store: what is due, claiming, outcomes, listing, retrying.

States: ``pending`` (to send; ``next_attempt_at_us`` NULL or in the past means
due), ``delivered``, ``dead`` (gave up). Per customer only the *head* may go
out: the oldest pending message; a later one waits while an earlier one is
pending (also while it waits for a retry), so a customer never hears
"downgraded" before "upgraded". Dead letters leave the line: one message a
receiver refuses does not silence a customer for good; ``retry`` puts it back.

A sender claims a message before sending it (a compare-and-set on its due
time, pushing it one lease into the future and counting the attempt), so two
dispatchers never send the same message at once, and a dispatcher that dies
mid-send leaves a message that becomes due again when the lease runs out:
delivery is at least once, and receivers dedupe by the idempotency key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tier_ml.notify.messages import OutboxMessage
from tier_ml.store.models import OutboxDeliveryRow, OutboxRow, PolicyVersion
from tier_ml.store.service import iso_instant

OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
DELIVERIES: Table = OutboxDeliveryRow.__table__  # type: ignore[assignment]
POLICIES: Table = PolicyVersion.__table__  # type: ignore[assignment]

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATUSES = (PENDING, DELIVERED, DEAD)


def _due(table: Any, now_us: int) -> Any:
    return or_(table.c.next_attempt_at_us.is_(None), table.c.next_attempt_at_us <= now_us)


def due_heads(connection: Connection, now_us: int, limit: int) -> list[OutboxMessage]:
    """The oldest pending message of each customer, when it is due (oldest first)."""
    head = OUTBOX.alias("head")
    earlier = OUTBOX.alias("earlier")
    blocked = (
        select(earlier.c.id)
        .where(
            earlier.c.customer_id == head.c.customer_id,
            earlier.c.status == PENDING,
            earlier.c.id < head.c.id,
        )
        .exists()
    )
    query = (
        select(head)
        .where(head.c.status == PENDING, _due(head, now_us), ~blocked)
        .order_by(head.c.id)
        .limit(limit)
    )
    return [_message(row._mapping) for row in connection.execute(query)]


def claim(connection: Connection, message_id: int, now_us: int, lease_us: int) -> bool:
    """Take a due pending message for one attempt (False: another dispatcher has it)."""
    result = connection.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == message_id, OUTBOX.c.status == PENDING, _due(OUTBOX, now_us))
        .values(
            attempts=OUTBOX.c.attempts + 1,
            last_attempt_at_us=now_us,
            next_attempt_at_us=now_us + lease_us,
        )
    )
    return result.rowcount == 1


def delivered_channels(connection: Connection, message_ids: Sequence[int]) -> dict[int, set[str]]:
    """The channels that already accepted each message."""
    found: dict[int, set[str]] = {i: set() for i in message_ids}
    if not message_ids:
        return found
    query = select(DELIVERIES.c.outbox_id, DELIVERIES.c.channel).where(
        DELIVERIES.c.outbox_id.in_(list(message_ids))
    )
    for outbox_id, channel in connection.execute(query):
        found[outbox_id].add(channel)
    return found


def record_channel(
    connection: Connection, message_id: int, channel: str, now_us: int, detail: str | None
) -> None:
    """Remember that ``channel`` accepted the message (a retry will skip it)."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(
        dialect_insert(DELIVERIES)
        .values(outbox_id=message_id, channel=channel, delivered_at_us=now_us, detail=detail)
        .on_conflict_do_nothing()  # a concurrent dispatcher after a lease ran out: same fact
    )


def mark_delivered(connection: Connection, message_id: int, now_us: int) -> None:
    connection.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == message_id)
        .values(status=DELIVERED, delivered_at_us=now_us, next_attempt_at_us=None, last_error=None)
    )


def mark_failed(
    connection: Connection, message_id: int, error: str, next_attempt_at_us: int | None
) -> None:
    """A failed attempt: retry at ``next_attempt_at_us``, or dead when it is None."""
    values: dict[str, Any] = {"last_error": error[:2000], "next_attempt_at_us": next_attempt_at_us}
    if next_attempt_at_us is None:
        values["status"] = DEAD
    connection.execute(update(OUTBOX).where(OUTBOX.c.id == message_id).values(**values))


def policy_perks(connection: Connection, version: int) -> dict[str, dict[str, Any]]:
    """Each tier's perks under a stored policy version ({} for an unknown version)."""
    text = connection.execute(
        select(POLICIES.c.policy_json).where(POLICIES.c.version == version)
    ).scalar()
    if text is None:
        return {}
    return {tier["name"]: dict(tier.get("perks") or {}) for tier in json.loads(text)["tiers"]}


def active_policy_version(connection: Connection) -> int | None:
    return connection.execute(select(func.max(POLICIES.c.version))).scalar()


# --- listing and retrying (the CLI and the API) -----------------------------------------------


def list_rows(
    connection: Connection,
    *,
    status: str | None = None,
    customer_id: str | None = None,
    kind: str | None = None,
    ids: Iterable[int] | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> list[dict[str, Any]]:
    """Outbox entries as JSON-ready dicts (oldest first), with the channels that accepted them."""
    query = select(OUTBOX).order_by(OUTBOX.c.id).limit(limit)
    conditions = []
    if status is not None:
        conditions.append(OUTBOX.c.status == status)
    if customer_id is not None:
        conditions.append(OUTBOX.c.customer_id == customer_id)
    if kind is not None:
        conditions.append(OUTBOX.c.kind == kind)
    if ids is not None:
        conditions.append(OUTBOX.c.id.in_(list(ids)))
    if after_id is not None:
        conditions.append(OUTBOX.c.id > after_id)
    if conditions:
        query = query.where(and_(*conditions))
    rows = [dict(row._mapping) for row in connection.execute(query)]
    channels = delivered_channels(connection, [r["id"] for r in rows])
    return [_entry(row, sorted(channels[row["id"]])) for row in rows]


def status_counts(connection: Connection) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    query = select(OUTBOX.c.status, func.count()).group_by(OUTBOX.c.status)
    for status, count in connection.execute(query):
        counts[status] = int(count)
    return counts


@dataclass
class RetryResult:
    """What ``outbox retry`` did with each id it was given."""

    retried: list[int] = field(default_factory=list)
    already_delivered: list[int] = field(default_factory=list)
    not_found: list[int] = field(default_factory=list)


def retry_rows(connection: Connection, ids: Sequence[int], now_us: int | None) -> RetryResult:
    """Make dead (or waiting) messages due with a fresh attempt budget: from ``now_us``, or
    at once (None: due whatever clock the next dispatch runs with)."""
    result = RetryResult()
    wanted = sorted(set(ids))
    found = {
        row.id: row.status
        for row in connection.execute(
            select(OUTBOX.c.id, OUTBOX.c.status).where(OUTBOX.c.id.in_(wanted))
        )
    }
    for message_id in wanted:
        status = found.get(message_id)
        if status is None:
            result.not_found.append(message_id)
        elif status == DELIVERED:
            result.already_delivered.append(message_id)
        else:
            result.retried.append(message_id)
    if result.retried:
        connection.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id.in_(result.retried))
            .values(status=PENDING, attempts=0, next_attempt_at_us=now_us)
        )
    return result


def dead_ids(connection: Connection) -> list[int]:
    return list(
        connection.execute(select(OUTBOX.c.id).where(OUTBOX.c.status == DEAD).order_by(OUTBOX.c.id))
        .scalars()
        .all()
    )


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(
        id=int(row["id"]),
        idempotency_key=row["idempotency_key"],
        kind=row["kind"],
        customer_id=row["customer_id"],
        payload=json.loads(row["payload"]),
        created_at_us=int(row["created_at_us"]),
        attempts=int(row["attempts"]),
    )


def _instant(value: int | None) -> str | None:
    return None if value is None else iso_instant(value)


def _entry(row: dict[str, Any], channels: list[str]) -> dict[str, Any]:
    return {
        "id": int(row["id"]),
        "idempotency_key": row["idempotency_key"],
        "kind": row["kind"],
        "customer_id": row["customer_id"],
        "status": row["status"],
        "attempts": int(row["attempts"]),
        "created_at": _instant(row["created_at_us"]),
        "last_attempt_at": _instant(row["last_attempt_at_us"]),
        "next_attempt_at": _instant(row["next_attempt_at_us"])
        if row["status"] == PENDING
        else None,
        "delivered_at": _instant(row["delivered_at_us"]),
        "last_error": row["last_error"],
        "channels_delivered": channels,
        "payload": json.loads(row["payload"]),
    }
