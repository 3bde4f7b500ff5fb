"""An outbox message as the dispatcher sees it, and what each channel is sent.

The webhook body is the same bytes on every attempt (nothing attempt-specific
is in it; the attempt number travels in a header), so a receiver can dedupe
by the ``Idempotency-Key`` header or by the body's ``id``, and the signature
of a retried delivery equals the first one's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OutboxMessage:
    """One row of the outbox, payload decoded."""

    id: int
    idempotency_key: str
    kind: str
    customer_id: str
    payload: dict[str, Any]
    created_at_us: int
    attempts: int = 0

    @property
    def tier(self) -> str | None:
        """The tier the message is about (the new tier of a change)."""
        return self.payload.get("new_tier") or self.payload.get("tier")


@dataclass(frozen=True)
class MessageContext:
    """What the dispatcher adds to a message for its channels (not stored in the outbox)."""

    perks: Mapping[str, Any] = field(default_factory=dict)
    program_name: str = "Rewards"
    bonus_points: int = 0
    sent_at_us: int | None = None  # the dispatcher's now (the email Date header)


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Compact, key-sorted JSON: the exact bytes that are signed and sent."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def webhook_document(message: OutboxMessage, context: MessageContext) -> dict[str, Any]:
    """The JSON body of a webhook delivery."""
    data = dict(message.payload)
    if message.tier is not None:
        data["perks"] = dict(context.perks)
    return {
        "id": message.idempotency_key,
        "kind": message.kind,
        "customer_id": message.customer_id,
        "outbox_id": message.id,
        "data": data,
    }


def loyalty_document(message: OutboxMessage, points: int) -> dict[str, Any]:
    """The JSON body of a loyalty-points grant."""
    return {
        "id": message.idempotency_key,
        "customer_id": message.customer_id,
        "points": points,
        "reason": message.kind,
        "tier": message.tier,
        "old_tier": message.payload.get("old_tier"),
        "at": message.payload.get("at"),
    }


def email_context(
    message: OutboxMessage, context: MessageContext, recipient: Mapping[str, Any]
) -> dict[str, Any]:
    """The variables of an email template: the payload, the tier's perks, the recipient."""
    variables: dict[str, Any] = dict(message.payload)
    variables.update(
        customer_id=message.customer_id,
        kind=message.kind,
        tier=message.tier,
        old_tier=message.payload.get("old_tier"),
        perks=dict(context.perks),
        program_name=context.program_name,
        bonus_points=context.bonus_points,
        name=recipient.get("name") or None,
        email=recipient.get("email"),
    )
    return variables
