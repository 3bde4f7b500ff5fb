"""Where runs and models go: tracking URI, experiments, code version.

Why: every command (train, promote, score, tune) must agree on the store, and
tests must never touch the default ``mlflow.db``. The URI is resolved in one
place: explicit argument, else ``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db``. For SQLite stores, artifacts live in ``mlartifacts/``
beside the database file, so a store is one self-contained folder.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "tier-ml"
CHURN_MODEL_NAME = "tier-ml-churn"
TIER_CHANGE_MODEL_NAME = "tier-ml-tier-change"
MODEL_NAMES = {"churn": CHURN_MODEL_NAME, "tier_change": TIER_CHANGE_MODEL_NAME}
CHALLENGER, CHAMPION = "challenger", "champion"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class TrackingUnreachableError(ConnectionError):
    """An HTTP tracking server that does not answer at all."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail at once, in one line, when an ``http(s)`` tracking server does not answer.

    MLflow retries a refused connection with back-off for a minute or more before it
    gives up, which at a terminal looks like a hang. Any answer counts as reachable, also
    an error status or a TLS handshake it cannot verify (a proxy, authentication,
    ``MLFLOW_TRACKING_INSECURE_TLS``): MLflow then reports the rest itself.
    """
    if uri.lower().startswith(("http://", "https://")):
        _probe(uri, timeout_s)


@cache  # a server that answered once is not asked again (failures raise, so are not kept)
def _probe(uri: str, timeout_s: float) -> None:
    import ssl
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:  # refused, unknown host, timed out
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return
        raise TrackingUnreachableError(f"MLflow tracking server {uri} does not answer: {reason}") from None


def use_tracking(tracking_uri: str | None = None) -> str:
    """Point MLflow (fluent API and registry) at the resolved store; returns the URI
    (an ``http(s)`` server is checked first, see :func:`check_reachable`)."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def artifact_root(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite database file; None (MLflow's default) otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlartifacts").as_uri()


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """The experiment's id, created (with the store's artifact root) when missing."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_root(tracking_uri))


@cache
def code_version() -> str:
    """The package version and git commit (with ``-dirty`` for local changes), if known."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("tier-ml")
    except PackageNotFoundError:
        package = "unknown"
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return package
    return f"{package}+{commit}{'-dirty' if dirty else ''}"
