"""Every order counts once: replaying a stream changes nothing, duplicate deliveries inside one
batch count once, and a reused event_id with other content is rejected."""

from __future__ import annotations

import random

import pandas as pd

from tests.integration.store.support import (
    END_OF_SIMULATION,
    assert_same_tiers,
    simulated,
    snapshot,
    stream,
)
from tier_ml.batch import classify_frame
from tier_ml.events import parse_instant
from tier_ml.policy import load_policy
from tier_ml.store import service
from tier_ml.store.intake import Status

NOW = parse_instant("2025-02-01T00:00:00Z")


def _placed(
    event_id: str, order: str, customer: str, amount: str, at: str = "2025-01-01T00:00:00Z"
):
    return {
        "event_id": event_id,
        "event_type": "placed",
        "order_id": order,
        "customer_id": customer,
        "occurred_at": at,
        "amount": amount,
        "currency": "USD",
        "channel": "web",
        "region": "US",
    }


def test_replaying_the_whole_stream_changes_nothing(engine) -> None:
    _, rows = simulated(300)
    stream(engine, rows)
    service.sweep(engine, END_OF_SIMULATION)
    before = snapshot(engine)
    again = service.apply_events(engine, list(rows), END_OF_SIMULATION)
    assert again.counts["accepted"] == 0
    assert again.customers == 0 and again.transitions == 0
    service.sweep(engine, END_OF_SIMULATION)
    after = snapshot(engine)
    for part in ("ledger", "audit", "outbox", "orders", "policies"):
        assert after[part] == before[part], part
    pd.testing.assert_frame_equal(after["states"], before["states"])


def test_duplicates_inside_one_batch_count_once(engine) -> None:
    order = _placed("e1", "o1", "ann", "25000")
    batch = [order, dict(order), dict(order), _placed("e2", "o2", "ann", "10")]
    result = service.apply_events(engine, batch, NOW)
    assert [r.status for r in result.results] == [
        Status.ACCEPTED,
        Status.DUPLICATE,
        Status.DUPLICATE,
        Status.ACCEPTED,
    ]
    (row,) = service.export_tiers(engine, NOW).itertuples()
    assert row.qualifying_spend == 25010.0 and row.tier == "Gold"  # default policy: Gold at 20,000


def test_reused_event_id_with_other_content_is_a_conflicting_replay(engine) -> None:
    service.apply_events(engine, [_placed("e1", "o1", "ann", "100")], NOW)
    result = service.apply_events(
        engine,
        [
            _placed("e1", "o1", "ann", "999"),
            _placed("e1", "o1", "ann", "100"),
            _placed("e9", "o1", "ann", "5"),
        ],
        NOW,
    )
    assert [(r.status, r.reason) for r in result.results] == [
        (Status.REJECTED, "conflicting_replay"),
        (Status.DUPLICATE, None),
        (Status.REJECTED, "duplicate_order"),
    ]
    assert service.export_tiers(engine, NOW)["qualifying_spend"].tolist() == [100.0]


def test_a_refund_delivered_before_its_order_is_accepted_when_redelivered(engine) -> None:
    refund = {
        **_placed("r1", "o1", "ann", "40", at="2025-01-02T00:00:00Z"),
        "event_type": "refunded",
    }
    first = service.apply_events(engine, [refund], NOW)
    assert first.results[0].reason == "unknown_order"
    service.apply_events(engine, [_placed("e1", "o1", "ann", "100")], NOW)
    again = service.apply_events(engine, [refund], NOW)
    assert again.results[0].status == Status.ACCEPTED
    assert service.export_tiers(engine, NOW)["qualifying_spend"].tolist() == [60.0]


def test_a_copy_rejected_for_its_order_still_holds_its_event_id(engine) -> None:
    """A refund delivered before its order is rejected; a later copy of its ``event_id`` with
    other content is a conflicting replay, and the same copy again a replay, as in ``classify``
    of the same events."""
    refund = {**_placed("r1", "o1", "ann", "150"), "event_type": "refunded"}
    rows = [
        {**refund, "occurred_at": "2025-01-01T00:00:00Z"},
        _placed("p1", "o1", "ann", "150", at="2025-01-02T00:00:00Z"),
        {**refund, "occurred_at": "2025-01-03T00:00:00Z"},
        {**refund, "occurred_at": "2025-01-01T00:00:00Z"},  # the first copy again
    ]
    outcomes = []
    for day, row in enumerate(rows, start=1):  # one batch a day, the store's clock moving on
        (result,) = service.apply_events(engine, [row], parse_instant(f"2025-01-0{day}")).results
        outcomes.append((result.status, result.reason))
    assert outcomes == [
        (Status.REJECTED, "unknown_order"),
        (Status.ACCEPTED, None),
        (Status.REJECTED, "conflicting_replay"),
        (Status.DUPLICATE, None),  # the rejected event again: rejected once, as in classify
    ]
    expected, rejects = classify_frame(load_policy(None), pd.DataFrame(rows), NOW)
    assert sorted(rejects["reason"]) == ["conflicting_replay", "unknown_order"]  # one replay
    tiers = service.export_tiers(engine, NOW)
    assert tiers["qualifying_spend"].tolist() == [150.0]
    assert_same_tiers(tiers, expected)


def test_batch_order_does_not_matter(new_store_url) -> None:
    """The same events in another order, in one batch, give the same store as classify."""
    events, rows = simulated(200)
    shuffled = list(rows)
    random.Random(5).shuffle(shuffled)
    engine = service.open_store(new_store_url())
    try:
        service.apply_events(engine, shuffled, END_OF_SIMULATION)
        expected, _ = classify_frame(load_policy(None), events, END_OF_SIMULATION)
        assert_same_tiers(service.export_tiers(engine, END_OF_SIMULATION), expected)
    finally:
        engine.dispose()
