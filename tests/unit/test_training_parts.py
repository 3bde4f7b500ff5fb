"""The parts of training that need no MLflow: BG/NBD, metrics, calibration, splits, promotion rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from training.bgnbd import BGNBD, BGNBDParams, p_alive, p_no_purchase
from training.calibration import BinaryCalibrator, MulticlassCalibrator
from training.data import (
    TrainingDataError,
    class_weights,
    data_gap_note,
    purged_split,
    training_cutoffs,
)
from training.metrics import (
    binary_metrics,
    expected_calibration_error,
    multiclass_metrics,
    top_decile_lift,
)
from training.promote import decide
from training.rfm import rfm_inputs

# --- BG/NBD ---------------------------------------------------------------------------------------


def simulate_bgnbd(params: BGNBDParams, customers: int, age: float, seed: int):
    """Histories drawn from the BG/NBD process itself: x, t_x, T per customer."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(params.r, 1 / params.alpha, customers)
    drop = rng.beta(params.a, params.b, customers)
    big_t = rng.uniform(age / 4, age, customers)
    x = np.zeros(customers)
    t_x = np.zeros(customers)
    for i in range(customers):
        clock = 0.0
        while True:
            clock += rng.exponential(1 / rate[i])
            if clock > big_t[i]:
                break
            x[i] += 1
            t_x[i] = clock
            if rng.random() < drop[i]:
                break
    return x, t_x, big_t


def test_bgnbd_recovers_the_parameters_it_was_simulated_with() -> None:
    truth = BGNBDParams(r=0.8, alpha=30.0, a=0.6, b=2.5)
    x, t_x, big_t = simulate_bgnbd(truth, 6000, 400.0, seed=1)
    fitted = BGNBD().fit(x, t_x, big_t).params_
    assert fitted.r == pytest.approx(truth.r, rel=0.2)
    assert fitted.alpha == pytest.approx(truth.alpha, rel=0.3)
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(truth.a / (truth.a + truth.b), rel=0.2)


def test_bgnbd_posteriors_behave() -> None:
    params = BGNBDParams(r=0.8, alpha=30.0, a=0.6, b=2.5)
    # No repeat order: a customer cannot have died (death only follows a purchase).
    assert p_alive(params, [0, 0], [0, 0], [10, 300]).tolist() == [1.0, 1.0]
    # The longer since the last order, the less alive and the likelier silent.
    recency = np.array([300.0, 200.0, 100.0, 10.0])
    alive = p_alive(params, np.full(4, 5.0), recency, np.full(4, 300.0))
    silent = p_no_purchase(params, np.full(4, 5.0), recency, np.full(4, 300.0), 90)
    assert np.all(np.diff(alive) < 0) and np.all(np.diff(silent) > 0)
    assert np.all((silent > 0) & (silent < 1))
    # A longer horizon can only make a purchase likelier.
    longer = p_no_purchase(params, [5], [200], [300], 180)
    assert np.all(longer < p_no_purchase(params, [5], [200], [300], 30))
    with pytest.raises(ValueError, match="t_x <= T"):
        BGNBD().fit([1], [20], [10])
    with pytest.raises(RuntimeError, match="not fitted"):
        BGNBD().p_alive([1], [1], [1])


def test_bgnbd_churn_probability_ranks_simulated_churners() -> None:
    """On its own process, BG/NBD's P(no purchase in h) must predict silence well."""
    truth = BGNBDParams(r=1.5, alpha=20.0, a=0.8, b=2.0)
    x, t_x, big_t = simulate_bgnbd(truth, 3000, 365.0, seed=2)
    model = BGNBD().fit(x, t_x, big_t)
    score = model.p_no_purchase(x, t_x, big_t, 90)
    assert score.min() >= 0 and score.max() <= 1
    # Customers whose last order is long ago relative to their rhythm score higher.
    stale = (x >= 3) & (big_t - t_x > 150)
    fresh = (x >= 3) & (big_t - t_x < 10)
    assert score[stale].mean() > score[fresh].mean() + 0.3


