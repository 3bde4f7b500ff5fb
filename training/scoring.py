"""Batch scoring: every customer with an order at or before ``as_of``, both models, one table.

Why here and not in serving: campaigns and reviews score everyone from an events
file, and the result must name the model versions it came from, so a score can
be traced back to its run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tier_ml.policy import Policy
from training.data import EventsSource, TrainingDataError, events_source
from training.registry import alias_version, model_uri
from training.tracking import CHURN_MODEL_NAME, TIER_CHANGE_MODEL_NAME, use_tracking

if TYPE_CHECKING:
    from mlflow import MlflowClient

SCORE_COLUMNS = [
    "customer_id",
    "tier",
    "churn_probability",
    "p_upgrade",
    "p_downgrade",
    "churn_model_version",
    "tier_change_model_version",
]
#: Appended after SCORE_COLUMNS: the churn probability's 90 % interval and the model kind.
INTERVAL_COLUMNS = ["churn_probability_low", "churn_probability_high", "churn_model_kind"]


class ModelNotFoundError(LookupError):
    """No registered model version behind the requested alias."""


@dataclass(frozen=True)
class LoadedModels:
    """Both pyfunc models behind one alias, with their version numbers."""

    churn: object
    tier_change: object
    churn_version: str
    tier_change_version: str


def alias_versions(client: MlflowClient, alias: str) -> dict[str, str]:
    """``{model name: version}`` of both models behind ``alias``; a clear error if one lacks it."""
    versions = {}
    for name in (CHURN_MODEL_NAME, TIER_CHANGE_MODEL_NAME):
        version = alias_version(client, name, alias)
        if version is None:
            raise ModelNotFoundError(
                f"no version of {name} has alias {alias!r}; train first (tier-ml train) "
                "or pick another --model-alias"
            )
        versions[name] = version
    return versions


def load_models(alias: str = "champion", tracking_uri: str | None = None) -> LoadedModels:
    """``models:/tier-ml-churn@alias`` and ``models:/tier-ml-tier-change@alias``."""
    import mlflow
    from mlflow import MlflowClient

    use_tracking(tracking_uri)
    versions = alias_versions(MlflowClient(), alias)
    return LoadedModels(
        churn=mlflow.pyfunc.load_model(f"models:/{CHURN_MODEL_NAME}/{versions[CHURN_MODEL_NAME]}"),
        tier_change=mlflow.pyfunc.load_model(
            f"models:/{TIER_CHANGE_MODEL_NAME}/{versions[TIER_CHANGE_MODEL_NAME]}"
        ),
        churn_version=versions[CHURN_MODEL_NAME],
        tier_change_version=versions[TIER_CHANGE_MODEL_NAME],
    )


def model_kind(model: object) -> str:
    """``lightgbm`` or ``btyd_fallback`` from the pyfunc's metadata (older models: lightgbm)."""
    from training.small_shop import LIGHTGBM, MODEL_KIND_TAG

    meta = getattr(getattr(model, "metadata", None), "metadata", None) or {}
    return str(meta.get(MODEL_KIND_TAG, LIGHTGBM))


def score_features(features: pd.DataFrame, models: LoadedModels) -> pd.DataFrame:
    """Scores for a feature frame (``customer_id``, ``cutoff``, FEATURE_COLUMNS): the
    SCORE_COLUMNS, then INTERVAL_COLUMNS (NaN bounds for models without intervals)."""
    if features.empty:
        return pd.DataFrame(columns=SCORE_COLUMNS + INTERVAL_COLUMNS)
    churn = models.churn.predict(features)
    change = models.tier_change.predict(features)
    scores = pd.DataFrame(
        {
            "customer_id": features["customer_id"].to_numpy(),
            "tier": features["tier"].to_numpy(),
            "churn_probability": np.asarray(churn["churn_probability"], dtype=float),
            "p_upgrade": np.asarray(change["p_up"], dtype=float),
            "p_downgrade": np.asarray(change["p_down"], dtype=float),
            "churn_model_version": models.churn_version,
            "tier_change_model_version": models.tier_change_version,
        }
    )[SCORE_COLUMNS]
    for bound in ("churn_probability_low", "churn_probability_high"):
        scores[bound] = np.asarray(churn[bound], dtype=float) if bound in churn else np.nan
    scores["churn_model_kind"] = model_kind(models.churn)
    return scores


def score(
    events: EventsSource,
    policy: Policy,
    as_of: datetime,
    model_alias: str = "champion",
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """One row per customer with at least one order at or before ``as_of``."""
    from features import build_features

    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware, got {as_of!r}")
    models = load_models(model_alias, tracking_uri)
    source = events_source(events)
    try:
        features = build_features(source, policy, as_of)
    except FileNotFoundError as exc:
        raise TrainingDataError(str(exc)) from None
    return score_features(features, models)


def timed_score(
    events: EventsSource, policy: Policy, as_of: datetime, model_alias: str, tracking_uri: str | None
) -> tuple[pd.DataFrame, dict[str, float]]:
    """:func:`score` with the seconds spent loading, building features and predicting."""
    from features import build_features

    began = time.perf_counter()
    models = load_models(model_alias, tracking_uri)
    loaded = time.perf_counter()
    features = build_features(events_source(events), policy, as_of)
    built = time.perf_counter()
    scores = score_features(features, models)
    done = time.perf_counter()
    return scores, {"load": loaded - began, "features": built - loaded, "predict": done - built}


def versions_text(scores: pd.DataFrame) -> str:
    """The model versions a scores (or per-version summary) frame names, for the CLI's line."""
    if not len(scores):
        return "no customers"
    return (
        f"churn v{scores['churn_model_version'].iloc[0]}, "
        f"tier change v{scores['tier_change_model_version'].iloc[0]}"
    )


__all__ = ["INTERVAL_COLUMNS", "SCORE_COLUMNS", "LoadedModels", "ModelNotFoundError", "load_models", "model_uri", "score"]
