"""The batch path's fast event aggregates (``features.placements``) equal the SQL definition.

``build_features`` computes the event aggregates from placements sorted once and
reduced in numpy; ``features.build.SORTED_PLACEMENTS = False`` makes it run the
portable SQL (``behaviour_aggregates_sql``) instead. Both must give the same
frame on tricky random events, when customer keys collide (the build falls back
to the SQL), and when sums could overflow.
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
from tests.eventgen import random_events, random_policy
from tests.unit.test_features import assert_same_features, by_customer
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


@pytest.mark.parametrize("threads", [1, 3, 7])
def test_runs_reduced_in_shares_equal_one_share(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """The runs are reduced in shares of whole customers on threads; any number of shares gives one answer."""
    rows, as_of = tricky_rows(11)
    policy = random_policy(random.Random(11))
    monkeypatch.setattr(placements, "REDUCE_THREADS", 1)
    one = build_features(pd.DataFrame(rows), policy, as_of)
    monkeypatch.setattr(placements, "REDUCE_THREADS", threads)
    shared = build_features(pd.DataFrame(rows), policy, as_of)
    pd.testing.assert_frame_equal(shared, one)
    monkeypatch.setattr(build, "SORTED_PLACEMENTS", False)
    assert_same_features(shared, build_features(pd.DataFrame(rows), policy, as_of))


def test_a_customer_key_collision_falls_back_to_the_sql(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, as_of = tricky_rows(7)
    policy = random_policy(random.Random(7))
    expected = build_features(pd.DataFrame(rows), policy, as_of)
    checks: list[bool] = []

    def spy(con, runs, customers):
        checks.append(placements.customers_match(con, runs, customers))
        return checks[-1]

    monkeypatch.setattr(build, "customers_match", spy)
    # ids of one length share a key: c0..c9 are one "customer", c10..c24 another
    monkeypatch.setattr(placements, "CUSTOMER_KEY", "hash(length({column}))")
    steps: list[str] = []
    collided = build_features(pd.DataFrame(rows), policy, as_of, on_progress=steps.append)
    assert checks == [False]  # the collision was seen, and the SQL run needs no check
    assert_same_features(collided, expected)
    assert steps[-1].endswith("done")


def _placed_orders(rows: list[tuple[str, int, int, str | None]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    frame = pd.DataFrame(rows, columns=["customer_id", "at_us", "amount_us", "channel"])  # noqa: F841
    con.execute("CREATE TABLE placed_orders AS SELECT * FROM frame")
    return con


def test_placement_aggregates_by_hand() -> None:
    day = MICROS_PER_DAY
    t = 1_000 * day
    con = _placed_orders([
        ("a", t - 100 * day, 5_000_000, "web"),
        ("a", t - 40 * day, 7_000_000, "POS"),
        ("a", t - 10 * day, 2_000_000, "kiosk"),
        ("a", t - 10 * day, 9_000_000, None),  # tied with the order before: gap 0, the larger value is last
        ("a", t + 1, 1_000_000, "web"),  # after t: ignored
        ("b", t - 500 * day, 3_000_000, "app"),
    ])
    runs = placements.placement_aggregates(con, t).to_pandas()
    runs = runs.set_index(runs["k"].map({int(con.sql(f"SELECT hash('{c}')").fetchall()[0][0]): c for c in "ab"}))
    a, b = runs.loc["a"], runs.loc["b"]
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
    con = _placed_orders([("a", 1, huge, "web"), ("a", 2, huge, "web"), ("b", 3, 5, "web")])
    assert placements.placement_aggregates(con, 10) is None


def test_no_placements_give_no_runs() -> None:
    con = _placed_orders([("a", 100, 5, "web")])
    runs = placements.placement_aggregates(con, 10)
    assert runs is not None and runs.num_rows == 0
    assert runs.column_names == ["k", *placements.PLACEMENT_COLUMNS]
