"""Fitting the two LightGBM models: class weights, early stopping, calibration.

Why this order: the booster learns from the training cutoffs with balanced
class weights (churners and tier moves are the minority), stops when the
held-out calibration cutoffs stop improving, and a calibrator fitted on those
same held-out cutoffs maps the weighted scores back to honest probabilities.
Deterministic for a given seed (``deterministic``, row-wise histograms, fixed
bagging seeds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from training.bgnbd import BGNBD
from training.calibration import BinaryCalibrator, CalibrationBands, MulticlassCalibrator
from training.data import class_weights
from training.model import ChurnModel, InputEncoder, TierChangeModel
from training.rfm import rfm_inputs


@dataclass(frozen=True)
class BoosterConfig:
    """LightGBM settings shared by both models (logged as run parameters)."""

    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    num_threads: int = 1
    class_weighting: bool = True
    calibration: str = "isotonic"
    #: Also calibrate churn on out-of-fold scores of the training cutoffs (see fit_churn).
    out_of_fold_calibration: bool = True
    calibration_folds: int = 3
    use_bgnbd_features: bool = True
    #: Bootstrap refits of the churn calibration behind churn_probability_low/high (0: none).
    interval_draws: int = 100

    def lightgbm_params(self, seed: int) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.num_threads,
            "seed": seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    def as_params(self) -> dict[str, Any]:
        return asdict(self)


def fit_bgnbd_params(frame: pd.DataFrame):
    """BG/NBD fitted on the latest training cutoff's customers (frozen into the models)."""
    latest = frame[frame["cutoff"] == frame["cutoff"].max()]
    rfm = rfm_inputs(latest)
    return BGNBD().fit(rfm["frequency"], rfm["recency"], rfm["age"]).params_


def make_encoder(
    train: pd.DataFrame,
    feature_columns: list[str],
    categorical_columns: list[str],
    horizon_days: float,
    use_bgnbd: bool,
) -> InputEncoder:
    bgnbd = fit_bgnbd_params(train) if use_bgnbd else None
    encoder = InputEncoder(list(feature_columns), list(categorical_columns), horizon_days)
    return encoder.fit(train, bgnbd)


def _dataset(
    encoder: InputEncoder,
    frame: pd.DataFrame,
    label: np.ndarray,
    weight: np.ndarray | None,
    reference: lgb.Dataset | None = None,
) -> lgb.Dataset:
    return lgb.Dataset(
        encoder.transform(frame),
        label=label,
        weight=weight,
        categorical_feature=encoder.categorical_indices,
        reference=reference,
        free_raw_data=False,
    )


def _boost(
    params: dict[str, Any],
    config: BoosterConfig,
    train_set: lgb.Dataset,
    valid_set: lgb.Dataset,
) -> lgb.Booster:
    return lgb.train(
        params,
        train_set,
        num_boost_round=config.max_rounds,
        valid_sets=[valid_set],
        valid_names=["calibration"],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)],
    )


def _fit_booster(
    encoder: InputEncoder,
    train: pd.DataFrame,
    calibration: pd.DataFrame,
    label: str,
    n_classes: int,
    params: dict[str, Any],
    config: BoosterConfig,
) -> tuple[lgb.Booster, np.ndarray, np.ndarray, np.ndarray | None]:
    """Boost on ``train``, early-stopped on ``calibration`` (class-weighted if configured).

    Returns the booster, the training and calibration labels and the training weights.
    """
    y_train = train[label].to_numpy(dtype=int)
    y_cal = calibration[label].to_numpy(dtype=int)
    weights = class_weights(y_train, n_classes) if config.class_weighting else None
    cal_weights = class_weights(y_cal, n_classes) if config.class_weighting else None
    train_set = _dataset(encoder, train, y_train, weights)
    valid_set = _dataset(encoder, calibration, y_cal, cal_weights, reference=train_set)
    return _boost(params, config, train_set, valid_set), y_train, y_cal, weights


def fit_churn(
    encoder: InputEncoder,
    train: pd.DataFrame,
    calibration: pd.DataFrame,
    config: BoosterConfig,
    seed: int,
) -> ChurnModel:
    params = {**config.lightgbm_params(seed), "objective": "binary", "metric": "auc"}
    booster, y_train, y_cal, weights = _fit_booster(
        encoder, train, calibration, "churned", 2, params, config
    )
    model = ChurnModel(encoder, booster, BinaryCalibrator(config.calibration))
    raw, labels = model.raw(encoder.transform(calibration)), y_cal
    cutoffs = calibration["cutoff"].to_numpy()
    if config.out_of_fold_calibration:
        oof = _out_of_fold(encoder, train, y_train, weights, params, booster.best_iteration, config)
        raw, labels = np.concatenate([oof, raw]), np.concatenate([y_train, y_cal])
        cutoffs = np.concatenate([train["cutoff"].to_numpy(), cutoffs])
    model.calibrator.fit(raw, labels)
    if config.interval_draws > 0:
        bands = CalibrationBands(config.calibration, config.interval_draws, seed=seed)
        model.bands = bands.fit(raw, labels, groups=cutoffs)
    return model


def _out_of_fold(
    encoder: InputEncoder,
    train: pd.DataFrame,
    labels: np.ndarray,
    weights: np.ndarray | None,
    params: dict[str, Any],
    rounds: int,
    config: BoosterConfig,
) -> np.ndarray:
    """Scores of the training rows by boosters that did not see those customers.

    Why: the calibration cutoffs cover two months, so their horizons sit in one season
    and the base rate moves with the season. Out-of-fold scores (folds by customer, the
    same settings and number of rounds) add every training cutoff's season to the
    calibration data without scoring any row with a booster that learned from it.
    """
    from sklearn.model_selection import GroupKFold

    inputs = encoder.transform(train)
    groups = train["customer_id"].to_numpy()
    scores = np.zeros(len(train))
    folds = GroupKFold(n_splits=min(config.calibration_folds, len(np.unique(groups))))
    for fit_rows, held_rows in folds.split(inputs, labels, groups):
        fold_set = lgb.Dataset(
            inputs.iloc[fit_rows],
            label=labels[fit_rows],
            weight=None if weights is None else weights[fit_rows],
            categorical_feature=encoder.categorical_indices,
        )
        booster = lgb.train(params, fold_set, num_boost_round=max(rounds, 1))
        scores[held_rows] = booster.predict(inputs.iloc[held_rows])
    return scores


def fit_tier_change(
    encoder: InputEncoder,
    train: pd.DataFrame,
    calibration: pd.DataFrame,
    config: BoosterConfig,
    seed: int,
) -> TierChangeModel:
    params = {
        **config.lightgbm_params(seed),
        "objective": "multiclass",
        "num_class": 3,
        "metric": "multi_logloss",
    }
    booster, _, y_cal, _ = _fit_booster(
        encoder, train, calibration, "tier_change_index", 3, params, config
    )
    model = TierChangeModel(encoder, booster, MulticlassCalibrator(3))
    model.calibrator.fit(model.raw(encoder.transform(calibration)), y_cal)
    return model
