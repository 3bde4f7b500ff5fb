"""Channel adapters turn real payload shapes (fixtures in tests/fixtures/payloads) into
canonical events that pass validation, with stable ids so redeliveries are replays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tier_ml.adapters import AdapterContext, UnknownChannelError, channels, get_adapter
from tier_ml.events import EVENT_FIELDS, OrderEvent, check_row, parse_instant
from tier_ml.policy import load_policy

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
POLICY = load_policy(None)


def load(name: str):
    text = (PAYLOADS / name).read_text(encoding="utf-8")
    return text if name.endswith(".csv") else json.loads(text)


def brief(events: list[dict]) -> list[tuple]:
    return [
        (e["event_type"], e["order_id"], e["customer_id"], e["amount"], e["currency"])
        for e in events
    ]


def test_every_channel_is_registered_and_unknown_ones_are_named() -> None:
    assert set(channels()) == {"shopify", "pos", "marketplace", "app"}
    with pytest.raises(UnknownChannelError, match="known channels: app, marketplace, pos, shopify"):
        get_adapter("telex")


def test_shopify_order_cancel_and_refund() -> None:
    shopify = get_adapter("shopify")
    placed = shopify(load("shopify_orders_create.json"))
    cancelled = shopify(load("shopify_orders_cancelled.json"))
    context = AdapterContext(customer_of_order={"shopify:5810396201181": "7208214823133"}.get)
    refunded = shopify(load("shopify_refunds_create.json"), context)
    assert brief(placed + cancelled + refunded) == [
        ("placed", "shopify:5810396201181", "7208214823133", "1849.90", "EUR"),
        ("cancelled", "shopify:5810396201181", "7208214823133", None, "EUR"),
        (
            "refunded",
            "shopify:5810396201181",
            "7208214823133",
            "200.00",
            "EUR",
        ),  # failed one ignored
    ]
    assert placed[0]["region"] == "EU" and placed[0]["channel"] == "web"
    assert parse_instant(placed[0]["occurred_at"]) == parse_instant("2025-01-01T09:15:42Z")
    assert shopify(load("shopify_orders_create.json")) == placed  # redelivery: same event_id


def test_shopify_topic_from_header_or_envelope_and_test_orders() -> None:
    shopify = get_adapter("shopify")
    order = load("shopify_orders_create.json")
    as_cancel = shopify(order, AdapterContext(topic="orders/cancelled"))
    assert as_cancel[0]["event_type"] == "cancelled"
    assert shopify({"topic": "orders/create", "payload": order})[0]["event_type"] == "placed"
    assert shopify({**order, "test": True}) == []
    refund = shopify(load("shopify_refunds_create.json"))  # the store never saw the order
    assert refund[0]["customer_id"] is None
    assert check_row(refund[0], POLICY)[0] == "missing_field"
    with pytest.raises(ValueError, match="unsupported Shopify topic"):
        shopify(order, AdapterContext(topic="products/update"))


def test_pos_export() -> None:
    events = get_adapter("pos")(load("pos_export.csv"))
    assert brief(events) == [
        ("placed", "pos:ST-BER-01:R-20250301-0001", "L-0042", "129.90", "EUR"),
        ("refunded", "pos:ST-BER-01:R-20250301-0001", "L-0042", "29.90", "EUR"),
        ("placed", "pos:ST-LON-02:R-20250302-0002", "L-0077", "80.00", "GBP"),
        ("cancelled", "pos:ST-LON-02:R-20250302-0002", "L-0077", None, "GBP"),
        ("placed", "pos:ST-BER-01:R-20250303-0001", "L-0042", "abc", "EUR"),
    ]  # the anonymous sale gives no event
    assert [e["occurred_at"] for e in events[2:4]] == [
        "2025-03-02T11:30:00+00:00",
        "2025-03-02T11:45:00+00:00",
    ]
    assert events[0]["occurred_at"] == "2025-03-01T14:22:05+01:00"
    assert [e["region"] for e in events[:3]] == ["EU", "EU", "UK"]
    assert check_row(events[-1], POLICY)[0] == "unparseable_amount"


def test_marketplace_feed() -> None:
    events = get_adapter("marketplace")(load("marketplace_feed.json"))
    assert brief(events) == [
        ("placed", "mp:302-1234567-7654321", "C0001", "59.99", "EUR"),
        ("refunded", "mp:302-1234567-7654321", "C0001", "29.99", "EUR"),
        ("placed", "mp:302-3333333-4444444", "C0002", "249.00", "USD"),
        ("cancelled", "mp:302-3333333-4444444", "C0002", None, None),
    ]  # the entry without a loyalty id gives no event


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"event_id": "e1", "customer_id": "C1"}, 'has "entries" \\(this one has: customer_id, event_id\\)'),
        ([{"event_id": "e1", "customer_id": "C1"}], "no entry has a type"),  # canonical rows, wrong channel
        ({"entries": [{"type": "ORDER"}, "x"]}, "entry 2 of the marketplace feed is not an object"),
    ],
)
def test_a_document_that_is_not_a_marketplace_feed_is_named(payload: object, message: str) -> None:
    """Not "0 events": a file sent with the wrong --channel says what it lacks."""
    with pytest.raises(ValueError, match=message):
        get_adapter("marketplace")(payload)
    assert get_adapter("marketplace")({"feed_id": "f", "entries": []}) == []  # an empty feed is fine


def test_app_events_in_minor_units() -> None:
    events = get_adapter("app")(load("app_events.json"))
    assert brief(events) == [
        ("placed", "app:A-1001", "C0001", "129.99", "USD"),
        ("placed", "app:A-1002", "C0001", "50.00", "USD"),
        ("refunded", "app:A-1001", "C0001", "29.99", "USD"),
        ("cancelled", "app:A-1002", "C0001", None, None),
    ]
    assert events[1]["occurred_at"] == "2025-03-03T21:15:00Z"  # synced later: occurred_at wins


@pytest.mark.parametrize(
    ("channel", "name"),
    [
        ("shopify", "shopify_orders_create.json"),
        ("shopify", "shopify_orders_cancelled.json"),
        ("marketplace", "marketplace_feed.json"),
        ("app", "app_events.json"),
        ("pos", "pos_export.csv"),
    ],
)
def test_events_have_the_canonical_fields_and_validate(channel: str, name: str) -> None:
    events = get_adapter(channel)(load(name))
    assert events
    for event in events:
        assert tuple(event) == EVENT_FIELDS
        checked = check_row(event, POLICY)
        assert isinstance(checked, OrderEvent) or event["amount"] == "abc"


# --- what real payloads do (a black-box check against public formats found these) -------------


POS_HEADER = "receipt_id,store_id,business_date,time,loyalty_id,transaction_type,total,currency,original_receipt_id"


def test_pos_receipt_numbers_are_per_store_and_a_return_finds_its_sale() -> None:
    """Two stores both number a receipt 4711: two orders, not a duplicate. A return without a
    loyalty card belongs to the sale's customer; till operations give no event."""
    owners = {"pos:BERLIN:4711": "L-100"}
    context = AdapterContext(customer_of_order=owners.get)
    rows = (f"{POS_HEADER},original_store_id\n"
            "4711,BERLIN,2026-11-10,10:00:00,L-100,SALE,40.00,EUR,,\n"
            "4711,HAMBURG,2026-11-10,11:00:00,L-200,SALE,60.00,EUR,,\n"
            "4800,BERLIN,2026-11-11,10:00:00,,RETURN,-10.00,EUR,4711,\n"
            "9000,HAMBURG,2026-11-12,10:00:00,L-200,RETURN,-5.00,EUR,4711,BERLIN\n"
            "4801,BERLIN,2026-11-11,10:05:00,,NO_SALE,0,EUR,,\n")
    events = get_adapter("pos")(rows, context)
    assert [(e["event_type"], e["order_id"], e["customer_id"], e["amount"]) for e in events] == [
        ("placed", "pos:BERLIN:4711", "L-100", "40.00"),
        ("placed", "pos:HAMBURG:4711", "L-200", "60.00"),
        ("refunded", "pos:BERLIN:4711", "L-100", "10.00"),
        ("refunded", "pos:BERLIN:4711", "L-200", "5.00"),  # returned at another store
    ]
    one_shop = get_adapter("pos")("receipt_id,business_date,loyalty_id,transaction_type,total,currency\n"
                                  "7,2026-11-10,L-1,SALE,5.00,EUR\n")
    assert [(e["event_id"], e["order_id"]) for e in one_shop] == [("pos:7", "pos:7")]  # no store column