def test_rfm_inputs_from_features() -> None:
    frame = pd.DataFrame(
        {"recency_days": [5.0, 40.0], "tenure_days": [100.0, 40.0],
         "orders_lifetime": [4, 1], "spend_lifetime": [400.0, 50.0]}
    )
    rfm = rfm_inputs(frame)
    assert rfm["frequency"].tolist() == [3.0, 0.0]
    assert rfm["recency"].tolist() == [95.0, 0.0]  # t_x: first → last order
    assert rfm["age"].tolist() == [100.0, 40.0]
    assert rfm["monetary"].tolist() == [100.0, 50.0]
    with pytest.raises(ValueError, match="tenure_days"):
        rfm_inputs(frame.drop(columns="tenure_days"))


# --- metrics --------------------------------------------------------------------------------------


def test_calibration_error_and_lift() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.clip(p + 0.1, 0, 1)) == pytest.approx(0.1, abs=0.02)
    perfect = np.r_[np.ones(10), np.zeros(90)]
    assert top_decile_lift(perfect, perfect) == pytest.approx(10.0)
    assert top_decile_lift(perfect, -perfect) == pytest.approx(0.0)
    metrics = binary_metrics(y, p)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert metrics["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert "roc_auc" not in binary_metrics(np.zeros(5), np.full(5, 0.3))  # undefined: left out


def test_multiclass_metrics() -> None:
    labels = np.array([0, 1, 1, 2, 2, 1])
    certain = np.eye(3)[labels]
    metrics = multiclass_metrics(labels, certain * 0.98 + 0.02 / 3)
    assert metrics["macro_auc"] == pytest.approx(1.0)
    assert metrics["accuracy"] == 1.0
    assert metrics["log_loss"] < 0.05
    flat = multiclass_metrics(labels, np.full((6, 3), 1 / 3))
    assert flat["macro_auc"] == pytest.approx(0.5)


# --- calibration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_binary_calibration_repairs_weighted_scores(method: str) -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.02, 0.6, 40_000)
    y = (rng.uniform(size=truth.size) < truth).astype(int)
    odds = truth / (1 - truth) * 4  # what class weighting does to the odds
    raw = odds / (1 + odds)
    calibrator = BinaryCalibrator(method).fit(raw[:20_000], y[:20_000])
    fixed = calibrator.transform(raw[20_000:])
    held_out = y[20_000:]
    assert expected_calibration_error(held_out, raw[20_000:]) > 0.1
    assert expected_calibration_error(held_out, fixed) < 0.02
    if method == "platt":  # monotone: the ranking, hence AUC, is unchanged
        assert roc_auc_score(held_out, fixed) == pytest.approx(roc_auc_score(held_out, raw[20_000:]))
    with pytest.raises(ValueError, match="both classes"):
        BinaryCalibrator(method).fit(raw[:10], np.zeros(10))


def test_multiclass_calibration_sums_to_one_and_keeps_absent_classes() -> None:
    rng = np.random.default_rng(2)
    raw = rng.dirichlet([1, 5, 1], 3000)
    labels = np.array([rng.choice(3, p=row) for row in raw])
    labels[labels == 0] = 1  # class 0 never seen while calibrating
    calibrator = MulticlassCalibrator(3).fit(raw, labels)
    out = calibrator.transform(raw)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert (out[:, 0] > 0).all()


# --- cutoffs, split, weights ----------------------------------------------------------------------


def test_training_cutoffs_are_monthly_and_end_one_horizon_before_as_of() -> None:
    as_of = datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)
    first = pd.Timestamp("2024-01-05", tz="UTC")
    cutoffs = training_cutoffs(first, as_of, 90, warmup_days=60, max_cutoffs=24)
    assert cutoffs[-1] == as_of - timedelta(days=90)
    assert cutoffs == sorted(cutoffs)
    assert all(c >= first + timedelta(days=60) for c in cutoffs)
    assert [c.day for c in cutoffs] == [cutoffs[-1].day] * len(cutoffs)
    assert len(training_cutoffs(first, as_of, 90, max_cutoffs=5)) == 5


