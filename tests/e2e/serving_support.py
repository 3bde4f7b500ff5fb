"""Helpers of the serving tests: a real SQLite store with the training fixture's simulated
history, its trained models in their real MLflow registry (``tests/integration/
training_fixtures.py``), and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: The instant the training fixture trains at: the service's clock in these tests.
AS_OF = datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC)
AS_OF_TEXT = "2025-06-30T23:59:59Z"
SCOPES = ["events:write", "tiers:read", "predictions:read", "admin", "audit:read"]
#: name:key pairs: one key per scope, one with all of them.
KEYS = {scope: f"key-{scope.replace(':', '-')}" for scope in SCOPES}
ALL_KEY = "key-all"
ENV_KEYS = ";".join(
    [f"{s.replace(':', '-')}:{k}:{s}" for s, k in KEYS.items()] + [f"ops:{ALL_KEY}:all"]
)


def build_store(path: Path, events: Path) -> str:
    """A SQLite store with an events file applied as of ``AS_OF``; its URL."""
    from tier_ml.events import frame_records, read_events
    from tier_ml.money import instant_to_micros
    from tier_ml.store.service import apply_events, open_store

    url = f"sqlite:///{path}"
    engine = open_store(url)
    apply_events(engine, frame_records(read_events(events)), instant_to_micros(AS_OF))
    engine.dispose()
    return url


def champion_versions(tracking_uri: str) -> dict[str, str]:
    """The registry versions the alias ``champion`` points to."""
    from mlflow import MlflowClient

    from serving.settings import CHURN_MODEL, TIER_CHANGE_MODEL

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return {
        name: str(client.get_model_version_by_alias(name, "champion").version)
        for name in (CHURN_MODEL, TIER_CHANGE_MODEL)
    }


def copy_store(source_url: str, target: Path) -> str:
    """A copy of a SQLite store file (tests that write get their own)."""
    source = Path(source_url.removeprefix("sqlite:///"))
    shutil.copyfile(source, target)
    return f"sqlite:///{target}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app: Any, port: int | None = None) -> Iterator[str]:
    """A real uvicorn server for ``app`` on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def settings_for(store_url: str, tracking_uri: str, **extra: Any) -> Any:
    from serving.settings import ServingSettings

    values = {
        "database_url": store_url,
        "mlflow_tracking_uri": tracking_uri,
        "api_keys": ENV_KEYS,
        "now": AS_OF,
        "at_risk_cache_seconds": 60.0,
        **extra,
    }
    return ServingSettings(**values)


def headers(key: str = ALL_KEY) -> dict[str, str]:
    return {"X-API-Key": key}
