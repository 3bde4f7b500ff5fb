"""Shopify webhooks: ``orders/create``, ``orders/cancelled`` and ``refunds/create``.

- ``orders/create`` (an Order resource) -> a ``placed`` event: ``total_price``
  in the shop ``currency`` at ``created_at``; the customer is ``customer.id``;
  the region is the market of the shipping (else billing) country; the channel
  follows ``source_name`` (``pos`` -> pos, ``iphone``/``android`` -> app, else web).
  Test orders (``"test": true``) are skipped.
- ``orders/cancelled`` (the Order again, with ``cancelled_at``) -> ``cancelled``.
- ``refunds/create`` (a Refund resource) -> ``refunded``: the sum of its
  successful ``refund`` transactions, at ``created_at``. A refund names its
  order but not the customer, so the customer comes from
  ``context.customer_of_order`` (the store's orders table); a refund of an
  order the store never saw gets no customer and is rejected with a reason.

Ids are namespaced (``shopify:<order id>``) so they never collide with other
channels; the event ids derive from Shopify's own ids, so a redelivered
webhook is a replay. The topic comes from the ``X-Shopify-Topic`` header
(``context.topic``) or a captured envelope ``{"topic": ..., "payload": ...}``;
without either it is inferred from the payload's shape.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from tier_ml.adapters import AdapterContext, RawEvent, decimal_text, event, ident, namespaced, text

CHANNEL = "shopify"
TOPICS = ("orders/create", "orders/cancelled", "refunds/create")
APP_SOURCES = {"iphone", "android", "mobile_app"}


def to_events(payload: Any, context: AdapterContext = AdapterContext()) -> list[RawEvent]:
    """The canonical events of one webhook delivery."""
    topic = context.topic
    if isinstance(payload, dict) and "topic" in payload and "payload" in payload:
        topic, payload = payload["topic"], payload["payload"]
    if not isinstance(payload, dict):
        raise ValueError(
            f"a Shopify webhook payload is a JSON object, not {type(payload).__name__}"
        )
    topic = (topic or "").strip().lower() or _infer_topic(payload)  # headers may come in capitals
    if topic == "refunds/create":
        return [_refund(payload, context)]
    if payload.get("test"):
        return []
    if topic == "orders/create":
        return [_placed(payload, context)]
    if topic == "orders/cancelled":
        return [_cancelled(payload, context)]
    raise ValueError(f"unsupported Shopify topic {topic!r}; supported: {', '.join(TOPICS)}")


def _infer_topic(payload: dict[str, Any]) -> str:
    if "refund_line_items" in payload or ("order_id" in payload and "transactions" in payload):
        return "refunds/create"
    return "orders/cancelled" if payload.get("cancelled_at") else "orders/create"


def order_id(shopify_order_id: Any) -> str | None:
    return namespaced("shopify", shopify_order_id)


def _channel(order: dict[str, Any]) -> str:
    source = (text(order.get("source_name")) or "web").lower()
    if source == "pos":
        return "pos"
    return "app" if source in APP_SOURCES else "web"


def _region(order: dict[str, Any], context: AdapterContext) -> str | None:
    for key in ("shipping_address", "billing_address"):
        address = order.get(key) or {}
        if address.get("country_code"):
            return context.market(address["country_code"])
    return None


def _customer(order: dict[str, Any]) -> str | None:
    customer = order.get("customer") or {}
    return ident(customer.get("id"))


def _placed(order: dict[str, Any], context: AdapterContext) -> RawEvent:
    return event(
        event_id=namespaced("shopify", "order", order.get("id"), "placed"),
        event_type="placed",
        order_id=order_id(order.get("id")),
        customer_id=_customer(order),
        occurred_at=text(order.get("created_at")),
        amount=decimal_text(order.get("total_price")),
        currency=text(order.get("currency")),
        channel=_channel(order),
        region=_region(order, context),
    )


def _cancelled(order: dict[str, Any], context: AdapterContext) -> RawEvent:
    return event(
        event_id=namespaced("shopify", "order", order.get("id"), "cancelled"),
        event_type="cancelled",
        order_id=order_id(order.get("id")),
        customer_id=_customer(order),
        occurred_at=text(order.get("cancelled_at")),
        amount=None,
        currency=text(order.get("currency")),
        channel=_channel(order),
        region=_region(order, context),
    )


def _refund(refund: dict[str, Any], context: AdapterContext) -> RawEvent:
    order = order_id(refund.get("order_id"))
    amount, currency = _refunded_amount(refund)
    return event(
        event_id=namespaced("shopify", "refund", refund.get("id")),
        event_type="refunded",
        order_id=order,
        customer_id=context.customer_of_order(order) if order else None,
        occurred_at=text(refund.get("created_at")),
        amount=amount,
        currency=currency,
        channel="web",
        region=None,
    )


def _refunded_amount(refund: dict[str, Any]) -> tuple[str | None, str | None]:
    """The money that went back: successful ``refund`` transactions, summed."""
    total = Decimal(0)
    currency = None
    found = False
    for transaction in refund.get("transactions") or []:
        if transaction.get("kind") != "refund" or transaction.get("status") != "success":
            continue
        amount = decimal_text(transaction.get("amount"))
        try:
            total += Decimal(amount or "")
        except InvalidOperation:  # not a number: validation rejects it, naming it
            return amount, text(transaction.get("currency"))
        currency = currency or text(transaction.get("currency"))
        found = True
    return (format(total, "f") if found else None), currency
