"""The batch path's fast event aggregates (``features.placements``) equal the SQL definition.

``build_features`` computes the event aggregates from the rules engine's sorted
placements, reduced in numpy; ``features.build.SORTED_PLACEMENTS = False`` makes
it run the portable SQL (``behaviour_aggregates_sql``) instead. Both must give the
same frame on tricky random events, when customer keys collide (the build falls
back to the SQL), and when sums could overflow.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest

import features.build as build
import features.placements as placements
from features import build_features, customer_features
from features.sql import channel_code_sql
from tests.eventgen import random_events, random_policy
from tests.unit.test_features import assert_same_features, by_customer
from tier_ml import parts
from tier_ml.batch import SortedPlacements
from tier_ml.batch import placements as engine_placements
from tier_ml.money import MICROS_PER_DAY, instant_to_micros

CHANNELS = ["web", "WEB", " Pos", "app", "marketplace", "Marketplace", "kiosk", "", None]


def tricky_rows(seed: int, customers: int = 25) -> tuple[list[dict], datetime]:
    """eventgen's rows (ties, refunds, cancels, replays, bad rows) with mixed-case, unknown and missing channels."""
    rng = random.Random(seed)
    rows = random_events(rng, customers=customers, max_orders=14)
    for row in rows:
        if rng.random() < 0.4:
            row["channel"] = rng.choice(CHANNELS)
    # a few more orders at an instant a customer already ordered at, with other values
    placed = [r for r in rows if r.get("event_type") == "placed" and r.get("customer_id")]
    for i, row in enumerate(rng.sample(placed, k=min(len(placed), 8))):
        rows.append({**row, "event_id": f"tie{i}", "order_id": f"tie-{i}", "amount": str(rng.randrange(1, 900))})
    as_of = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(30, 420), hours=rng.choice([0, 7]))
    return rows, as_of


def both_ways(monkeypatch: pytest.MonkeyPatch, events: pd.DataFrame, policy, as_of) -> tuple[pd.DataFrame, pd.DataFrame]:
    fast = build_features(events, policy, as_of)
    monkeypatch.setattr(build, "SORTED_PLACEMENTS", False)
    definition = build_features(events, policy, as_of)
    monkeypatch.setattr(build, "SORTED_PLACEMENTS", True)
    return fast, definition


