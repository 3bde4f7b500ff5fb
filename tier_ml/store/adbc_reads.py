"""Bulk reads of the store straight into Arrow through ADBC, without Python objects per value.

Through the Python drivers a million-event ledger costs about as much CPU as
classifying it: ``sqlite3`` hands over one Python object per value, and
psycopg one Python call per row of a ``COPY``. That alone kept ``policy
apply`` above three times a ``classify``. Apache Arrow's ADBC drivers (C) fill
Arrow columns directly: 2.7x faster on SQLite, 1.5x on PostgreSQL.

A driver of its own means a connection of its own, which must read what the
caller's transaction reads:

- SQLite: the caller bounds an append-only table by the last id its own
  transaction sees (ids rise and writers are serialised, so that is exact);
  ADBC sees committed rows only.
- PostgreSQL: the caller exports its snapshot (``pg_export_snapshot()``) and
  the read runs in a transaction that imports it.

The ADBC SQLite driver carries its own copy of SQLite. Two copies of SQLite
must never open one database file in the same process: closing a file in one
drops the POSIX locks the other holds (sqlite.org/howtocorrupt.html, 2.2.1; we
saw "disk I/O error" on the store right after). So each SQLite query runs in a
child process (about 0.25 s to start), which hands the rows back as an Arrow
IPC stream through a pipe. That driver infers a column's type from the rows of
a batch (a text column whose first rows are all NULL would be taken for
integers, and then fail), so a query's whole result is read as one batch, and
every column is cast to the type asked for.

Several queries (parts of one table) are read side by side: child processes on
SQLite, connections sharing the snapshot on PostgreSQL. Any failure returns
``None``: the caller then reads through its own driver, so ADBC only ever makes
a read faster.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

log = logging.getLogger(__name__)

#: Rows ADBC's SQLite driver reads before it fixes a column's type: all (the driver refuses
#: 2**31 - 1).
_ONE_BATCH = str(2**30)

Fields = Sequence[tuple[str, pa.DataType]]


def read_sqlite(database: str | None, sqls: Sequence[str], fields: Fields) -> pa.Table | None:
    """The rows of the queries ``sqls``, one after the other, in the SQLite file ``database``
    as one Arrow table of ``fields`` (its columns, in order). Each query is read by ADBC in a
    child process of its own, all at once (on several cores, while the caller goes on).
    ``None`` when that cannot read it (an in-memory or missing database, a value of another
    type)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if not Path(database).is_file():
        return None
    children = [
        subprocess.Popen(
            [sys.executable, "-m", __name__, database, sql],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for sql in sqls
    ]
    tables, problems = [], []
    for child in children:  # each child's rows come as one batch, at its end
        with child:
            assert child.stdout is not None and child.stderr is not None
            with contextlib.suppress(pa.ArrowInvalid):  # nothing came: the child failed
                tables.append(pa.ipc.open_stream(child.stdout).read_all())
            problems.append(child.stderr.read().decode(errors="replace"))
        if child.returncode != 0:
            problems.append(f"exit status {child.returncode}")
    if len(tables) != len(children) or any(c.returncode != 0 for c in children):
        problem = " ".join(p for p in problems if p)[-500:]
        log.warning("ADBC read of %s failed, reading through sqlite3: %s", database, problem)
        return None
    typed = [_as_fields(table, fields) for table in tables]
    if any(table is None for table in typed):
        return None
    return pa.concat_tables(typed)


def _sqlite_child(database: str, sql: str) -> None:
    """In the child process: the rows of ``sql`` as an Arrow IPC stream on standard output
    (a pipe: no file to write and read back). ADBC's low-level API: its DB-API module
    imports pandas, which would double the child's start."""
    import adbc_driver_manager
    import adbc_driver_sqlite

    with (
        adbc_driver_sqlite.connect(database) as db,
        adbc_driver_manager.AdbcConnection(db) as connection,
        adbc_driver_manager.AdbcStatement(connection) as statement,
    ):
        statement.set_options(**{"adbc.sqlite.query.batch_rows": _ONE_BATCH})
        statement.set_sql_query(sql)
        stream, _ = statement.execute_query()
        reader = pa.RecordBatchReader._import_from_c(stream.address)
        with (
            pa.PythonFile(sys.stdout.buffer, mode="w") as sink,
            pa.ipc.new_stream(sink, reader.schema) as writer,
        ):
            for batch in reader:
                writer.write_batch(batch)


def read_postgres(uri: str, snapshot: str, sqls: Sequence[str], fields: Fields) -> pa.Table | None:
    """The rows of the queries ``sqls``, one after the other, on the PostgreSQL server at
    ``uri`` (a libpq URI) as seen by the exported ``snapshot``, as one Arrow table of
    ``fields``: each query on a connection of its own, all at once (each has a server
    process, and ADBC decodes outside the GIL). ``None`` when ADBC cannot read them."""

    def read(sql: str) -> pa.Table | None:
        def run(cursor: Any) -> None:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute("SET TRANSACTION SNAPSHOT '" + snapshot.replace("'", "''") + "'")
            cursor.execute(sql)

        return _read("adbc_driver_postgresql.dbapi", uri, run, fields)

    with ThreadPoolExecutor(max_workers=len(sqls), thread_name_prefix="tier-ml-read") as pool:
        tables = list(pool.map(read, sqls))
    if any(table is None for table in tables):
        return None
    return pa.concat_tables(tables)


def _read(module: str, target: str, run: Callable[[Any], None], fields: Fields) -> pa.Table | None:
    try:
        dbapi = importlib.import_module(module)
        with dbapi.connect(target, autocommit=True) as connection, connection.cursor() as cursor:
            run(cursor)
            table = cursor.fetch_arrow_table()
    except Exception as exc:  # any failure: the caller reads through its own driver
        log.warning("ADBC read (%s) failed, reading through the Python driver: %s", module, exc)
        return None
    return _as_fields(table, fields)


def _as_fields(table: pa.Table, fields: Fields) -> pa.Table | None:
    """``table`` with the names and types of ``fields`` (``None`` if it cannot have them)."""
    schema = pa.schema(list(fields))
    if table.num_columns != len(schema):
        return None
    try:
        return table.rename_columns(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


if __name__ == "__main__":  # the child process of ``read_sqlite``
    _sqlite_child(*sys.argv[1:3])
