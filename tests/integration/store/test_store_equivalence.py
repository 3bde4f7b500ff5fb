"""The store agrees with ``classify``: simulated events streamed in time order through
``apply`` and sweeps export exactly the tiers the batch path gives at the same instant."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from tests.eventgen import as_of_instants, random_events, random_policy
from tests.integration.store.support import (
    END_OF_SIMULATION,
    assert_same_tiers,
    simulated,
    stream,
    time_batches,
)
from tier_ml.batch import classify_frame
from tier_ml.events import check_row, parse_instant
from tier_ml.events import content as events_content
from tier_ml.money import instant_to_micros
from tier_ml.policy import load_policy
from tier_ml.rules import classify
from tier_ml.store import service
from tier_ml.store.intake import canonical_raw


def _rejects_by_reason(rejects: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in rejects["reason"].value_counts().sort_index().items()}


def _stream_and_compare(url: str, customers: int) -> None:
    policy = load_policy(None)
    events, rows = simulated(customers)
    engine = service.open_store(url)
    try:
        half = len(rows) // 2
        first, second = rows[:half], rows[half:]
        reasons = stream(engine, first, policy=policy)
        middle = max(now for now, _ in time_batches(first, 1_000))
        # an instant inside the stream: every event at or before it has been applied
        expected_mid, _ = classify_frame(policy, pd.DataFrame(list(first)), middle)
        assert_same_tiers(service.export_tiers(engine, middle), expected_mid)

        for reason, count in stream(engine, second, policy=policy).items():
            reasons[reason] = reasons.get(reason, 0) + count
        service.sweep(engine, END_OF_SIMULATION)
        tiers = service.export_tiers(engine, END_OF_SIMULATION)
        expected, rejects = classify_frame(policy, events, END_OF_SIMULATION)
        assert len(tiers) == len(expected) > 0.9 * customers
        assert_same_tiers(tiers, expected)
        assert dict(sorted(reasons.items())) == _rejects_by_reason(rejects)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_ten_thousand_customers_on_sqlite(tmp_path) -> None:
    _stream_and_compare(f"sqlite:///{tmp_path / 'store.sqlite'}", 10_000)


@pytest.mark.postgres
def test_fifteen_hundred_customers_on_postgresql(postgres_schema_url) -> None:
    _stream_and_compare(postgres_schema_url(), 1_500)


@pytest.mark.parametrize("seed", range(40))
def test_tricky_events_streamed_in_small_batches_agree_with_the_rules(tmp_path, seed: int) -> None:
    """Generated edge cases (ties, replays, late refunds, windows) applied a few at a time.

    Small batches make the store resume each customer's replay from the checkpoint of
    its last evaluation, often taken at the customer's first instant; the swept store
    must then export exactly the reference path's tiers and rejects.
    """
    rng = random.Random(seed)
    policy = random_policy(rng)
    rows = random_events(rng, customers=5)
    as_of = instant_to_micros(as_of_instants(rng, 1)[0])
    raws = [canonical_raw(row) for row in rows]
    visible = sorted(
        (r for r in raws if (parse_instant(r["occurred_at"]) or 0) <= as_of),
        key=lambda r: (parse_instant(r["occurred_at"]) or 0, r["event_id"] or ""),
    )
    engine = service.open_store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    try:
        reasons = stream(engine, visible, size=1 + seed % 3, policy=policy)
        service.sweep(engine, as_of)
        tiers = service.export_tiers(engine, as_of)
    finally:
        engine.dispose()
    reference = classify(policy, rows, as_of)
    assert_same_tiers(tiers, reference.frame())
    want: dict[str, int] = {}
    for reject in reference.rejects:
        want[str(reject.reason)] = want.get(str(reject.reason), 0) + 1
    assert dict(sorted(reasons.items())) == dict(sorted(want.items()))


@pytest.mark.parametrize("seed", range(20))
def test_events_arriving_up_to_weeks_late_give_the_tiers_of_the_rules(tmp_path, seed: int) -> None:
    """Deliveries out of time order: the store replays from its ledger, so the tiers at the
    end are those of the rules on the same events.

    Kept in order (what docs/store.md says the store cannot undo): an order's events, an
    ``event_id``'s copies (smallest content first), and a placement before the refunds of
    its instant. Everything else arrives up to 20 days late.
    """
    rng = random.Random(500 + seed)
    policy = random_policy(rng)
    rows = random_events(rng, customers=5)
    as_of = instant_to_micros(as_of_instants(rng, 1)[0])

    def at(raw) -> int:
        return parse_instant(raw["occurred_at"]) or 0

    def content(raw) -> tuple:
        checked = check_row(raw, policy)
        return () if isinstance(checked, tuple) else events_content(checked)

    raws = [canonical_raw(row) for row in rows]
    visible = sorted(
        (r for r in raws if at(r) <= as_of),
        key=lambda r: (at(r), (r["event_type"] or "").strip().lower() != "placed", r["event_id"] or "", content(r)),
    )
    arrival: dict[int, tuple[int, int]] = {}
    latest: dict[str, int] = {}  # per order and per event id: the latest arrival so far
    for i, raw in enumerate(visible):
        keys = ("order " + (raw["order_id"] or "").strip(), "event " + (raw["event_id"] or "").strip())
        when = max([at(raw) + rng.randint(0, 20) * 86_400_000_000, *(latest.get(k, 0) for k in keys)])
        latest.update(dict.fromkeys(keys, when))
        arrival[i] = (when, i)
    delivered = [visible[i] for i in sorted(arrival, key=arrival.__getitem__)]
    engine = service.open_store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    try:
        clock = -(2**62)
        for start in range(0, len(delivered), 2):
            batch = delivered[start:start + 2]
            clock = max(clock, *(at(r) for r in batch))
            service.sweep(engine, clock)
            service.apply_events(engine, batch, clock, policy=policy)
        service.sweep(engine, as_of)
        tiers = service.export_tiers(engine, as_of)
    finally:
        engine.dispose()
    assert_same_tiers(tiers, classify(policy, rows, as_of).frame())
