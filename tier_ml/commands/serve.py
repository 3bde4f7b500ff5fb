"""``tier-ml serve`` (the HTTP service under uvicorn) and ``tier-ml apikey`` (keys in the store).

``serve`` builds the app with :func:`serving.app.create_app` from the environment
(``TIER_ML_*``, ``MLFLOW_TRACKING_URI``) and the options given, and runs it on
127.0.0.1:8000 by default (loopback: put a reverse proxy with TLS in front to
expose it). ``apikey create`` prints the new key once; only its hash is stored.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from tier_ml.commands.store import DbOption, _fail, _open, _store_errors

apikey_app = typer.Typer(help="API keys of the HTTP service (stored hashed).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and the ``apikey`` group to the ``tier-ml`` app."""
    app.command("serve")(serve)
    app.add_typer(apikey_app, name="apikey")


def serve(
    host: Annotated[
        str, typer.Option(help="Interface to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    db: DbOption = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow registry (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes (each loads the models).", min=1)
    ] = 1,
    now: Annotated[
        str | None, typer.Option("--now", help="A fixed clock, ISO 8601 (demos on historic data).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve the HTTP API (tiers, orders, predictions, segments, overrides, audit); docs at /docs."""
    import uvicorn
    from pydantic import ValidationError
    from uvicorn.config import LOG_LEVELS

    from serving.settings import load_settings
    from tier_ml.store.apikeys import ApiKeyError

    if log_level.lower() not in LOG_LEVELS:
        raise _fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")

    # One OpenMP thread per worker: LightGBM's default thread team costs ~15 ms of
    # spinning per one-row prediction on a busy machine (measured 109 ms -> 13 ms);
    # scale with --workers instead. An explicit OMP_NUM_THREADS wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    overrides = {"database_url": db, "mlflow_tracking_uri": tracking_uri, "now": now}
    for name, value in overrides.items():  # worker processes read the environment
        if value is not None:
            os.environ[
                "MLFLOW_TRACKING_URI"
                if name == "mlflow_tracking_uri"
                else f"TIER_ML_{name.upper()}"
            ] = value
    try:
        settings = load_settings()
        from serving.auth import parse_env_keys

        parse_env_keys(settings.api_keys)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(f"setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except ApiKeyError as exc:
        raise _fail(str(exc)) from None
    _open(settings.database_url).dispose()  # a bad --db fails here with one line
    options = {"host": host, "port": port, "log_level": log_level, "access_log": access_log}
    if workers > 1:
        uvicorn.run("serving.app:create_app", factory=True, workers=workers, **options)
        return
    from serving.app import create_app

    uvicorn.run(create_app(settings), **options)


@apikey_app.command("create")
def apikey_create(
    name: Annotated[
        str, typer.Option("--name", help="Who uses the key (the actor in the audit log).")
    ],
    scopes: Annotated[
        str,
        typer.Option(
            "--scopes",
            help="Comma separated: events:write, tiers:read, predictions:read, admin, audit:read, or all.",
        ),
    ],
    db: DbOption = None,
) -> None:
    """Create a key and print it once (only its SHA-256 is stored)."""
    from tier_ml.commands.store import _console, _now
    from tier_ml.store.apikeys import ApiKeyError, create_key

    engine = _open(db)
    try:
        with _store_errors():
            key, stored = create_key(engine, name, scopes.split(","), _now(None))
    except ApiKeyError as exc:
        raise _fail(str(exc)) from None
    typer.echo(key)
    _console().print(
        f"created key {stored.name!r} with scopes {', '.join(sorted(stored.scopes))}; "
        "it is shown only now: keep it in a secret store",
        highlight=False,
    )


@apikey_app.command("list")
def apikey_list(db: DbOption = None) -> None:
    """The stored keys (names, scopes, status; never the keys)."""
    from tier_ml.store.apikeys import list_keys
    from tier_ml.store.service import iso_instant

    engine = _open(db)
    with _store_errors():
        keys = list_keys(engine)
    for key in keys:
        status = (
            "live" if key.revoked_at_us is None else f"revoked {iso_instant(key.revoked_at_us)}"
        )
        typer.echo(
            f"{key.id}\t{key.name}\t{','.join(sorted(key.scopes))}\t{iso_instant(key.created_at_us)}\t{status}"
        )


@apikey_app.command("revoke")
def apikey_revoke(
    name: Annotated[str, typer.Option("--name", help="Revoke every live key with this name.")],
    db: DbOption = None,
) -> None:
    """Revoke keys by name (the service stops accepting them within seconds)."""
    from tier_ml.commands.store import _console, _now
    from tier_ml.store.apikeys import revoke_key

    engine = _open(db)
    with _store_errors():
        count = revoke_key(engine, name, _now(None))
    if count == 0:
        raise _fail(f"no live key named {name!r}")
    _console().print(f"revoked {count} key(s) named {name!r}", highlight=False)
