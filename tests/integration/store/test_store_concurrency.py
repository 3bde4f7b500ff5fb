"""Concurrency: writers ingesting overlapping batches for the same customers at the same time
end in the same state as one writer.

Each writer delivers the whole stream in time order but cut into batches of
its own size, so the writers' batches overlap and race on the same customers,
events and orders (the store's answer to a refund must not depend on which
writer delivered the order).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from tests.integration.store.support import END_OF_SIMULATION, simulated, snapshot
from tier_ml.events import parse_instant
from tier_ml.store import service

BATCH_SIZES = (97, 120, 151)


def _batches(rows, size: int) -> list[list[dict]]:
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


def _apply(engine, batch: list[dict]) -> int:
    """Apply a batch at its own clock (its latest event), as a live writer would."""
    now = max(parse_instant(row["occurred_at"]) or 0 for row in batch)
    return service.apply_events(engine, batch, now).counts["accepted"]


def test_concurrent_writers_equal_one_writer(new_store_url) -> None:
    _, rows = simulated(150)
    rows = list(rows)
    url = new_store_url()
    concurrent_engine = service.open_store(url)
    single_engine = service.open_store(new_store_url())
    try:
        for batch in _batches(rows, 100):
            _apply(single_engine, batch)

        def writer(size: int) -> int:
            engine = service.open_store(url)  # its own connections and ledger cache
            try:
                return sum(_apply(engine, batch) for batch in _batches(rows, size))
            finally:
                engine.dispose()

        with ThreadPoolExecutor(len(BATCH_SIZES)) as pool:
            accepted = list(pool.map(writer, BATCH_SIZES))
        for engine in (concurrent_engine, single_engine):
            service.sweep(engine, END_OF_SIMULATION)

        got, want = snapshot(concurrent_engine), snapshot(single_engine)
        assert sum(accepted) == len(want["ledger"])  # each event accepted by exactly one writer
        assert got["ledger"] == want["ledger"]
        assert got["orders"] == want["orders"]
        columns = [c for c in want["states"].columns if c != "evaluated_at_us"]
        pd.testing.assert_frame_equal(got["states"][columns], want["states"][columns])
        pd.testing.assert_frame_equal(
            service.export_tiers(concurrent_engine, END_OF_SIMULATION),
            service.export_tiers(single_engine, END_OF_SIMULATION),
        )
    finally:
        concurrent_engine.dispose()
        single_engine.dispose()
