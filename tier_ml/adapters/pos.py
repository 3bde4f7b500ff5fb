"""Point-of-sale CSV exports (one row per receipt), as store systems write them nightly.

Columns (header names as the till exports them; extra columns are ignored)::

    receipt_id,store_id,country,store_timezone,business_date,time,loyalty_id,transaction_type,total,currency,original_receipt_id,original_store_id

- ``SALE`` -> ``placed`` (order ``pos:<store_id>:<receipt_id>``: stores number their
  receipts on their own), amount ``total``;
- ``RETURN`` -> ``refunded`` of ``original_receipt_id`` (at ``original_store_id``, else
  the same store); tills write returns with a negative total, the refund amount is its
  absolute value; a return without a ``loyalty_id`` belongs to the sale's customer;
- ``VOID`` -> ``cancelled`` of ``original_receipt_id``;
- till operations (``NO_SALE``, ``PAYIN``, ``PAYOUT``) are no orders and give no event.

Times are the store's local wall-clock time without an offset
(``business_date`` + ``time``), interpreted in the row's ``store_timezone``
(an IANA name; ``context.timezone`` when the export has no such column). Receipts
without a ``loyalty_id`` are anonymous sales: no loyalty customer, so no event.
The event id is ``pos:<store_id>:<receipt_id>``, so a re-exported file is a
replay.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tier_ml.adapters import AdapterContext, RawEvent, decimal_text, event, namespaced, text

CHANNEL = "pos"
KINDS = {"SALE": "placed", "RETURN": "refunded", "VOID": "cancelled"}
#: Without these a row has no customer or no identity, so another file would be read as
#: nothing but anonymous sales (or one replayed receipt) and silently vanish.
REQUIRED_COLUMNS = ("receipt_id", "loyalty_id", "transaction_type", "business_date")
#: Till operations that are no order: no event (not a reject either).
TILL_OPERATIONS = frozenset({"NO_SALE", "NOSALE", "PAYIN", "PAY_IN", "PAID_IN", "PAYOUT", "PAY_OUT", "PAID_OUT"})


def to_events(payload: Any, context: AdapterContext = AdapterContext()) -> list[RawEvent]:
    """The canonical events of one export (CSV text, or rows already parsed as dicts).

    CSV text whose header lacks a column of ``REQUIRED_COLUMNS`` is not a POS export:
    ``ValueError`` naming the missing columns."""
    rows = csv.DictReader(io.StringIO(payload)) if isinstance(payload, str) else payload
    if isinstance(rows, csv.DictReader) and rows.fieldnames:
        missing = [name for name in REQUIRED_COLUMNS if name not in rows.fieldnames]
        if missing:
            raise ValueError(
                f"not a POS export: no column {', '.join(missing)} (the header has "
                f"{', '.join(rows.fieldnames)})"
            )
    events = []
    for row in rows:
        converted = _row(row, context)
        if converted is not None:
            events.append(converted)
    return events


def _row(row: dict[str, Any], context: AdapterContext) -> RawEvent | None:
    kind_code = (text(row.get("transaction_type")) or "").upper()
    if kind_code in TILL_OPERATIONS:
        return None  # opening the drawer or paying in cash is no order
    kind = KINDS.get(kind_code, kind_code.lower() or None)
    store = text(row.get("store_id"))
    receipt = text(row.get("receipt_id"))
    if kind == "placed":
        order = _receipt_id(store, receipt)
    else:  # a return or void names the sale's receipt, at its store (this one unless said)
        order = _receipt_id(text(row.get("original_store_id")) or store, text(row.get("original_receipt_id")))
    customer = text(row.get("loyalty_id"))
    if customer is None and kind != "placed" and order is not None:
        customer = context.customer_of_order(order)  # the sale's loyalty customer
    if customer is None and kind == "placed":
        return None  # an anonymous sale earns no loyalty spend
    return event(
        event_id=_receipt_id(store, receipt),
        event_type=kind or "",
        order_id=order,
        customer_id=customer,
        occurred_at=_local_instant(row, text(row.get("store_timezone")) or context.timezone),
        amount=None if kind == "cancelled" else _amount(row.get("total"), kind),
        currency=text(row.get("currency")),
        channel=CHANNEL,
        region=context.market(text(row.get("country"))),
    )


def _receipt_id(store: str | None, receipt: str | None) -> str | None:
    """``pos:<store>:<receipt>``; ``pos:<receipt>`` for an export without stores (one shop)."""
    return namespaced("pos", store, receipt) if store else namespaced("pos", receipt)


def _local_instant(row: dict[str, Any], zone_name: str) -> str | None:
    """``business_date`` + ``time`` in the store's zone, as ISO 8601 with its offset."""
    day, clock = text(row.get("business_date")), text(row.get("time")) or "00:00:00"
    if day is None:
        return None
    try:
        local = datetime.fromisoformat(f"{day}T{clock}")
        zone = ZoneInfo(zone_name)
    except (ValueError, ZoneInfoNotFoundError):
        return f"{day} {clock} {zone_name}"  # kept as is: rejected as unparseable_time
    return local.replace(tzinfo=zone).isoformat()


def _amount(value: Any, kind: str | None) -> str | None:
    """The total as decimal text (``decimal_text``); a return's without its minus sign."""
    rendered = decimal_text(value)
    if rendered is None or kind != "refunded":
        return rendered
    return rendered[1:] if rendered.startswith("-") else rendered
