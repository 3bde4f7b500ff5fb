"""A marketplace's JSON order feed (orders, refunds and cancellations of one seller).

The feed is a document ``{"feed_id": ..., "seller_id": ..., "entries": [...]}``;
each entry has a ``type``:

- ``ORDER``: ``marketplace_order_id``, ``purchase_date``, ``order_total``
  (``{"amount": "59.99", "currency_code": "EUR"}``), ``buyer`` with the
  ``loyalty_id`` the shopper linked and their ``country`` -> ``placed``;
- ``REFUND``: ``refund_id``, ``marketplace_order_id``, ``posted_date``,
  ``refund_total`` -> ``refunded``;
- ``CANCELLATION``: ``marketplace_order_id``, ``cancelled_date`` -> ``cancelled``.

Marketplaces hide the shopper's identity unless they linked a loyalty
account: orders without ``buyer.loyalty_id`` earn no loyalty spend and give
no event. A refund or cancellation without a buyer belongs to its order's buyer
(from the same feed, else the store); without one it is rejected, not dropped.
Ids are namespaced ``mp:<marketplace_order_id>``.
"""

from __future__ import annotations

from typing import Any

from tier_ml.adapters import AdapterContext, RawEvent, decimal_text, event, ident, namespaced, text

CHANNEL = "marketplace"


def to_events(payload: Any, context: AdapterContext = AdapterContext()) -> list[RawEvent]:
    """The canonical events of one feed document (or a bare list of entries)."""
    if isinstance(payload, dict) and "entries" not in payload:
        keys = ", ".join(sorted(map(str, payload))[:8]) or "none"
        raise ValueError(f"a marketplace feed document has \"entries\" (this one has: {keys})")
    entries = payload["entries"] if isinstance(payload, dict) else payload
    if not isinstance(entries, list):
        raise ValueError("a marketplace feed has a list of entries")
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {number} of the marketplace feed is not an object")
    if entries and not any("type" in entry for entry in entries):
        # e.g. canonical events sent with the wrong --channel: say so rather than "0 events"
        raise ValueError("no entry has a type (ORDER, REFUND or CANCELLATION): not a marketplace feed")
    buyers = {  # the loyalty ids of this feed's orders, for its refunds and cancellations
        _order(entry): buyer for entry in entries
        if (text(entry.get("type")) or "").upper() == "ORDER" and (buyer := _buyer(entry)) is not None
    }
    events = []
    for entry in entries:
        converted = _entry(entry, context, buyers)
        if converted is not None:
            events.append(converted)
    return events


def _order(entry: dict[str, Any]) -> str | None:
    return namespaced("mp", entry.get("marketplace_order_id"))


def _buyer(entry: dict[str, Any]) -> str | None:
    return ident((entry.get("buyer") or {}).get("loyalty_id"))


def _entry(entry: dict[str, Any], context: AdapterContext, buyers: dict[str | None, str]) -> RawEvent | None:
    """The event of one entry. An order without a linked buyer earns no loyalty spend (no
    event); a refund or cancellation without one belongs to the buyer of its order, from
    this feed or the store, and without either is rejected (``customer_id`` missing)."""
    kind = (text(entry.get("type")) or "").upper()
    order = _order(entry)
    customer = _buyer(entry)
    if customer is None and kind == "ORDER":
        return None
    if customer is None and order is not None:
        customer = buyers.get(order) or context.customer_of_order(order)
    region = context.market(text((entry.get("buyer") or {}).get("country")))
    if kind == "ORDER":
        total = entry.get("order_total") or {}
        return event(
            namespaced("mp", "order", entry.get("marketplace_order_id")),
            "placed",
            order,
            customer,
            text(entry.get("purchase_date")),
            decimal_text(total.get("amount")),
            text(total.get("currency_code")),
            CHANNEL,
            region,
        )
    if kind == "REFUND":
        total = entry.get("refund_total") or {}
        return event(
            namespaced("mp", "refund", entry.get("refund_id")),
            "refunded",
            order,
            customer,
            text(entry.get("posted_date")),
            decimal_text(total.get("amount")),
            text(total.get("currency_code")),
            CHANNEL,
            region,
        )
    if kind == "CANCELLATION":
        return event(
            namespaced("mp", "cancel", entry.get("marketplace_order_id")),
            "cancelled",
            order,
            customer,
            text(entry.get("cancelled_date")),
            None,
            None,
            CHANNEL,
            region,
        )
    return event(
        namespaced("mp", kind.lower() or "entry", entry.get("marketplace_order_id")),
        kind.lower(),  # rejected downstream as unknown_event_type, with the row kept for review
        order,
        customer,
        text(entry.get("purchase_date") or entry.get("posted_date")),
        None,
        None,
        CHANNEL,
        region,
    )
