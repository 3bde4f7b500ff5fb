"""Fixtures of the tier store tests: a real store on SQLite (a file) and on PostgreSQL.

``store_url`` runs each test on both backends. PostgreSQL comes from
``TIER_ML_TEST_POSTGRES_URL`` (``scripts/with-postgres.sh`` starts a throwaway
server and sets it); every test gets its own schema (``search_path`` set through
the connection options) and drops it afterwards. Without the variable the
PostgreSQL cases are skipped locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from tier_ml.store.service import open_store

POSTGRES_ENV = "TIER_ML_TEST_POSTGRES_URL"


def postgres_base_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} is not set: CI must run the store tests on PostgreSQL")
        pytest.skip(f"{POSTGRES_ENV} not set (run under scripts/with-postgres.sh)")
    return url


@pytest.fixture
def postgres_schema_url() -> Iterator[object]:
    """A factory of fresh PostgreSQL schemas (URLs), all dropped at the end of the test."""
    base = make_url(postgres_base_url()).set(drivername="postgresql+psycopg")
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    schemas: list[str] = []

    def new_url() -> str:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    yield new_url
    with admin.connect() as connection:
        for schema in schemas:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def new_store_url(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
):
    """A factory of fresh store URLs on the test's backend (SQLite file or PostgreSQL schema)."""
    if backend == "postgresql":
        return request.getfixturevalue("postgres_schema_url")
    folder = tmp_path_factory.mktemp("store")
    counter = iter(range(1_000))

    def new_url() -> str:
        return f"sqlite:///{folder / f'store{next(counter)}.sqlite'}"

    return new_url


@pytest.fixture
def store_url(new_store_url) -> str:
    """One fresh store URL on the test's backend."""
    return new_store_url()


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """An open, migrated, empty store on the test's backend."""
    engine = open_store(store_url)
    yield engine
    engine.dispose()
