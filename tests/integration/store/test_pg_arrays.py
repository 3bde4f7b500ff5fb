"""PostgreSQL array parameters built as text (``repository.pg_array_literal``) reach the server
as the very values given: any text (quotes, backslashes, braces, commas, the word NULL),
NULLs, and integers up to 64 bits."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from tier_ml.store.repository import pg_array_literal

pytestmark = pytest.mark.postgres

TEXTS = st.lists(
    st.one_of(
        st.none(),
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
        st.sampled_from(['","', '"', "\\", "NULL", "{}", " a ", "a,b", "", "{", '\\"']),
    ),
    max_size=30,
)
INTEGERS = st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=30)


@pytest.fixture(scope="module")
def connection(request):
    from tests.integration.store.conftest import postgres_base_url

    engine = create_engine(postgres_base_url().replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        yield connection.connection.driver_connection
    engine.dispose()


def _round_trip(connection, literal: str, kind: str) -> list:
    row = connection.execute(f"SELECT %s::{kind}", (literal,)).fetchone()
    return row[0]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=TEXTS)
def test_text_arrays_arrive_as_given(connection, values) -> None:
    assert _round_trip(connection, pg_array_literal(values, text=True), "text[]") == values


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=INTEGERS)
def test_integer_arrays_arrive_as_given(connection, values) -> None:
    assert _round_trip(connection, pg_array_literal(values, text=False), "bigint[]") == values


def test_a_tuple_of_keys_is_one_array(connection) -> None:
    keys = ("C1", "C2", 'say "hi"')
    assert _round_trip(connection, pg_array_literal(keys, text=True), "text[]") == list(keys)
