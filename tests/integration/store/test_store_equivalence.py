"""The store agrees with ``classify``: simulated events streamed in time order through
``apply`` and sweeps export exactly the tiers the batch path gives at the same instant."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.integration.store.support import (
    END_OF_SIMULATION,
    assert_same_tiers,
    simulated,
    stream,
    time_batches,
)
from tier_ml.batch import classify_frame
from tier_ml.policy import load_policy
from tier_ml.store import service


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
