"""The transaction scope of a use case, and retrying it when the database asks to.

A :class:`UnitOfWork` opens one transaction and binds a :class:`Repository`
to it; nothing is written unless :meth:`UnitOfWork.commit` is called, so a
crash or an exception anywhere in a use case leaves the store as it was. The
ledger rows a writing unit of work read enter the process's ledger cache
(``cache``) only once it has committed.

:func:`run_in_transaction` runs a use case in a fresh unit of work and runs it
again, from the start, when the database reports a conflict that a retry
resolves: SQLite's ``database is locked`` (after its busy timeout), and on
PostgreSQL serialization failures, deadlocks and unique violations raised by
a concurrent writer that inserted the same event or order first (the retry
then sees that row and reports the event as a duplicate or a reject).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tier_ml.store.cache import ledger_cache
from tier_ml.store.db import READ_ONLY
from tier_ml.store.repository import Repository

T = TypeVar("T")

#: PostgreSQL SQLSTATEs worth a retry: serialization failure, deadlock, lock timeout, unique violation.
RETRY_SQLSTATES = {"40001", "40P01", "55P03", "23505"}
ATTEMPTS = 12


class UnitOfWork:
    """One transaction on the store with its repository (``read_only`` never blocks writers)."""

    def __init__(self, engine: Engine, *, read_only: bool = False, exclusive: bool = False) -> None:
        self.engine = engine
        self.read_only = read_only
        self.exclusive = exclusive
        self._connection: Connection | None = None
        self._committed = False

    def __enter__(self) -> UnitOfWork:
        connection = self.engine.connect()
        if self.read_only:
            connection = connection.execution_options(**{READ_ONLY: True})
        self._connection = connection
        connection.begin()
        cache = None if self.read_only else ledger_cache(self.engine)
        self.repo = Repository(connection, cache)
        if not self.read_only:
            self.repo.lock_store(exclusive=self.exclusive)
        return self

    def commit(self) -> None:
        assert self._connection is not None, "commit outside the unit of work"
        self._connection.commit()
        self._committed = True
        if self.repo.cache is not None and self.repo.staged:
            self.repo.cache.store(self.repo.staged)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._connection is not None
        try:
            if not self._committed:
                self._connection.rollback()
        finally:
            self._connection.close()
            self._connection = None


def is_retryable(error: BaseException) -> bool:
    """Whether a database error is a conflict that running the transaction again resolves."""
    if not isinstance(error, DBAPIError):
        return False
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate in RETRY_SQLSTATES:
        return True
    message = str(original).lower()
    return "database is locked" in message or "database is busy" in message


def run_in_transaction(
    engine: Engine,
    work: Callable[[UnitOfWork], T],
    *,
    read_only: bool = False,
    exclusive: bool = False,
    attempts: int = ATTEMPTS,
) -> T:
    """Run ``work`` in one transaction and commit; retry the whole of it on a conflict."""
    for attempt in range(1, attempts + 1):
        try:
            with UnitOfWork(engine, read_only=read_only, exclusive=exclusive) as uow:
                result = work(uow)
                uow.commit()
                return result
        except DBAPIError as error:
            if attempt == attempts or not is_retryable(error):
                raise
            time.sleep(min(0.5, 0.005 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")