def test_a_marketplace_refund_without_a_buyer_belongs_to_its_order() -> None:
    feed = {"entries": [
        {"type": "ORDER", "marketplace_order_id": "305-1", "purchase_date": "2026-11-01T10:00:00Z",
         "order_total": {"amount": "100.00", "currency_code": "EUR"}, "buyer": {"loyalty_id": "LOY-88"}},
        {"type": "REFUND", "refund_id": "R1", "marketplace_order_id": "305-1", "posted_date": "2026-11-02T10:00:00Z",
         "refund_total": {"amount": "40.00", "currency_code": "EUR"}},
        {"type": "CANCELLATION", "marketplace_order_id": "305-9", "cancelled_date": "2026-11-02T10:00:00Z"},
    ]}
    events = get_adapter("marketplace")(feed, AdapterContext(customer_of_order={"mp:305-9": "LOY-9"}.get))
    assert [(e["event_type"], e["customer_id"]) for e in events] == [
        ("placed", "LOY-88"), ("refunded", "LOY-88"), ("cancelled", "LOY-9")]
    unknown = get_adapter("marketplace")({"entries": feed["entries"][1:2]})
    assert unknown[0]["customer_id"] is None  # rejected as missing_field downstream, not dropped
    assert check_row(unknown[0], POLICY)[0] == "missing_field"


