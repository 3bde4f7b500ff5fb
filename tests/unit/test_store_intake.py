"""The store's admission of a batch follows ``tier_ml.events.validate`` (the same reasons for the
same rows), and its fast ledger reader gives the events ``check_row`` gives."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from tests.eventgen import random_events, random_policy
from tier_ml.events import BEYOND_HEADER, OrderEvent, check_row, content, parse_instant, validate
from tier_ml.store.intake import (
    CLAIMING_REASONS,
    LedgerReader,
    PlacedOrder,
    RawEvent,
    RowChecker,
    Status,
    admit,
    canonical_raw,
)


@pytest.mark.parametrize("seed", range(30))
def test_one_batch_is_admitted_as_validate_splits_it(seed: int) -> None:
    rng = random.Random(seed)
    policy = random_policy(rng)
    rows = [canonical_raw(row) for row in random_events(rng, customers=5)]
    admission = admit(rows, policy, {}, {})
    validation = validate(rows, policy)

    assert sorted(e.event_id for e, _ in admission.accepted) == sorted(
        e.event_id for e in validation.events
    )
    rejected = sorted(
        (r.position + 1, r.reason) for r in admission.results if r.status == Status.REJECTED
    )
    assert rejected == sorted((r.row, str(r.reason)) for r in validation.rejects)
    assert admission.counts["duplicate"] == validation.replays


@pytest.mark.parametrize("seed", range(10))
def test_a_second_delivery_of_everything_is_duplicates_and_the_same_rejects(seed: int) -> None:
    rng = random.Random(seed)
    policy = random_policy(rng)
    rows = [canonical_raw(row) for row in random_events(rng, customers=5)]
    first = admit(rows, policy, {}, {})
    ledger = {event.event_id: raw for event, raw in first.accepted}
    orders = {
        e.order_id: PlacedOrder(e.customer_id, e.at_us, e.event_id)
        for e, _ in first.accepted
        if e.event_type == "placed"
    }
    second = admit(rows, policy, ledger, orders)
    assert second.accepted == []
    for before, after in zip(first.results, second.results, strict=True):
        if before.status == Status.REJECTED:
            assert after.status == Status.REJECTED
        else:
            assert after.status == Status.DUPLICATE


def _with_earlier_copies(rng: random.Random, rows: list[RawEvent]) -> list[RawEvent]:
    """``rows`` plus, for a few of them, a copy (same ``event_id``) moved earlier: a refund
    moved before its order is rejected, a placement moved earlier is the one kept."""
    copies = []
    for row in rng.sample(rows, k=min(len(rows), 6)):
        at = parse_instant(row["occurred_at"])
        if at is not None:
            earlier = at - rng.choice([1, 30, 400]) * 86_400_000_000
            copies.append({**row, "occurred_at": _iso_us(earlier)})
    return rows + copies


def _iso_us(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def _one_by_one(batch: list[RawEvent], policy) -> list[list[RawEvent]]:
    """The rows of one instant as batches of one, in the order ``validate`` decides them:
    the copies of an ``event_id`` together, smallest content first; placements first."""
    groups: dict[str, list[tuple[tuple, RawEvent]]] = {}
    for raw in batch:
        event = check_row(raw, policy)
        if isinstance(event, OrderEvent):
            groups.setdefault(event.event_id, []).append((content(event), raw))
    ordered = sorted(
        (sorted(group, key=lambda item: item[0]) for group in groups.values()),
        key=lambda group: (group[0][0][1] != "placed", check_row(group[0][1], policy).event_id),
    )
    return [[raw] for group in ordered for _, raw in group]


@pytest.mark.parametrize("one_by_one", [False, True], ids=["instants", "events"])
@pytest.mark.parametrize("seed", range(30))
def test_events_delivered_in_time_order_are_admitted_as_validate_splits_the_whole(
    seed: int, one_by_one: bool
) -> None:
    """Delivered in time order, one batch per instant or per event, the store keeps what
    ``validate`` keeps of the whole, with the same rejects and replays: a copy rejected for
    its order still holds its ``event_id`` in later batches (another copy is a
    ``conflicting_replay``, an identical one a replay), as the smallest copy does in
    ``validate``."""
    rng = random.Random(seed)
    policy = random_policy(rng)
    rows = _with_earlier_copies(rng, [canonical_raw(r) for r in random_events(rng, customers=5)])
    rng.shuffle(rows)
    instants: dict[int, list[RawEvent]] = {}
    for raw in rows:
        event = check_row(raw, policy)
        instants.setdefault(event.at_us if isinstance(event, OrderEvent) else 2**63, []).append(raw)
    batches = [
        part
        for at, batch in sorted(instants.items())
        for part in (_one_by_one(batch, policy) if one_by_one and at < 2**63 else [batch])
    ]

    ledger: dict[str, RawEvent] = {}
    orders: dict[str, PlacedOrder] = {}
    claims: dict[str, RawEvent] = {}
    rejected: list[str] = []
    duplicates = 0
    for batch in batches:
        admission = admit(batch, policy, ledger, orders, claims=claims)
        for event, raw in admission.accepted:
            ledger[event.event_id] = raw
            if event.event_type == "placed":
                orders[event.order_id] = PlacedOrder(event.customer_id, event.at_us, event.event_id)
        for result in admission.results:
            if result.status == Status.REJECTED:
                rejected.append(str(result.reason))
                if result.reason in CLAIMING_REASONS:
                    claims.setdefault(str(result.event_id), batch[result.position])
            duplicates += result.status == Status.DUPLICATE

    validation = validate(rows, policy)
    kept = {event.event_id: event for event in validation.events}
    assert {i: check_row(raw, policy) for i, raw in ledger.items()} == kept
    assert sorted(rejected) == sorted(str(r.reason) for r in validation.rejects)
    assert duplicates == validation.replays


def test_a_claim_the_policy_no_longer_reads_holds_nothing() -> None:
    """A copy rejected for its order under an earlier policy, in a currency the active policy
    has no rate for, would fail the row checks now: like such a row in ``validate``, it takes
    no part, and a later copy with other content is admitted."""
    policy = random_policy(random.Random(0))
    placed = {"event_id": "p1", "event_type": "placed", "order_id": "o1", "customer_id": "c1",
              "occurred_at": "2025-01-02T00:00:00Z", "amount": "150", "currency": "USD",
              "channel": "web", "region": "US"}  # fmt: skip
    refund = {**placed, "event_id": "r1", "event_type": "refunded", "amount": "20"}
    orders = {"o1": PlacedOrder("c1", parse_instant(placed["occurred_at"]), "p1")}
    for claim_currency, outcome in (("USD", "conflicting_replay"), ("JPY", None)):
        claim = {**refund, "occurred_at": "2025-01-01T00:00:00Z", "currency": claim_currency}
        later = {**refund, "occurred_at": "2025-01-03T00:00:00Z"}
        (result,) = admit([later], policy, {"p1": placed}, orders, claims={"r1": claim}).results
        assert result.reason == outcome


@pytest.mark.parametrize("seed", range(20))
def test_ledger_reader_gives_the_events_check_row_gives(seed: int) -> None:
    rng = random.Random(seed)
    policy = random_policy(rng)
    other = random_policy(random.Random(seed + 1000))
    reader = {policy.fingerprint: LedgerReader(policy), other.fingerprint: LedgerReader(other)}
    for raw in random_events(rng, customers=5):
        event = check_row(raw, policy)
        if not isinstance(event, OrderEvent):
            continue
        stored = (
            event.event_id,
            str(event.event_type),
            event.order_id,
            event.customer_id,
            event.at_us,
            raw.get("amount"),
            raw.get("currency"),
            raw.get("channel"),
            raw.get("region"),
        )
        for rules in (policy, other):  # also under another policy version
            again = check_row(raw, rules)
            expected = again if isinstance(again, OrderEvent) else None
            assert reader[rules.fingerprint].event(*stored) == expected


def test_typed_values_are_stored_as_text_that_reads_back_the_same() -> None:
    import pandas as pd

    row = {
        "event_id": "e1",
        "event_type": "placed",
        "order_id": "o1",
        "customer_id": "c1",
        "occurred_at": pd.Timestamp("2025-01-02 03:04:05.678901", tz="Europe/Berlin"),
        "amount": 0.1 + 0.2,
        "currency": "USD",
        "channel": float("nan"),
        "region": None,
    }
    raw = canonical_raw(row)
    assert raw["occurred_at"] == "2025-01-02T02:04:05.678901Z"
    assert raw["amount"] == repr(0.1 + 0.2) and raw["channel"] is None
    assert check_row(raw, random_policy(random.Random(0))) == check_row(
        row, random_policy(random.Random(0))
    )


ODD_VALUES = [None, "", " ", "  x ", "PLACED", " Refunded ", "cancelled", "bogus", "usd", " eur ",
              "XXX", "0", "-3", "1e3", " 12.5 ", "nan", "inf", "2025-01-02", "2025-01-02T03:04:05+01:00",
              "2025-13-01", "\tplaced", float("nan"), 12.5, 7, True]


@pytest.mark.parametrize("seed", range(20))
def test_row_checker_gives_what_check_row_gives(seed: int) -> None:
    """The batch path's one-pass check equals ``check_row`` on every row, odd values included."""
    rng = random.Random(seed)
    policy = random_policy(rng)
    rows = [canonical_raw(row) for row in random_events(rng, customers=5)]
    for row in list(rows):  # and each row again with one field replaced by an odd value
        odd = dict(row)
        odd[rng.choice([*sorted(odd), BEYOND_HEADER])] = rng.choice(ODD_VALUES)  # or a CSV row's extra text
        rows.append(odd)
    checker = RowChecker(policy)
    for row in rows:
        assert checker.check(row) == check_row(row, policy)


@pytest.mark.parametrize("text", ["C\x002", "\x00", "C\ud8002"])
def test_text_the_store_cannot_keep_is_rejected_naming_the_field(text: str) -> None:
    """NUL (PostgreSQL text refuses it) or a lone surrogate (no UTF-8) in any field, also
    one the event type ignores: that event alone is rejected, the others are admitted."""
    rng = random.Random(3)
    policy = random_policy(rng)
    rows = [canonical_raw(row) for row in random_events(rng, customers=3)]
    good = RowChecker(policy).check_all(rows)
    for name in sorted(rows[0]):
        bad = [*rows[:1], {**rows[1], name: text}, *rows[2:]]
        checked = RowChecker(policy).check_all(bad)
        reason, detail = checked[1]
        assert (reason, detail.split(" ")[0]) == ("unsupported_character", name)
        assert "which the store cannot keep" in detail and "\x00" not in detail
        assert checked[:1] + checked[2:] == good[:1] + good[2:]
        admission = admit(bad, policy, {}, {})
        assert admission.results[1].status == Status.REJECTED
        assert admission.results[1].reason == "unsupported_character"
