"""Alembic environment of the tier store.

``tier_ml.store.db.upgrade_to_head`` hands over an open connection (in
``config.attributes["connection"]``); the ``alembic`` command line instead
connects to ``TIER_ML_DATABASE_URL`` through the store's engine factory.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from tier_ml.store.db import create_store_engine
from tier_ml.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    from tier_ml.settings import get_settings

    engine = create_store_engine(get_settings().database_url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()
