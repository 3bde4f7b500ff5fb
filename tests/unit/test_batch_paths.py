"""The batch path's short cuts give the answer of its general path.

The batch path takes three short cuts for speed: customers whose eligible tier can
never fall skip the timeline replay (``replay_steady_customers``), customers are
sorted by a 64-bit hash of their id (with a fallback to their text when two ids
share a hash), and placements at one instant are put in ``event_id`` order after
the sort. Repeated ids are searched by a 32-bit hash, and the
replay runs in parts of whole customers on several threads. Each is checked
against the general path here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from tests.eventgen import as_of_instants, random_events, random_policy
from tests.tiers import assert_same_tiers
from tier_ml import batch, parts
from tier_ml.batch import (
    classify_frame,
    classify_to_files,
    pipeline,
    placements,
    validation,
)
from tier_ml.batch.source import raw_types
from tier_ml.events import parse_instant, read_events
from tier_ml.money import instant_to_micros
from tier_ml.policy import Policy, parse_policy
from tier_ml.replay_kernel import replay_customers, replay_steady_customers
from tier_ml.rules import classify

DAY_US = 86_400 * 1_000_000


def _steady_inputs(seed: int) -> dict:
    """Random placements of customers with one region each and no late steps."""
    rng = np.random.default_rng(seed)
    customers = int(rng.integers(1, 40))
    per_customer = rng.integers(1, 12, customers)
    ckey = np.repeat(np.arange(customers, dtype=np.int64) * 3, per_customer)  # sparse keys
    count = len(ckey)
    placed_at = np.zeros(count, dtype=np.int64)
    start = 0
    for n in per_customer:  # sorted per customer, with ties
        days = np.sort(rng.integers(0, 60, n))
        placed_at[start:start + n] = days * DAY_US // int(rng.choice([1, 2]))
        start += n
    counted = rng.choice([0, 50, 120, 300, 700], count) * 1_000_000
    region = np.repeat(rng.integers(0, 2, customers), per_customer).astype(np.int32)
    thresholds = np.array([[0, 300, 1000], [0, 250, 600]], dtype=np.int64) * 1_000_000
    min_orders = np.array([0, 0, int(rng.choice([0, 2, 3]))], dtype=np.int64)
    buffer_us = int(rng.choice([0, 1, 7])) * DAY_US
    as_of_us = int(rng.integers(0, 80)) * DAY_US
    keep = placed_at <= as_of_us
    return {
        "ckey": ckey[keep], "placed_at": placed_at[keep], "counted": counted[keep], "region": region[keep],
        "thresholds": thresholds, "min_orders": min_orders, "buffer_us": buffer_us, "as_of_us": as_of_us,
    }


@pytest.mark.parametrize("seed", range(60))
def test_steady_replay_equals_the_timeline_replay(seed: int) -> None:
    data = _steady_inputs(seed)
    ckey, placed_at, counted, region = data["ckey"], data["placed_at"], data["counted"], data["region"]
    if not len(ckey):
        return
    matures = placed_at + data["buffer_us"]
    step = (counted > 0) & (matures <= data["as_of_us"])
    n, m = len(ckey), int(step.sum())
    rows = {
        "ckey": np.concatenate([ckey, ckey[step]]),
        "at": np.concatenate([placed_at, matures[step]]),
        "spend": np.concatenate([np.zeros(n, np.int64), counted[step]]),
        "orders": np.concatenate([np.zeros(n, np.int32), np.ones(m, np.int32)]),
        "placed": np.concatenate([np.ones(n, bool), np.zeros(m, bool)]),
        "region": np.concatenate([region, np.zeros(m, np.int32)]),
    }
    order = np.lexsort((rows["at"], rows["ckey"]))  # stable: placements first within an instant
    rows = {name: values[order] for name, values in rows.items()}
    common = {"thresholds": data["thresholds"], "min_orders": data["min_orders"], "as_of_us": data["as_of_us"]}
    want = replay_customers(
        rows["ckey"], rows["at"], rows["spend"], rows["orders"], rows["placed"], rows["region"],
        grace_us=30 * DAY_US, **common,
    )
    got = replay_steady_customers(ckey, placed_at, counted, region, buffer_us=data["buffer_us"], **common)
    for name in want.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def _random_case(seed: int, customers: int) -> tuple[Policy, pd.DataFrame, int]:
    """A random policy, eventgen's rows for ``customers`` customers and an instant to classify at."""
    rng = random.Random(seed)
    policy = random_policy(rng)
    rows = pd.DataFrame(random_events(rng, customers=customers))
    return policy, rows, instant_to_micros(as_of_instants(rng, 1)[0])


