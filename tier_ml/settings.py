"""Runtime settings read from the environment, in one place (pydantic-settings).

Nothing is read at import time: callers build a :class:`Settings` with
:func:`get_settings` when they need one (a CLI command, the app factory, a
test), so a test can set ``TIER_ML_DATABASE_URL`` before asking.

- ``TIER_ML_DATABASE_URL``: the tier store. Default: the embedded SQLite file
  ``tier_ml.sqlite`` in the working directory (no set-up). Production uses
  PostgreSQL, e.g. ``postgresql+psycopg://user@host/tier_ml``.
- ``TIER_ML_POLICY``: the policy YAML; unset means the packaged default policy.
- ``TIER_ML_CHANNELS``: the notification channels YAML; unset means ``channels.yaml``
  beside the policy file, if there is one (see ``tier_ml.notify.config``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///tier_ml.sqlite"


class Settings(BaseSettings):
    """What a tier-ml process needs from its environment."""

    model_config = SettingsConfigDict(env_prefix="TIER_ML_", extra="ignore", populate_by_name=True)

    database_url: str = DEFAULT_DATABASE_URL
    policy_path: Path | None = Field(
        default=None, validation_alias=AliasChoices("TIER_ML_POLICY", "policy_path")
    )
    channels_path: Path | None = Field(
        default=None, validation_alias=AliasChoices("TIER_ML_CHANNELS", "channels_path")
    )


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit ``overrides`` (None values ignored) on top."""
    given = {name: value for name, value in overrides.items() if value is not None}
    return Settings(**given)