def test_purged_split_leaves_a_horizon_between_parts() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    cutoffs = [start + timedelta(days=30 * k) for k in range(20)]
    split = purged_split(cutoffs, 90, validation=2, calibration=2)
    assert split.validation == cutoffs[-2:]
    assert max(split.calibration) + timedelta(days=90) <= min(split.validation)
    assert max(split.train) + timedelta(days=90) <= min(split.calibration)
    assert len(split.calibration) == 2 and split.train == cutoffs[: len(split.train)]
    small = purged_split(cutoffs[:9], 90)
    assert len(small.validation) >= 1 and small.train
    with pytest.raises(TrainingDataError, match="not enough history"):
        purged_split(cutoffs[:4], 90)


def test_class_weights_balance_the_classes() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    weights = class_weights(labels, 2)
    assert weights[labels == 0].sum() == pytest.approx(weights[labels == 1].sum())
    assert class_weights(np.array([1, 1]), 3).tolist() == [1.0, 1.0]


# --- promotion rule -------------------------------------------------------------------------------


def test_promotion_rule() -> None:
    better = {"val_roc_auc": 0.85, "val_ece": 0.02}
    worse = {"val_roc_auc": 0.80, "val_ece": 0.02}
    badly_calibrated = {"val_roc_auc": 0.86, "val_ece": 0.05}
    assert decide("churn", better, worse)[0] is True
    assert decide("churn", worse, better)[0] is False
    assert decide("churn", better, better)[0] is False  # equal is not better
    promoted, reason = decide("churn", badly_calibrated, better)
    assert not promoted and "calibration worse" in reason
    assert decide("churn", badly_calibrated, better, ece_tolerance=0.05)[0] is True
    assert decide("churn", worse, better, force=True)[0] is True
    assert decide("tier_change", {"val_macro_auc": 0.7, "val_ece": 0.01},
                  {"val_macro_auc": 0.6, "val_ece": 0.01})[0] is True  # fmt: skip
    assert decide("churn", {}, better)[0] is False


def test_multiclass_calibration_passes_through_when_nobody_moved() -> None:
    raw = np.array([[0.1, 0.8, 0.1], [0.2, 0.6, 0.4]])
    out = MulticlassCalibrator(3).fit(raw, np.array([1, 1])).transform(raw)
    np.testing.assert_allclose(out, raw / raw.sum(axis=1, keepdims=True))


def test_input_encoder_freezes_categories() -> None:
    from training.model import InputEncoder

    train = pd.DataFrame({"tier": ["Gold", "Silver", "Gold"], "spend": [1.0, 2.0, 3.0]})
    encoder = InputEncoder(["tier", "spend"], ["tier"], 90).fit(train, None)
    later = pd.DataFrame({"spend": [5, 6, 7], "tier": ["Silver", "Platinum", None]})
    inputs = encoder.transform(later)
    assert list(inputs.columns) == ["tier", "spend"]
    assert inputs["tier"].iloc[0] == encoder.categories["tier"].index("Silver")
    assert inputs["tier"].iloc[1:].isna().all()  # unseen and missing tiers: missing
    with pytest.raises(ValueError, match="lacks feature columns"):
        encoder.transform(later.drop(columns="spend"))


# --- events that end before as_of -------------------------------------------------------------


def test_events_that_end_long_before_as_of_are_refused_and_a_short_gap_is_noted() -> None:
    """Label windows past the data see no orders: ``train --as-of`` three months after the
    file's last day labelled nearly everyone churned (and promote accepted the model)."""
    from tier_ml.policy import load_policy

    events = pd.DataFrame({
        "event_id": ["e1", "e2", "e3"], "event_type": "placed", "order_id": ["o1", "o2", "o3"],
        "customer_id": "C1", "amount": "10", "currency": "USD",
        "occurred_at": ["2025-12-20T10:00:00Z", "2025-12-31T10:00:00Z", "2099-01-01T00:00:00Z"],
    }).assign(amount=lambda f: f["amount"].where(f["event_id"] != "e3", "-5"))  # a rejected row: not the end
    policy = load_policy()
    end = datetime(2025, 12, 31, 10, tzinfo=UTC)
    assert data_gap_note(events, policy, end + timedelta(hours=20)) is None
    note = data_gap_note(events, policy, end + timedelta(days=3))
    assert note is not None and "3 days before --as-of 2026-01-03" in note
    with pytest.raises(TrainingDataError, match=r"90 days before --as-of 2026-03-31.*use --as-of 2025-12-31"):
        data_gap_note(events, policy, end + timedelta(days=90))