@pytest.mark.parametrize("seed", range(12))
def test_colliding_customer_hashes_fall_back_to_text(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    policy, rows, as_of_us = _random_case(1000 + seed, customers=6)
    want_tiers, want_rejects = classify_frame(policy, rows, as_of_us)
    called = []
    by_text = placements._sorted_placements_by_text

    def spy(*args: object) -> object:
        called.append(True)
        return by_text(*args)

    monkeypatch.setattr(placements, "CUSTOMER_HASH", "CAST(42 AS UBIGINT)")  # every customer collides
    monkeypatch.setattr(placements, "_sorted_placements_by_text", spy)
    got_tiers, got_rejects = classify_frame(policy, rows, as_of_us)
    assert called or want_tiers["customer_id"].nunique() < 2
    pd.testing.assert_frame_equal(got_tiers, want_tiers)
    pd.testing.assert_frame_equal(got_rejects, want_rejects)


@pytest.mark.parametrize("seed", range(12))
def test_shared_id_hashes_only_add_candidates(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated ids are searched by a 32-bit hash; when every id shares one, the answer is the same."""
    policy, rows, as_of_us = _random_case(2000 + seed, customers=6)
    want_tiers, want_rejects = classify_frame(policy, rows, as_of_us)
    monkeypatch.setattr(validation, "ID_HASH", "CAST(7 AS UINTEGER)")  # every event and order a candidate
    got_tiers, got_rejects = classify_frame(policy, rows, as_of_us)
    pd.testing.assert_frame_equal(got_tiers, want_tiers)
    pd.testing.assert_frame_equal(got_rejects, want_rejects)
    reference = classify(policy, rows.to_dict("records"), as_of_us)
    assert_same_tiers(got_tiers, reference.frame())
    assert sorted(got_rejects["reason"]) == sorted(str(r.reason) for r in reference.rejects)


_PADDINGS = (" {}", "{} ", "  {}  ", "\t{}", "{}\t", "", " ", "\u00a0{}")


@pytest.mark.parametrize("seed", range(12))
def test_padded_and_blank_text_reads_as_the_reference_reads_it(seed: int) -> None:
    """Spaces around any field are trimmed, blank fields are missing, other whitespace is kept.

    The batch path only trims texts that its cheap tests (``c < '!'``, ``LIKE '% '``)
    let through; this pads random cells of every field and compares with the
    reference path, tiers and reject details both.
    """
    policy, rows, as_of_us = _random_case(4000 + seed, customers=6)
    rng = random.Random(seed)
    rows = rows.astype(object)
    for _ in range(len(rows) // 2):
        at, column = rng.randrange(len(rows)), rng.choice(list(rows.columns))
        value = rows.at[at, column]
        if value is not None and not pd.isna(value):
            rows.at[at, column] = rng.choice(_PADDINGS).format(value)
    reference = classify(policy, rows.to_dict("records"), as_of_us)
    got_tiers, got_rejects = classify_frame(policy, rows, as_of_us)
    assert_same_tiers(got_tiers, reference.frame())
    expected = sorted((r.row, str(r.reason), r.detail) for r in reference.rejects)
    got = zip(got_rejects["row"].astype(int), got_rejects["reason"], got_rejects["detail"], strict=True)
    assert sorted(got) == expected


_EDGE_TIMES = (
    "0000-01-01", "1969-12-31T23:59:59.999999Z", "2024-02-29", "2023-02-29",
    "2024-04-31", "2024-13-01", "2024-01-00", "2024-01-01T00:00:00+14:00", "2024-01-01T00:00:00-12:00",
    "2024-01-01T00:00:00+23:59", "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00+99",
    "2024-01-01T00:00:00+0560", "2024-01-01T00:00:00.0000001Z", "2024-01-01 00:00", "2024-01-01t00:00:00Z",
)


def _rejected_times_on_both_paths(times: Sequence[str]) -> list[str]:
    """Classify one placement per time on both paths; assert they agree; the times rejected."""
    policy = parse_policy({"base_currency": "USD", "tiers": [{"name": "Base"}]})
    rows = pd.DataFrame([
        {"event_id": f"e{i}", "event_type": "placed", "order_id": f"o{i}", "customer_id": f"c{i}",
         "occurred_at": at, "amount": "10", "currency": "USD"}
        for i, at in enumerate(times)
    ])
    as_of_us = parse_instant("2100-01-01")
    reference = classify(policy, rows.to_dict("records"), as_of_us)
    tiers, rejects = classify_frame(policy, rows, as_of_us)
    assert_same_tiers(tiers, reference.frame())
    rejected = sorted((r.row, str(r.reason)) for r in reference.rejects)
    assert sorted(zip(rejects["row"].astype(int), rejects["reason"], strict=True)) == rejected
    return [times[row - 1] for row, _ in rejected]


def test_edge_times_are_read_alike_on_both_paths() -> None:
    """Year 0, offsets of 24 hours or more and impossible dates are unparseable on both paths."""
    unparseable = set(_rejected_times_on_both_paths(_EDGE_TIMES))
    assert {"0000-01-01", "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00+99", "2023-02-29"} <= unparseable
    assert "2024-01-01T00:00:00+23:59" not in unparseable


#: ISO 8601's basic format and decimal comma, each with the extended text it means (None: a reject).
_OTHER_ISO_FORMS = {
    "20250101T103000Z": "2025-01-01T10:30:00Z",
    "20250101": "2025-01-01",
    "20250101T1030": "2025-01-01T10:30",
    "20250101 103000.5+0200": "2025-01-01 10:30:00.5+02:00",
    "20250101T103000,25-0130": "2025-01-01T10:30:00.25-01:30",
    "2025-01-01T10:30:00,123456789Z": "2025-01-01T10:30:00.123456Z",
    "2025-01-01T103000": "2025-01-01T10:30:00",  # mixed forms, as Python's fromisoformat reads them
    "2025-01-01t10:30:00z": "2025-01-01T10:30:00Z",  # RFC 3339's lower case
    "20250101t103000": "2025-01-01T10:30:00",
    "20240229": "2024-02-29",
    "20230229": None,
    "20251301": None,
    "2025010": None,
    "202501011": None,
    "20250101T10": None,
    "20250101Z": None,
    "00000101": None,
    "1735689600": None,
}


def test_iso_basic_format_and_decimal_comma_are_read_alike_on_both_paths() -> None:
    """``20250101T103000Z`` and ``10:30:00,5`` are ISO 8601 too: both paths read them as the
    extended text they stand for, and reject the same malformed ones."""
    assert {text: parse_instant(text) for text in _OTHER_ISO_FORMS} == {
        text: None if same is None else parse_instant(same) for text, same in _OTHER_ISO_FORMS.items()
    }
    assert set(_rejected_times_on_both_paths(list(_OTHER_ISO_FORMS))) == {
        text for text, same in _OTHER_ISO_FORMS.items() if same is None
    }


def test_amounts_too_large_for_micro_units_are_rejects_on_both_paths(tmp_path) -> None:
    """From 10^12 in the base currency (after fx) an amount is a reject, not an overflow."""
    policy = parse_policy({"base_currency": "USD", "fx_rates": {"EUR": 1.1}, "tiers": [{"name": "Base"}]})
    amounts = [("999999999999.99", "USD"), ("1e12", "USD"), ("1e15", "USD"), ("1e300", "USD"),
               ("909090909090", "EUR"), ("909090909091", "EUR")]
    rows = pd.DataFrame([
        {"event_id": f"e{i}", "event_type": "placed", "order_id": f"o{i}", "customer_id": f"c{i}",
         "occurred_at": "2025-01-01", "amount": amount, "currency": currency}
        for i, (amount, currency) in enumerate(amounts)
    ])
    as_of_us = parse_instant("2025-06-01")
    for source in (rows, rows.astype({"amount": float})):  # text, and numbers (as Parquet keeps them)
        path = tmp_path / "events.parquet"
        source.to_parquet(path)
        reference = classify(policy, read_events(path).to_dict("records"), as_of_us)
        want = sorted((r.row, str(r.reason), r.detail) for r in reference.rejects)
        assert [row for row, *_ in want] == [2, 3, 4, 6]
        assert all(reason == "unparseable_amount" and "too large" in detail for _, reason, detail in want)
        classify_to_files(policy, path, as_of_us, tmp_path / "tiers.csv", tmp_path / "rejects.csv")
        got = pd.read_csv(tmp_path / "rejects.csv", dtype=str)
        assert sorted(zip(got["row"].astype(int), got["reason"], got["detail"], strict=True)) == want
        tiers = pd.read_csv(tmp_path / "tiers.csv", dtype={"customer_id": str}).fillna({"region": ""})
        assert_same_tiers(tiers, reference.frame())


def test_bad_rows_after_as_of_are_invisible_on_both_paths() -> None:
    """A bad row dated after ``as_of`` is not a reject; a row without a readable time is."""
    policy = parse_policy({"base_currency": "USD", "tiers": [{"name": "Base"}, {"name": "Gold", "min_spend": 100}]})
    good = {"event_type": "placed", "order_id": "o1", "customer_id": "c1", "occurred_at": "2025-01-01T00:00:00Z",
            "amount": "150", "currency": "USD"}
    rows = pd.DataFrame([
        {**good, "event_id": "e1"},
        {**good, "event_id": None, "order_id": "o2", "occurred_at": "2025-03-01"},  # after as_of
        {**good, "event_id": "e3", "order_id": "o3", "currency": "XXX", "occurred_at": "2025-03-01"},  # after
        {**good, "event_id": "e4", "order_id": "o4", "occurred_at": "yesterday"},
        {**good, "event_id": None, "order_id": "o5"},
    ])
    as_of_us = parse_instant("2025-02-01T00:00:00Z")
    want = [(4, "unparseable_time"), (5, "missing_field")]
    reference = classify(policy, rows.to_dict("records"), as_of_us)
    assert sorted((r.row, str(r.reason)) for r in reference.rejects) == want
    _, rejects = classify_frame(policy, rows, as_of_us)
    assert sorted(zip(rejects["row"].astype(int), rejects["reason"], strict=True)) == want


@pytest.mark.parametrize("seed", range(12))
def test_kernel_parts_on_threads_give_the_one_part_answer(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay cut into many small parts on three threads equals one part on one thread."""
    policy, rows, as_of_us = _random_case(3000 + seed, customers=12)
    monkeypatch.setattr(parts, "THREADS", 1)
    want_tiers, _ = classify_frame(policy, rows, as_of_us)
    monkeypatch.setattr(parts, "THREADS", 3)
    monkeypatch.setattr(parts, "PART_ROWS", 2)  # parts of two orders: many parts
    got_tiers, _ = classify_frame(policy, rows, as_of_us)
    pd.testing.assert_frame_equal(got_tiers, want_tiers)
    assert_same_tiers(got_tiers, classify(policy, rows.to_dict("records"), as_of_us).frame())


def test_placements_at_one_instant_take_the_region_of_the_largest_event_id() -> None:
    policy = parse_policy({
        "base_currency": "USD", "buffer_days": 0, "downgrade_grace_days": 0,
        "tiers": [{"name": "Base"}, {"name": "Silver", "min_spend": 100}],
        "regions": {"EU": {"Silver": 50}},
    })
    at = "2025-01-01T10:00:00Z"
    rows = [  # "e9" > "e10" as text; customer b's larger id comes first in the file
        {"event_id": "e9", "event_type": "placed", "order_id": "o1", "customer_id": "a", "occurred_at": at,
         "amount": "60", "currency": "USD", "channel": "web", "region": "EU"},
        {"event_id": "e10", "event_type": "placed", "order_id": "o2", "customer_id": "a", "occurred_at": at,
         "amount": "10", "currency": "USD", "channel": "web", "region": "US"},
        {"event_id": "e2", "event_type": "placed", "order_id": "o3", "customer_id": "b", "occurred_at": at,
         "amount": "60", "currency": "USD", "channel": "web", "region": "US"},
        {"event_id": "e1", "event_type": "placed", "order_id": "o4", "customer_id": "b", "occurred_at": at,
         "amount": "10", "currency": "USD", "channel": "web", "region": "EU"},
    ]
    as_of_us = instant_to_micros(pd.Timestamp("2025-02-01T00:00:00Z").to_pydatetime())
    tiers, _ = classify_frame(policy, pd.DataFrame(rows), as_of_us)
    assert_same_tiers(tiers, classify(policy, rows, as_of_us).frame())
    assert dict(zip(tiers["customer_id"], tiers["region"], strict=True)) == {"a": "EU", "b": "US"}


def _typed(rows: pd.DataFrame, time_type: str, amount_type: str) -> pd.DataFrame:
    """The rows as a Parquet file would type them: instants and amounts as values, not text."""
    typed = rows.copy()
    instants = pd.to_datetime(typed["occurred_at"], utc=True, errors="coerce", format="ISO8601")
    instants = instants.astype("datetime64[us, UTC]")  # pandas' default (ns) is another Parquet type
    if time_type == "timestamp":
        typed["occurred_at"] = instants.dt.tz_localize(None)
    elif time_type == "date":
        typed["occurred_at"] = instants.dt.date
    else:
        typed["occurred_at"] = instants
    amounts = pd.to_numeric(typed["amount"], errors="coerce")
    typed["amount"] = amounts.round(2).map(lambda v: None if pd.isna(v) else Decimal(f"{v:.2f}")) \
        if amount_type == "decimal" else amounts
    return typed


@pytest.mark.parametrize(("seed", "time_type", "amount_type"), [
    (seed, time_type, amount_type)
    for seed, (time_type, amount_type) in enumerate(
        [("timestamptz", "double"), ("timestamp", "double"), ("date", "decimal"), ("timestamptz", "decimal")] * 3
    )
])
def test_typed_sources_write_rejects_without_a_second_read(
    seed: int, time_type: str, amount_type: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rejects rebuilt from ``checked`` equal the rejects read again from the source."""
    rng = random.Random(2000 + seed)
    policy = random_policy(rng)
    rows = _typed(pd.DataFrame(random_events(rng, customers=8)), time_type, amount_type)
    rows.loc[rows.sample(frac=0.1, random_state=seed).index, "event_type"] = "PLACED"
    rows.loc[rows.sample(frac=0.05, random_state=seed + 1).index, "amount"] = None
    path = tmp_path / "events.parquet"
    rows.to_parquet(path)
    as_of_us = instant_to_micros(as_of_instants(rng, 1)[0])
    con = batch.connect()
    batch.register_source(con, path)
    assert batch.keeps_raw_fields(raw_types(con))
    con.close()
    kept_tiers, kept_rejects = classify_frame(policy, path, as_of_us)
    monkeypatch.setattr(pipeline, "keeps_raw_fields", lambda types: False)
    read_tiers, read_rejects = classify_frame(policy, path, as_of_us)
    assert len(read_rejects) > 0
    pd.testing.assert_frame_equal(kept_rejects, read_rejects)
    pd.testing.assert_frame_equal(kept_tiers, read_tiers)


def test_nanosecond_timestamps_classify_like_microsecond_ones(tmp_path) -> None:
    """pandas writes ``datetime64[ns]`` columns as nanosecond Parquet timestamps."""
    rng = random.Random(77)
    policy = random_policy(rng)
    rows = pd.DataFrame(random_events(rng, customers=8))
    as_of_us = instant_to_micros(as_of_instants(rng, 1)[0])
    results = []
    for unit in ("ns", "us"):
        typed = rows.copy()
        typed["occurred_at"] = pd.to_datetime(typed["occurred_at"], utc=True, errors="coerce", format="ISO8601")
        typed["occurred_at"] = typed["occurred_at"].astype(f"datetime64[{unit}, UTC]")
        path = tmp_path / f"events_{unit}.parquet"
        typed.to_parquet(path)
        results.append(classify_frame(policy, path, as_of_us)[0])
    assert len(results[0]) > 0
    pd.testing.assert_frame_equal(results[0], results[1])
