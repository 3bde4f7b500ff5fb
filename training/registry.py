"""The model registry: versions, the ``challenger`` and ``champion`` aliases.

Why aliases: serving and scoring load ``models:/<name>@champion``; retraining
never changes what is served. A new version becomes ``challenger``; only
``tier-ml promote`` (or the very first version, when there is no champion yet)
moves ``champion``.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.tracking import CHALLENGER, CHAMPION


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version number behind ``name@alias``, or None when the alias (or model) is missing."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def mark_new_version(client: MlflowClient, name: str, version: str) -> bool:
    """Alias a new version ``challenger``; also ``champion`` when the model has none yet.
    Returns whether it became champion."""
    client.set_registered_model_alias(name, CHALLENGER, version)
    if alias_version(client, name, CHAMPION) is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True
    return False


def set_champion(client: MlflowClient, name: str, version: str) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)


def model_uri(name: str, alias: str) -> str:
    return f"models:/{name}@{alias}"