@pytest.mark.parametrize(("value", "currency", "exponent", "amount"), [
    (12000, "JPY", None, "12000"), (12500, "KWD", None, "12.500"), (1999, "USD", None, "19.99"),
    (1999, "USD", 3, "1.999"), (12.5, "EUR", None, "12.5 minor units"),
])
def test_app_minor_units_follow_the_currency(value: object, currency: str, exponent: object, amount: str) -> None:
    total = {"value": value, "currency": currency, **({"exponent": exponent} if exponent is not None else {})}
    payload = {"id": "e1", "type": "order.completed", "created_at": "2026-11-01T10:00:00Z",
               "data": {"order": {"id": "A1", "user_id": "U1", "total": total}}}
    (row,) = get_adapter("app")(payload)
    assert row["amount"] == amount


@pytest.mark.parametrize("payload", [
    {"created_at": "2026-11-01T10:00:00Z", "total_price": "10.00", "currency": "USD", "customer": {"id": 1}},
    {"id": {"a": 1}, "created_at": "2026-11-01T10:00:00Z", "total_price": "10.00", "currency": "USD",
     "customer": {"id": 1}},
])
def test_a_payload_without_a_usable_id_is_rejected_not_given_the_id_none(payload: dict) -> None:
    """Before, it became ``shopify:order:None:placed``, and the next such order from another
    customer was a conflicting replay of it."""
    (row,) = get_adapter("shopify")(payload, AdapterContext(topic="orders/create"))
    assert row["event_id"] is None and row["order_id"] is None
    assert check_row(row, POLICY) == ("missing_field", "event_id is missing")


@pytest.mark.parametrize(("amount", "reason"), [("1e10000000", "unparseable_amount"), ("1_000", "unparseable_amount")])
def test_adapter_amounts_are_read_as_on_the_events_endpoint(amount: str, reason: str) -> None:
    payload = {"id": 7, "created_at": "2026-11-01T10:00:00Z", "total_price": amount, "currency": "USD",
               "customer": {"id": 1}}
    (row,) = get_adapter("shopify")(payload, AdapterContext(topic="ORDERS/CREATE"))  # any case
    assert row["amount"] == amount  # as sent, not ten million digits
    assert check_row(row, POLICY)[0] == reason
