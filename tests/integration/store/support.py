"""Helpers of the tier store tests: simulated streams, time-ordered batches, store snapshots."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from tests.tiers import assert_same_tiers as assert_same_tiers  # re-exported for the store tests
from tier_ml.events import frame_records, parse_instant
from tier_ml.store import service
from tier_ml.store.intake import RawEvent, canonical_raw
from tier_ml.store.unit_of_work import run_in_transaction

END_OF_SIMULATION = parse_instant("2026-01-01T00:00:00Z")


@lru_cache(maxsize=4)
def simulated(customers: int, seed: int = 11) -> tuple[pd.DataFrame, tuple[RawEvent, ...]]:
    """A simulated stream: the events frame (delivery order) and its raw rows in time order."""
    from tier_ml.simulate import SimulationConfig, simulate

    events = simulate(SimulationConfig(customers=customers, seed=seed)).events
    rows = [canonical_raw(row) for row in frame_records(events)]
    rows.sort(key=lambda r: (parse_instant(r["occurred_at"]) or 0, r["event_id"] or ""))
    return events, tuple(rows)


def time_batches(rows: Sequence[RawEvent], size: int) -> Iterator[tuple[int, list[RawEvent]]]:
    """Batches of about ``size`` rows in time order, never splitting an instant, with the
    batch's latest instant (the clock when it is applied)."""
    batch: list[RawEvent] = []
    latest = 0
    for row in rows:
        at = parse_instant(row["occurred_at"]) or 0
        if len(batch) >= size and at > latest:
            yield latest, batch
            batch = []
        batch.append(row)
        latest = max(latest, at)
    if batch:
        yield latest, batch


def stream(
    engine: Engine, rows: Sequence[RawEvent], size: int = 1_000, policy=None
) -> dict[str, int]:
    """Apply rows in time order, sweeping due customers before each batch; rejects by reason."""
    reasons: dict[str, int] = {}
    for now_us, batch in time_batches(rows, size):
        service.sweep(engine, now_us)
        result = service.apply_events(engine, batch, now_us, policy=policy)
        for reason, count in result.rejects_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + count
    return reasons


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything a store holds, without surrogate ids: to compare two stores."""

    def work(uow) -> dict[str, Any]:
        repo = uow.repo
        ledger = repo.ledger_frame().drop(columns=["at_us"])
        states = repo.states_frame()
        audit = repo.audit_frame().drop(columns=["id"])
        outbox = repo.outbox_frame().drop(columns=["id"])
        return {
            "ledger": sorted(map(tuple, ledger.astype(str).to_numpy().tolist())),
            "states": states.sort_values("customer_id").reset_index(drop=True),
            "audit": sorted(map(tuple, audit.astype(str).to_numpy().tolist())),
            "outbox": sorted(map(tuple, outbox.astype(str).to_numpy().tolist())),
            "orders": repo.count("orders"),
            "policies": [(v["version"], v["fingerprint"]) for v in repo.policy_versions()],
        }

    return run_in_transaction(engine, work, read_only=True)
