"""Session fixtures with trained, registered models on a small simulated data set.

``tests/conftest.py`` registers this module as a plugin, so every test module can ask for
the fixtures by name and the whole session shares one training run::

    def test_something(trained_models):
        uri = trained_models.tracking_uri   # sqlite:///.../mlflow.db with both champions
        model = mlflow.pyfunc.load_model("models:/tier-ml-churn@champion")  # after set_tracking_uri

``trained_tracking_uri`` is the same store as a plain string. The models are trained once
per test session (about 20-40 s on 2 busy cores) with few boosting rounds; the data is
``TRAINING_CUSTOMERS`` simulated customers over 18 months, seed 11.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tier_ml.policy import Policy, load_policy
from tier_ml.simulate import SimulationConfig, simulate, write_simulation

TRAINING_CUSTOMERS = 2500
TRAINING_START = "2024-01-01"
TRAINING_END = "2025-06-30"
#: The end of the simulated data: the models are trained and scored as of this instant.
TRAINING_AS_OF = datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC)
HORIZON_DAYS = 90.0


def small_booster_config():
    """Few, small trees: fast and still clearly better than chance on this data."""
    from training.fit import BoosterConfig

    return BoosterConfig(max_rounds=80, early_stopping_rounds=15, min_data_in_leaf=40)


@dataclass(frozen=True)
class TrainingData:
    events: Path
    truth: Path
    policy: Policy
    as_of: datetime


@dataclass(frozen=True)
class TrainedModels:
    """A tracking store with ``tier-ml-churn`` and ``tier-ml-tier-change`` version 1
    (aliases ``challenger`` and ``champion``), and how they were trained."""

    tracking_uri: str
    store: Path
    data: TrainingData
    result: object  # training.train.TrainResult


@pytest.fixture(scope="session")
def training_data(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    folder = tmp_path_factory.mktemp("training-data")
    config = SimulationConfig(
        customers=TRAINING_CUSTOMERS, start=TRAINING_START, end=TRAINING_END, seed=11
    )
    written = write_simulation(simulate(config), folder / "events.parquet")
    return TrainingData(written.events, written.truth, load_policy(), TRAINING_AS_OF)


@pytest.fixture(scope="session")
def trained_models(
    tmp_path_factory: pytest.TempPathFactory, training_data: TrainingData
) -> TrainedModels:
    from training.train import train_models

    store = tmp_path_factory.mktemp("mlflow-store")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    result = train_models(
        training_data.events,
        training_data.policy,
        training_data.as_of,
        horizon_days=HORIZON_DAYS,
        experiment="tier-ml-tests",
        tracking_uri=uri,
        seed=0,
        config=small_booster_config(),
        max_cutoffs=10,
    )
    return TrainedModels(uri, store, training_data, result)


@pytest.fixture(scope="session")
def trained_tracking_uri(trained_models: TrainedModels) -> str:
    """A tracking URI whose registry holds both models with alias ``champion``."""
    return trained_models.tracking_uri
