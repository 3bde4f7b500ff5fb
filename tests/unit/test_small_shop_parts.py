"""The parts of small-shop mode and of the churn intervals, on small synthetic inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.bgnbd import BGNBD, p_no_purchase
from training.calibration import BinaryCalibrator, CalibrationBands
from training.small_shop import (
    DataSizes,
    SmallShopThresholds,
    label_reason,
    size_reason,
)


def test_size_reason_names_every_threshold_missed_and_the_modes() -> None:
    thresholds = SmallShopThresholds()
    assert size_reason(DataSizes(5000, 400.0), thresholds) is None
    reason = size_reason(DataSizes(200, 90.0), thresholds)
    assert reason == "200 customers with an order < 500; 90 days of history < 180"
    assert size_reason(DataSizes(200, 90.0), SmallShopThresholds(mode="off")) is None
    assert size_reason(DataSizes(5000, 400.0), SmallShopThresholds(mode="force")) is not None
    with pytest.raises(ValueError, match="small-shop mode"):
        SmallShopThresholds(mode="sometimes")  # type: ignore[arg-type]


def test_label_reason_needs_both_classes_in_every_part() -> None:
    enough = pd.DataFrame({"churned": [0] * 40 + [1] * 40})
    few = pd.DataFrame({"churned": [0] * 40 + [1] * 3})
    thresholds = SmallShopThresholds(min_labels=30)
    assert label_reason({"train": enough, "validation": enough}, thresholds) is None
    reason = label_reason({"train": enough, "validation": few}, thresholds)
    assert reason is not None and "validation" in reason and "3 churned" in reason
    assert label_reason({"train": few}, SmallShopThresholds(mode="off")) is None


def _tiny_histories(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    age = rng.uniform(5, 90, n)
    frequency = rng.poisson(age / 40)
    recency = np.where(frequency > 0, age * rng.uniform(0.2, 1.0, n), 0.0)
    return frequency.astype(float), recency, age


def test_the_prior_keeps_tiny_data_off_the_bounds() -> None:
    x, t_x, age = _tiny_histories(15, 1)
    fitted = BGNBD(log_prior_sd=2.0).fit(x, t_x, age)
    assert np.all(np.abs(fitted.log_params_) < 9.5)  # bounds are -10..10 (alpha 15)
    draws = fitted.laplace(200, seed=4)
    assert draws.r.shape == (200, 1)
    again = fitted.laplace(200, seed=4)
    np.testing.assert_array_equal(draws.a, again.a)  # seeded
    p = p_no_purchase(draws, x, t_x, age, 90.0)
    assert p.shape == (200, 15) and np.all((p >= 0) & (p <= 1))


def test_posterior_draws_narrow_with_more_customers() -> None:
    widths = []
    for n in (100, 3000):
        x, t_x, age = _tiny_histories(n, 2)
        fitted = BGNBD(log_prior_sd=2.0).fit(x, t_x, age)
        p = p_no_purchase(fitted.laplace(200, seed=0), x, t_x, age, 90.0)
        low, high = np.quantile(p, [0.05, 0.95], axis=0)
        widths.append(float((high - low).mean()))
    assert widths[1] < widths[0] / 2, widths


def test_calibration_bands_contain_the_point_and_narrow_with_data() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (300, 5000):
        raw = rng.uniform(0, 1, n)
        y = (rng.uniform(0, 1, n) < raw).astype(int)
        for method in ("isotonic", "platt"):
            point = BinaryCalibrator(method).fit(raw, y).transform(raw)
            low, high = CalibrationBands(method, n_draws=20, seed=1).fit(raw, y).transform(raw, point)
            assert np.all((low <= point) & (point <= high))
            if method == "platt":
                widths.append(float((high - low).mean()))
    assert widths[1] < widths[0] / 3, widths
