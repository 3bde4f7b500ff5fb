"""Features: hand-checked values, batch == single customer, tier features == the rules engine,
no leakage, labels from the future window only, the schema check."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from features import (
    CATEGORICAL_COLUMNS,
    FEATURE_COLUMNS,
    FEATURES,
    FeatureSchemaError,
    build_features,
    build_training_set,
    customer_features,
    monthly_cutoffs,
    validate_feature_frame,
)
from features.build import data_end_us, usable_cutoffs
from tests.eventgen import iso, random_events, random_policy
from tier_ml.events import EventType, frame_records, validate
from tier_ml.money import days_to_micros, instant_to_micros
from tier_ml.policy import load_policy, parse_policy
from tier_ml.rules import classify
from tier_ml.simulate import SimulationConfig, simulate

DAY = timedelta(days=1)
T = datetime(2025, 6, 30, tzinfo=UTC)


def assert_same_features(left: pd.DataFrame, right: pd.DataFrame) -> None:
    """Equal feature frames: categoricals and ints exactly, floats to 1e-9 (only std sums doubles)."""
    assert list(left.columns) == list(right.columns)
    assert left.dtypes.astype(str).tolist() == right.dtypes.astype(str).tolist()
    assert left["customer_id"].tolist() == right["customer_id"].tolist()
    for column in left.columns:
        a, b = left[column].reset_index(drop=True), right[column].reset_index(drop=True)
        if pd.api.types.is_float_dtype(a.dtype):
            np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9, atol=1e-12, err_msg=column)
        else:
            assert a.tolist() == b.tolist(), column


def by_customer(rows: list[dict], policy, as_of_us: int) -> dict[str, list]:
    grouped: dict[str, list] = defaultdict(list)
    for event in validate(rows, policy, as_of_us).events:
        grouped[event.customer_id].append(event)
    return grouped


# --- the registry ------------------------------------------------------------------------


def test_registry_is_the_single_list_of_features() -> None:
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    assert CATEGORICAL_COLUMNS == ["region", "tier"]
    assert all(f.description.endswith(".") and len(f.description) > 15 for f in FEATURES)
    for needed in ("recency_days", "orders_90d", "spend_365d", "tenure_days", "gap_ratio", "refund_rate",
                   "channel_share_web", "spend_to_next_tier", "days_until_grace_end", "tier_changes"):
        assert needed in FEATURE_COLUMNS


# --- hand-checked values -----------------------------------------------------------------

POLICY = parse_policy({
    "base_currency": "USD", "fx_rates": {"EUR": 1.1}, "buffer_days": 14, "downgrade_grace_days": 90,
    "tiers": [{"name": "Silver"}, {"name": "Gold", "min_spend": 1000}, {"name": "VIP", "min_spend": 5000}],
    "regions": {"EU": {"Gold": 800, "VIP": 4000}},
})


def _row(event_id, kind, order, when, amount=None, currency="USD", channel="web", region="US", customer="A"):
    return {"event_id": event_id, "event_type": kind, "order_id": order, "customer_id": customer,
            "occurred_at": iso(when), "amount": "" if amount is None else str(amount),
            "currency": currency if amount is not None else "", "channel": channel, "region": region}


HAND = [
    _row("e1", "placed", "o1", T - 180 * DAY, 1000),
    _row("e2", "placed", "o2", T - 121 * DAY, 500, "EUR", "pos", "EU"),
    _row("e3", "refunded", "o2", T - 117 * DAY, 100, "EUR", "pos", "EU"),
    _row("e4", "placed", "o3", T - 30 * DAY, 2000, channel="app", region="EU"),
    _row("e5", "cancelled", "o3", T - 29 * DAY),
]


def test_features_by_hand() -> None:
    row = build_features(pd.DataFrame(HAND), POLICY, T).iloc[0]
    expected = {
        "recency_days": 30.0, "tenure_days": 180.0,
        "orders_30d": 0, "orders_90d": 1, "orders_180d": 2, "orders_365d": 3, "orders_lifetime": 3,
        "spend_90d": 2000.0, "spend_180d": 2550.0, "spend_lifetime": 3550.0,
        "net_spend_lifetime": 3550.0 - 110.0 - 2000.0,
        "avg_order_value": 3550.0 / 3, "last_order_value": 2000.0, "max_order_value": 2000.0,
        "interpurchase_days_mean": 75.0, "interpurchase_days_std": math.sqrt(512.0),
        "last_interpurchase_days": 91.0, "gap_ratio": 30.0 / 75.0,
        "orders_trend_90d": 1.0,
        "spend_trend_90d": (2000.0 + 3550.0 / 3) / (550.0 + 3550.0 / 3),
        "refund_rate": 1 / 3, "cancel_rate": 1 / 3, "refunded_value_share": 2110.0 / 3550.0,
        "channel_share_web": 1 / 3, "channel_share_pos": 1 / 3, "channel_share_app": 1 / 3,
        "channel_share_other": 0.0, "channels_used": 3,
        "region": "EU", "tier": "Gold", "tier_rank": 1, "eligible_tier_rank": 1, "in_grace": 0,
        "qualifying_spend": 1440.0, "pending_spend": 0.0, "qualifying_orders": 2,
        "spend_to_next_tier": 4000.0 - 1440.0, "progress_to_next_tier": 1440.0 / 4000.0,
        "margin_above_threshold": 1440.0 - 800.0, "days_until_grace_end": 60.0, "tier_changes": 1,
    }
    for name, value in expected.items():
        assert row[name] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-12)), name
    # Gold since o1 matured (1000 >= 1000 in the US, the region then): 180 - 14 days before t
    assert row["days_in_tier"] == pytest.approx(166.0)


def test_single_customer_equals_batch_on_the_hand_example() -> None:
    batch = build_features(pd.DataFrame(HAND), POLICY, T)
    for engine in ("python", "sql"):
        assert_same_features(batch, customer_features(pd.DataFrame(HAND), POLICY, T, engine=engine))
    assert customer_features(pd.DataFrame(HAND), POLICY, T - 181 * DAY).empty  # nothing placed yet
    with pytest.raises(ValueError, match="one customer"):
        customer_features(pd.DataFrame([*HAND, {**HAND[0], "event_id": "z", "order_id": "z", "customer_id": "B"}]),
                          POLICY, T)


# --- batch == single customer, tier features == rules ----------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_batch_equals_single_customer_and_rules(seed: int) -> None:
    rng = random.Random(seed)
    policy = random_policy(rng)
    rows = random_events(rng, customers=6)
    as_of = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(20, 420), hours=rng.choice([0, 7]))
    as_of_us = instant_to_micros(as_of)
    batch = build_features(pd.DataFrame(rows), policy, as_of)
    grouped = by_customer(rows, policy, as_of_us)
    placed = sorted(c for c, evs in grouped.items() if any(e.event_type == EventType.PLACED for e in evs))
    assert batch["customer_id"].tolist() == placed
    for customer in placed:
        expected = batch[batch["customer_id"] == customer]
        assert_same_features(expected, customer_features(grouped[customer], policy, as_of))
        assert_same_features(expected, customer_features(grouped[customer], policy, as_of, engine="sql"))
    reference = classify(policy, rows, as_of_us)
    for _, row in batch.iterrows():
        state = reference.tiers[row["customer_id"]]
        assert row["tier"] == policy.tier_names[state.tier]
        assert row["tier_rank"] == state.tier and row["eligible_tier_rank"] == state.eligible_tier
        assert row["qualifying_spend"] == state.qualifying_us / 1e6
        assert row["pending_spend"] == state.pending_us / 1e6
        assert row["qualifying_orders"] == state.qualifying_orders
        assert row["tier_changes"] == len(state.changes)
        assert row["region"] == state.region
        assert row["days_in_tier"] == pytest.approx((as_of_us - state.tier_since_us) / 86_400e6)
        assert row["in_grace"] == int(state.grace_ends_at_us is not None)


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    return simulate(SimulationConfig(customers=400, seed=5)).events


def test_batch_equals_single_customer_on_simulated_customers(simulated: pd.DataFrame) -> None:
    policy = load_policy()
    as_of = datetime(2025, 3, 15, 12, tzinfo=UTC)
    batch = build_features(simulated, policy, as_of)
    grouped = by_customer(frame_records(simulated), policy, instant_to_micros(as_of))
    rng = random.Random(1)
    for customer in rng.sample(batch["customer_id"].tolist(), 40):
        single = customer_features(grouped[customer], policy, as_of)
        assert_same_features(batch[batch["customer_id"] == customer], single)
    # the raw-frame form of the single path validates as the batch does
    customer = batch["customer_id"].iloc[0]
    raw = simulated[simulated["customer_id"] == customer]
    assert_same_features(batch.iloc[[0]], customer_features(raw, policy, as_of))


# --- no leakage ------------------------------------------------------------------------------


def _future_rows(rows: list[dict], as_of: datetime, rng: random.Random) -> list[dict]:
    """Events after ``as_of`` that touch every customer and order: orders, refunds, cancels, replays."""
    planted = []
    soon = as_of + timedelta(microseconds=1)
    placed = [r for r in rows if r.get("event_type") == "placed" and r.get("customer_id")]
    for i, row in enumerate(placed):
        when = rng.choice([soon, as_of + DAY, as_of + 40 * DAY])
        kind = rng.choice(["refunded", "cancelled"])
        planted.append({**row, "event_id": f"f{i}r", "event_type": kind, "occurred_at": iso(when) if when != soon
                        else when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        "amount": "" if kind == "cancelled" else "5", "currency": "" if kind == "cancelled" else "USD"})
        planted.append({**row, "event_id": f"f{i}p", "order_id": f"new-{i}", "occurred_at": iso(as_of + 3 * DAY),
                        "amount": "123456", "channel": "marketplace", "region": "EU"})
        planted.append({**row, "event_id": f"f{i}d", "occurred_at": iso(as_of + 2 * DAY), "amount": "1"})  # dup order
        planted.append({**row, "occurred_at": iso(as_of + 5 * DAY)})  # conflicting replay of the event_id
    planted.append({"event_id": "newcomer", "event_type": "placed", "order_id": "n1", "customer_id": "newcomer",
                    "occurred_at": soon.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "amount": "50", "currency": "USD",
                    "channel": "web", "region": "US"})
    return planted


@pytest.mark.parametrize("seed", range(6))
def test_events_after_the_cutoff_move_no_feature(seed: int) -> None:
    rng = random.Random(100 + seed)
    policy = random_policy(rng)
    rows = random_events(rng, customers=5)
    as_of = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(30, 300))
    planted = rows + _future_rows(rows, as_of, rng)
    before = build_features(pd.DataFrame(rows), policy, as_of)
    after = build_features(pd.DataFrame(planted), policy, as_of)
    assert_same_features(before, after)
    # the planted events are real: a later cutoff sees them
    later = as_of + 10 * DAY
    assert not build_features(pd.DataFrame(rows), policy, later).equals(build_features(pd.DataFrame(planted), policy, later))


# --- labels ---------------------------------------------------------------------------------


def _label_rows() -> tuple[list[dict], list[datetime]]:
    rng = random.Random(7)
    rows: list[dict] = []
    for seed in range(4):
        part = random_events(random.Random(seed), customers=5, days=600)
        rows += [{**r, "event_id": f"s{seed}-{r.get('event_id')}", "customer_id": f"s{seed}-{r.get('customer_id')}"
                  if r.get("customer_id") else "", "order_id": f"s{seed}-{r['order_id']}"} for r in part]
    rng.shuffle(rows)
    return rows, monthly_cutoffs(datetime(2024, 2, 1, tzinfo=UTC), datetime(2025, 8, 1, tzinfo=UTC))[::4]


def test_labels_come_from_the_rules_engine_on_the_future_window() -> None:
    rows, cutoffs = _label_rows()
    policy = POLICY
    horizon = 60
    data_end = datetime(2025, 6, 1, tzinfo=UTC)
    table = build_training_set(pd.DataFrame(rows), policy, cutoffs, horizon, data_end=data_end)
    kept = sorted(table["cutoff"].unique())
    assert [c.to_pydatetime() for c in kept] == [c for c in cutoffs if c + horizon * DAY <= data_end]
    assert len(kept) >= 3 and table["churned"].nunique() == 2 and table["tier_change"].nunique() >= 2
    for cutoff in kept:
        t_us = instant_to_micros(cutoff.to_pydatetime())
        end_us = t_us + days_to_micros(horizon)
        at_horizon = classify(policy, rows, end_us).tiers
        valid = validate(rows, policy, end_us).events
        rows_at = table[table["cutoff"] == cutoff]
        assert_same_features(
            rows_at[["customer_id", "cutoff", *FEATURE_COLUMNS]].reset_index(drop=True),
            build_features(pd.DataFrame(rows), policy, cutoff.to_pydatetime()),
        )
        for _, row in rows_at.iterrows():
            customer = row["customer_id"]
            future = [e for e in valid if e.customer_id == customer and e.event_type == EventType.PLACED
                      and t_us < e.at_us <= end_us]
            assert row["churned"] == int(not future)
            assert row["tier_at_horizon"] == policy.tier_names[at_horizon[customer].tier]
            assert row["tier_at_cutoff"] == row["tier"]
            now, then = row["tier_rank"], at_horizon[customer].tier
            assert row["tier_change"] == ("up" if then > now else "down" if then < now else "same")


def test_labels_only_look_inside_the_window() -> None:
    rows, _ = _label_rows()
    policy = POLICY
    cutoff = datetime(2024, 9, 1, tzinfo=UTC)
    horizon = 90
    base = build_training_set(pd.DataFrame(rows), policy, [cutoff], horizon, data_end=datetime(2026, 1, 1, tzinfo=UTC))
    beyond = cutoff + horizon * DAY + timedelta(seconds=1)
    extra = [{**r, "event_id": f"x{i}", "order_id": f"x{i}", "occurred_at": iso(beyond), "amount": "99999"}
             for i, r in enumerate(rows) if r.get("event_type") == "placed" and r.get("customer_id")]
    later = build_training_set(pd.DataFrame(rows + extra), policy, [cutoff], horizon,
                               data_end=datetime(2026, 1, 1, tzinfo=UTC))
    pd.testing.assert_frame_equal(base, later)
    # an order inside the window changes labels, never features
    inside = [{**e, "occurred_at": iso(cutoff + 10 * DAY)} for e in extra]
    moved = build_training_set(pd.DataFrame(rows + inside), policy, [cutoff], horizon,
                               data_end=datetime(2026, 1, 1, tzinfo=UTC))
    assert_same_features(base[["customer_id", "cutoff", *FEATURE_COLUMNS]], moved[["customer_id", "cutoff", *FEATURE_COLUMNS]])
    assert moved["churned"].sum() == 0 and base["churned"].sum() > 0


def test_cutoffs_past_the_data_end_are_excluded() -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    end = instant_to_micros(t + 90 * DAY)
    kept = usable_cutoffs([t, t + timedelta(microseconds=1), t - DAY], 90, end)
    assert kept == [instant_to_micros(t - DAY), instant_to_micros(t)]
    rows, _ = _label_rows()
    table = build_training_set(pd.DataFrame(rows), POLICY, [datetime(2030, 1, 1, tzinfo=UTC)], 90)
    assert table.empty and list(table.columns)[-4:] == ["churned", "tier_at_cutoff", "tier_at_horizon", "tier_change"]


def test_a_rejected_row_does_not_extend_the_data_end() -> None:
    """The default data end is the latest event that passes the row checks: one bad row with a
    mistyped year must not keep late cutoffs, whose uncovered windows would read as churn."""
    good = {"event_type": "placed", "customer_id": "c1", "amount": "100", "currency": "USD"}
    rows = [
        {**good, "event_id": "e1", "order_id": "o1", "occurred_at": "2025-01-01T00:00:00Z"},
        {**good, "event_id": "e2", "order_id": "o2", "occurred_at": "2025-04-01T00:00:00Z"},
        {**good, "event_id": "e3", "order_id": "o3", "occurred_at": "2099-06-01T00:00:00Z", "currency": "XXX"},
        {**good, "event_id": None, "order_id": "o4", "occurred_at": "2098-01-01T00:00:00Z"},
    ]
    assert data_end_us(pd.DataFrame(rows), POLICY) == instant_to_micros(datetime(2025, 4, 1, tzinfo=UTC))
    cutoffs = [datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC)]
    table = build_training_set(pd.DataFrame(rows), POLICY, cutoffs, 90)
    assert [c.to_pydatetime() for c in table["cutoff"].unique()] == cutoffs[:1]
    assert data_end_us(pd.DataFrame(rows[2:]), POLICY) is None


def test_monthly_cutoffs() -> None:
    got = monthly_cutoffs(datetime(2024, 11, 15, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))
    assert got == [datetime(2024, 12, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)]
    assert monthly_cutoffs(datetime(2025, 3, 2, tzinfo=UTC), datetime(2025, 3, 30, tzinfo=UTC)) == []


# --- the schema check --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_frame() -> pd.DataFrame:
    return build_features(pd.DataFrame(HAND + [{**r, "customer_id": "B", "event_id": r["event_id"] + "b",
                                                "order_id": r["order_id"] + "b"} for r in HAND]), POLICY, T)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.drop(columns=["recency_days"]), "missing columns ['recency_days']"),
        (lambda f: f[["cutoff", "customer_id", *FEATURE_COLUMNS]], "out of order"),
        (lambda f: f.assign(orders_90d=f["orders_90d"].astype(float)), "'orders_90d' must be an integer"),
        (lambda f: f.assign(refund_rate=[0.5, 1.5]), "'refund_rate': 1 values outside [0, 1]"),
        (lambda f: f.assign(recency_days=[np.nan, 1.0]), "'recency_days': 1 missing values"),
        (lambda f: f.assign(tier=["Gold", None]), "'tier': 1 values are not text"),
        (lambda f: f.assign(spend_lifetime=[np.inf, 1.0]), "'spend_lifetime': 1 values outside"),
        (lambda f: pd.concat([f, f.iloc[[0]]]), "duplicate (customer_id, cutoff)"),
        (lambda f: pd.concat([f.iloc[[1]], f]), "1 duplicate (customer_id, cutoff)"),
        (lambda f: f.assign(gap_ratio=[-np.inf, np.nan]), "'gap_ratio': 1 values outside"),
        (lambda f: f.assign(orders_90d=pd.array([1, None], dtype="Int64")), "'orders_90d': 1 missing values"),
        (lambda f: f.assign(customer_id=["A", None]), "'customer_id' has missing values"),
        (lambda f: f.assign(cutoff=f["cutoff"].dt.tz_localize(None)), "'cutoff' must be a UTC timestamp"),
    ],
)
def test_schema_violations_raise_a_clear_error(good_frame: pd.DataFrame, damage, message: str) -> None:
    validate_feature_frame(good_frame)
    with pytest.raises(FeatureSchemaError) as caught:
        validate_feature_frame(damage(good_frame.copy()))
    assert message in str(caught.value)


def test_nullable_features_may_be_missing_and_labels_are_checked(good_frame: pd.DataFrame) -> None:
    validate_feature_frame(good_frame.assign(gap_ratio=np.nan))
    later = good_frame.assign(cutoff=good_frame["cutoff"] + DAY)
    validate_feature_frame(pd.concat([good_frame, later], ignore_index=True))  # same customers, two cutoffs
    validate_feature_frame(pd.concat([later, good_frame.iloc[::-1]], ignore_index=True))  # in any order
    labelled = good_frame.assign(churned=[0, 1], tier_at_cutoff="Gold", tier_at_horizon="Gold", tier_change="same")
    validate_feature_frame(labelled)
    with pytest.raises(FeatureSchemaError, match="tier_change"):
        validate_feature_frame(labelled.assign(tier_change=["same", "sideways"]))
    with pytest.raises(FeatureSchemaError, match="churned"):
        validate_feature_frame(labelled.assign(churned=[0, 2]))


def test_progress_is_reported_for_every_step() -> None:
    from features.build import STEPS_PER_RUN

    steps: list[str] = []
    build_training_set(pd.DataFrame(HAND), POLICY, [T - 60 * DAY, T - 30 * DAY], 20, data_end=T,
                       on_progress=steps.append)
    assert len(steps) == 2 * 2 * STEPS_PER_RUN
    assert steps[-1].startswith("labels") and steps[-1].endswith("done")


def test_the_row_check_of_the_online_path_applies_the_same_rules(good_frame: pd.DataFrame) -> None:
    from features.schema import validate_feature_row

    row = good_frame.iloc[0].to_dict()
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    validate_feature_row(row)
    validate_feature_row({**row, "gap_ratio": None})
    for damage, message in [
        ({"refund_rate": 1.5}, "'refund_rate': 1 values outside [0, 1]"),
        ({"recency_days": None}, "'recency_days': 1 missing values"),
        ({"tier": 3}, "'tier': 1 values are not text"),
        ({"orders_90d": 2.0}, "'orders_90d' must be an integer"),
        ({"spend_lifetime": math.inf}, "'spend_lifetime': 1 values outside"),
    ]:
        with pytest.raises(FeatureSchemaError) as caught:
            validate_feature_row({**row, **damage})
        assert message in str(caught.value)
