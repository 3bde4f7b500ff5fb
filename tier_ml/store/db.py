"""Database engines for the tier store: embedded SQLite or PostgreSQL, same code.

SQLite (the default, no set-up) runs in WAL mode with ``synchronous=NORMAL``
(a killed process loses no committed transaction), a ``busy_timeout`` so
writers wait instead of failing, and foreign keys on. Each connection keeps up
to ``SQLITE_CACHE_MIB`` of pages in memory (SQLite's default is 2 MiB): every
batch looks up and inserts keys at random places of the ledger's indexes
(event ids, order ids, customer ids), and with a small page cache each of those
pages is read again from the operating system, a cost that grew with the store
(ingest of a 1M-event stream slowed down towards its end). For the same
reason the write-ahead log is copied back into the database file (a checkpoint,
with its fsyncs) every ``SQLITE_WAL_CHECKPOINT_PAGES`` pages instead of every
1,000: a batch dirties a page or two of each customer-keyed index per customer
it touches, so with SQLite's default every batch paid a checkpoint, and
consecutive batches' copies of the same pages are now written back once. Every write transaction
starts with ``BEGIN IMMEDIATE``: it takes SQLite's single write lock at the
start, so two writers never read the same state and then both write it.
Read-only units of work start a deferred ``BEGIN`` and never block writers.

PostgreSQL goes through psycopg 3 (``postgresql+psycopg://``); plain
``postgresql://`` URLs are mapped to it. Writers lock the customers they touch
(see ``repository.lock_customers``).

:func:`upgrade_to_head` brings a database to the latest Alembic revision using
the ``alembic.ini`` shipped inside the package, so an installed tier-ml can
create its own store.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

MIGRATIONS_INI = Path(__file__).with_name("alembic.ini")
SQLITE_BUSY_TIMEOUT_MS = 60_000
#: Page cache per SQLite connection, MiB (allocated as pages are read, not up front).
SQLITE_CACHE_MIB = 256
#: WAL pages between automatic checkpoints (SQLite's default: 1,000), about 40 MiB.
SQLITE_WAL_CHECKPOINT_PAGES = 10_000
READ_ONLY = "tier_ml_read_only"  # execution option: a deferred (reading) SQLite transaction
#: Any number: the key of the PostgreSQL advisory lock that serializes migrations.
MIGRATION_LOCK_KEY = 74_311_901


def normalize_url(url: str | URL) -> URL:
    """The URL with PostgreSQL pointed at psycopg 3 (the driver tier-ml ships with)."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres", "postgresql+psycopg2"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_store_engine(url: str | URL, **options: Any) -> Engine:
    """An engine for the store at ``url`` with the connection set-up described above."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **options)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite:///path or postgresql+psycopg://..."
        )
    return create_engine(parsed, pool_pre_ping=True, **options)


def _sqlite_engine(url: URL, **options: Any) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_MIB * 1024}")
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_CHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


_migration_lock = threading.Lock()


def upgrade_to_head(engine: Engine) -> None:
    """Create or upgrade the store's schema to the latest migration (safe to call every time)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(MIGRATIONS_INI))
    config.set_main_option("script_location", str(MIGRATIONS_INI.parent / "migrations"))
    with _migration_lock, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect().execution_options(**{READ_ONLY: True}) as connection:
        return MigrationContext.configure(connection).get_current_revision()