@pytest.mark.parametrize("seed", range(10))
def test_sorted_placements_equal_the_sql_definition(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rows, as_of = tricky_rows(seed)
    policy = random_policy(random.Random(seed))
    fast, definition = both_ways(monkeypatch, pd.DataFrame(rows), policy, as_of)
    assert len(fast) > 0
    assert_same_features(fast, definition)


def test_sorted_placements_equal_the_single_customer_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, as_of = tricky_rows(42, customers=12)
    policy = random_policy(random.Random(42))
    batch = build_features(pd.DataFrame(rows), policy, as_of)
    grouped = by_customer(rows, policy, instant_to_micros(as_of))
    for customer in batch["customer_id"]:
        expected = batch[batch["customer_id"] == customer]
        assert_same_features(expected, customer_features(grouped[customer], policy, as_of))
        assert_same_features(expected, customer_features(grouped[customer], policy, as_of, engine="sql"))


@pytest.mark.parametrize(("threads", "part_rows"), [(1, 5), (3, 1_000), (3, 7), (7, 1)])
def test_runs_reduced_in_parts_equal_one_part(monkeypatch: pytest.MonkeyPatch, threads: int, part_rows: int) -> None:
    """The runs are reduced in parts of whole customers on threads; any parts give one answer."""
    rows, as_of = tricky_rows(11)
    policy = random_policy(random.Random(11))
    monkeypatch.setattr(parts, "THREADS", 1)
    monkeypatch.setattr(parts, "PART_ROWS", 10**9)
    one = build_features(pd.DataFrame(rows), policy, as_of)
    monkeypatch.setattr(parts, "THREADS", threads)
    monkeypatch.setattr(parts, "PART_ROWS", part_rows)
    shared = build_features(pd.DataFrame(rows), policy, as_of)
    pd.testing.assert_frame_equal(shared, one)
    monkeypatch.setattr(build, "SORTED_PLACEMENTS", False)
    assert_same_features(shared, build_features(pd.DataFrame(rows), policy, as_of))


def test_a_customer_key_collision_falls_back_to_the_sql(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, as_of = tricky_rows(7)
    policy = random_policy(random.Random(7))
    expected = build_features(pd.DataFrame(rows), policy, as_of)
    results: list[object] = []
    runs = placements.placement_runs

    def spy(sorted_placements, as_of_us):
        results.append(runs(sorted_placements, as_of_us))
        return results[-1]

    monkeypatch.setattr(build, "placement_runs", spy)
    # ids of one length share a key: the engine sorts by text and hands over no keys
    monkeypatch.setattr(engine_placements, "CUSTOMER_HASH", "hash(length({column}))")
    steps: list[str] = []
    collided = build_features(pd.DataFrame(rows), policy, as_of, on_progress=steps.append)
    assert results == [None]  # the collision was seen, and the SQL run takes no runs
    assert_same_features(collided, expected)
    assert steps[-1].endswith("done")


def test_runs_that_are_not_the_engines_customers_fall_back_to_the_sql(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, as_of = tricky_rows(8)
    policy = random_policy(random.Random(8))
    expected = build_features(pd.DataFrame(rows), policy, as_of)
    checks: list[bool] = []

    def mismatch(con, runs, customers):
        checks.append(False)
        return False

    monkeypatch.setattr(build, "customers_match", mismatch)
    assert_same_features(build_features(pd.DataFrame(rows), policy, as_of), expected)
    assert checks == [False]


def _channel_codes(channels: list[str | None]) -> np.ndarray:
    """``channel_code_sql`` of each channel, as the engine sorts it along."""
    frame = pd.DataFrame({"position": range(len(channels)), "channel": channels})  # noqa: F841
    codes = duckdb.sql(f"SELECT {channel_code_sql('channel')} FROM frame ORDER BY position").fetchall()
    return np.array([code for (code,) in codes], dtype=np.int8)


def _sorted(keys: list[int], runs: list[list[tuple[int, int, str | None]]]) -> SortedPlacements:
    """Placements as the engine hands them over: per customer key, (at, value, channel) in time order."""
    rows = [row for run in runs for row in run]
    starts = np.cumsum([0, *(len(run) for run in runs[:-1])]).astype(np.int64) if runs else np.zeros(0, np.int64)
    columns = {
        "placed_at_us": np.array([at for at, _, _ in rows], dtype=np.int64),
        "value_us": np.array([value for _, value, _ in rows], dtype=np.int64),
        "channel_code": _channel_codes([channel for _, _, channel in rows]) if rows else np.zeros(0, np.int8),
    }
    return SortedPlacements(columns, starts, np.array(keys, dtype=np.uint64))


def test_placement_runs_by_hand() -> None:
    day = MICROS_PER_DAY
    t = 1_000 * day
    got = placements.placement_runs(_sorted([11, 22], [
        [
            (t - 100 * day, 5_000_000, "web"),
            (t - 40 * day, 7_000_000, "POS"),
            (t - 10 * day, 9_000_000, None),  # tied with the next order (event_id order): the larger is the last
            (t - 10 * day, 2_000_000, "kiosk"),
        ],
        [(t - 500 * day, 3_000_000, "app")],
    ]), t)
    runs = got.to_pandas().set_index("k")
    a, b = runs.loc[11], runs.loc[22]
    assert (a["n_orders"], a["recency_us"], a["tenure_us"]) == (4, 10 * day, 100 * day)
    assert (a["gross_us"], a["max_value_us"], a["last_value_us"]) == (23_000_000, 9_000_000, 9_000_000)
    assert a["last_gap_us"] == 0
    assert a["gap_std_days"] == pytest.approx(np.std([60.0, 30.0, 0.0], ddof=1))
    assert [a[f"orders_{n}"] for n in (30, 90, 180, 365)] == [2, 3, 4, 4]
    assert [a[f"spend_{n}_us"] for n in (30, 90, 180, 365)] == [11_000_000, 18_000_000, 23_000_000, 23_000_000]
    assert (a["orders_prior_90"], a["spend_prior_90_us"]) == (1, 5_000_000)
    assert (a["channel_web_orders"], a["channel_pos_orders"], a["channel_other_orders"]) == (1, 1, 2)
    assert a["named_other_orders"] == 1
    assert b["n_orders"] == 1 and pd.isna(b["last_gap_us"]) and pd.isna(b["gap_std_days"])
    assert b["orders_365"] == 0 and b["channel_app_orders"] == 1


def test_sums_that_could_overflow_go_to_the_sql() -> None:
    huge = np.iinfo(np.int64).max // 2
    assert placements.placement_runs(_sorted([1, 2], [[(1, huge, "web"), (2, huge, "web")], [(3, 5, "web")]]), 10) is None


def test_placements_sorted_by_text_go_to_the_sql() -> None:
    sorted_by_text = _sorted([1], [[(1, 5, "web")]])
    assert placements.placement_runs(SortedPlacements(sorted_by_text.columns, sorted_by_text.starts, None), 10) is None


def test_no_placements_give_no_runs() -> None:
    runs = placements.placement_runs(_sorted([], []), 10)
    assert runs is not None and runs.num_rows == 0
    assert runs.column_names == ["k", *placements.PLACEMENT_COLUMNS]
