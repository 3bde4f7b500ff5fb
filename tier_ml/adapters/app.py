"""The mobile app's order events, as its backend posts them (one JSON event, or a list).

Shape (money in minor units, as payment APIs send it; the exponent is the payload's, else
the currency's ISO 4217 one: 2 for USD, 0 for JPY, 3 for KWD)::

    {"id": "evt_01H...", "type": "order.completed", "created_at": "2025-03-01T10:00:00Z",
     "data": {"order": {"id": "A-1001", "user_id": "C0001", "country": "US",
                        "total": {"value": 12999, "currency": "USD", "exponent": 2}}}}

- ``order.completed`` -> ``placed`` (order ``app:<order id>``);
- ``order.refunded`` -> ``refunded``, amount ``data.refund.amount``;
- ``order.cancelled`` -> ``cancelled``.

The event id is the app's own ``id`` (namespaced ``app:``), so the app's
retries are replays. The app posts ``occurred_at`` when the order happened
offline and synced later; else ``created_at`` is the instant.
"""

from __future__ import annotations

from typing import Any

from tier_ml.adapters import (
    AdapterContext,
    RawEvent,
    event,
    ident,
    minor_units_text,
    namespaced,
    text,
)

CHANNEL = "app"
KINDS = {"order.completed": "placed", "order.refunded": "refunded", "order.cancelled": "cancelled"}


def to_events(payload: Any, context: AdapterContext = AdapterContext()) -> list[RawEvent]:
    """The canonical events of one post (an event object or a list of them)."""
    items = payload if isinstance(payload, list) else [payload]
    return [_event(item, context) for item in items]


def _event(item: dict[str, Any], context: AdapterContext) -> RawEvent:
    data = item.get("data") or {}
    order = data.get("order") or {}
    kind_code = text(item.get("type")) or ""
    kind = KINDS.get(kind_code, kind_code)
    money = (data.get("refund") or {}).get("amount") if kind == "refunded" else order.get("total")
    money = money or {}
    currency = text(money.get("currency")) if money else text(order.get("currency"))
    return event(
        event_id=namespaced("app", item.get("id")),
        event_type=kind,
        order_id=namespaced("app", order.get("id")),
        customer_id=ident(order.get("user_id")),
        occurred_at=text(item.get("occurred_at") or item.get("created_at")),
        amount=None
        if kind == "cancelled"
        else minor_units_text(money.get("value"), money.get("exponent"), currency),
        currency=currency,
        channel=CHANNEL,
        region=context.market(text(order.get("country"))),
    )
