"""Settings of the HTTP service, from the environment (prefix ``TIER_ML_``), in one place.

Built by :func:`load_settings` in the app factory or the CLI, never at import
time, so tests pass their own :class:`ServingSettings`.

- ``TIER_ML_DATABASE_URL``: the tier store (default ``sqlite:///tier_ml.sqlite``).
- ``TIER_ML_POLICY``: the policy YAML for an empty store (default: the packaged policy).
- ``MLFLOW_TRACKING_URI`` / ``TIER_ML_MLFLOW_TRACKING_URI``: the model registry
  (default ``sqlite:///mlflow.db``); models load by ``TIER_ML_MODEL_ALIAS``
  (default ``champion``).
- ``TIER_ML_API_KEYS``: keys from the environment,
  ``name:key:scope1,scope2;name2:key2:scope`` (keys in the store come from
  ``tier-ml apikey create``). ``TIER_ML_AUTH_DISABLED=1`` turns auth off for a
  local demo (every request gets every scope; a warning is logged).
- ``TIER_ML_NOW``: a fixed clock (ISO 8601) for tests and demos on historic data.
- Limits: ``TIER_ML_MAX_BODY_BYTES`` (default 8 MiB), ``TIER_ML_MAX_EVENTS_PER_REQUEST``
  (10,000), ``TIER_ML_MAX_PREDICTION_IDS`` (10,000).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tier_ml.settings import DEFAULT_DATABASE_URL

CHURN_MODEL = "tier-ml-churn"
TIER_CHANGE_MODEL = "tier-ml-tier-change"


class ServingSettings(BaseSettings):
    """What the service needs from its environment."""

    model_config = SettingsConfigDict(env_prefix="TIER_ML_", extra="ignore", populate_by_name=True)

    database_url: str = DEFAULT_DATABASE_URL
    policy_path: Path | None = Field(
        default=None, validation_alias=AliasChoices("TIER_ML_POLICY", "policy_path")
    )
    mlflow_tracking_uri: str = Field(
        default="sqlite:///mlflow.db",
        validation_alias=AliasChoices(
            "MLFLOW_TRACKING_URI", "TIER_ML_MLFLOW_TRACKING_URI", "mlflow_tracking_uri"
        ),
    )
    model_alias: str = "champion"
    churn_model_name: str = CHURN_MODEL
    tier_change_model_name: str = TIER_CHANGE_MODEL
    load_models: bool = Field(default=True, description="Load models at start-up.")
    api_keys: str = Field(default="", description="name:key:scope,scope;... (see the module doc).")
    auth_disabled: bool = False
    now: datetime | None = Field(default=None, description="A fixed clock (tests, demos).")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_events_per_request: int = Field(default=10_000, gt=0)
    max_prediction_ids: int = Field(default=10_000, gt=0)
    page_size: int = Field(default=100, gt=0, description="Default page size of JSON lists.")
    max_page_size: int = Field(default=10_000, gt=0)
    top_reasons: int = Field(default=3, ge=0, le=20)
    scoring_concurrency: int = Field(
        default=2,
        gt=0,
        description="Requests that score models at the same time; the others wait their turn.",
    )
    at_risk_tier: str = "Gold"
    at_risk_cache_seconds: float = Field(default=300.0, ge=0)
    key_cache_seconds: float = Field(default=5.0, ge=0)
    fail_interrupted_jobs: bool = Field(
        default=True, description="At start-up, mark jobs a stopped process left running failed."
    )

    @field_validator("now")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("TIER_ML_NOW needs a UTC offset, e.g. 2025-12-31T00:00:00Z")
        return value


def load_settings(**overrides: object) -> ServingSettings:
    """Settings from the environment with explicit ``overrides`` (None values ignored) on top."""
    given = {name: value for name, value in overrides.items() if value is not None}
    return ServingSettings(**given)
