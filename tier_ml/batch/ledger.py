"""The ``ledger`` stage: replays of ``event_id``, orders placed twice, refunds and cancels.

What ``tier_ml.events.validate`` does row by row, as set-based SQL over ``checked``:
repeated ids are found by sorting 32-bit hashes in numpy, and only the few
candidates are compared by text. Leaves ``copies`` (replays), ``placed_repeats``,
``adjustments`` (refunds and cancels matched to their order) and the views
``unique_events`` and ``placed_orders``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow as pa

from tier_ml.arrow_numpy import to_arrow, to_numpy
from tier_ml.batch.validation import PLACED

# Content that decides which copy of a replayed event_id is kept (as in tier_ml.events).
REPLAY_CONTENT = ("at_us", "event_type", "order_id", "customer_id", "amount_us", "currency", "channel", "region")


def _id_hashes(con: duckdb.DuckDBPyConnection, column: str, where: str) -> np.ndarray:
    """Hash ``column`` of the rows of ``checked`` that ``where`` selects, as a numpy array."""
    values = to_numpy(con.sql(f"SELECT {column} FROM checked WHERE {where}").to_arrow_table().column(0))
    return values if values.flags.writeable else values.copy()


def _repeated(values: np.ndarray) -> pa.Table:
    """The values found more than once in ``values`` (sorted in place), as a one-column table ``h``.

    Sorting ten million integers in numpy costs about half of grouping them in a
    DuckDB hash table (nearly every id is unique, so the table would hold them all).
    The values are 32-bit hashes, which sort in 60 % of the time of 64-bit ones; ten
    million ids then share about 12,000 of them by chance, which only add candidates
    that the comparison by text (``_ledger_sql``) discards.
    """
    values.sort()
    repeated = np.unique(values[1:][values[1:] == values[:-1]])
    return pa.table({"h": to_arrow(repeated, pa.uint32())})


def _ledger_sql() -> tuple[list[str], list[str]]:
    """Replays, then duplicate orders and orphan refunds, as in ``tier_ml.events.validate``.

    Repeated ids are first found by their 32-bit hash (tables ``repeated_events`` and
    ``repeated_orders``, see ``ledger_stage``); the few candidates are then compared by
    their text, so a shared hash only adds a candidate.
    """
    content = ", ".join(REPLAY_CONTENT)
    mine = ", ".join(f"r.{c}" for c in REPLAY_CONTENT)
    first = ", ".join(f"f.{c}" for c in REPLAY_CONTENT)
    replays = [
        f"""
        CREATE OR REPLACE TEMP TABLE copies AS
        WITH candidates AS (
            SELECT * REPLACE (upper(coalesce(currency, '')) AS currency, coalesce(channel, '') AS channel)
            FROM checked
            WHERE ok AND event_hash IN (SELECT h FROM repeated_events)
        ), repeated AS (
            SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY {content}, row) AS copy
            FROM candidates
        )
        SELECT r.row, r.event_id, r.copy, ({mine}) = ({first}) AS same_content
        FROM repeated r JOIN repeated f ON f.event_id = r.event_id AND f.copy = 1
        WHERE r.copy > 1
        """,
        # From here on ``ok`` also means "kept": replay copies are dropped (a flag update is
        # much cheaper than an anti-join on every later read of ten million rows).
        "UPDATE checked SET ok = false WHERE row IN (SELECT row FROM copies)",
        "CREATE OR REPLACE TEMP VIEW unique_events AS SELECT * FROM checked WHERE ok",
    ]
    orders = [
        f"""
        CREATE OR REPLACE TEMP TABLE placed_repeats AS
        SELECT row, order_id, event_id,
               row_number() OVER (PARTITION BY order_id ORDER BY at_us, event_id) AS nth,
               first_value(event_id) OVER (PARTITION BY order_id ORDER BY at_us, event_id) AS first_event_id
        FROM unique_events
        WHERE event_type = {PLACED} AND order_hash IN (SELECT h FROM repeated_orders)
        """,
        # Second placements of an order are dropped the same way.
        "UPDATE checked SET ok = false WHERE row IN (SELECT row FROM placed_repeats WHERE nth > 1)",
        f"CREATE OR REPLACE TEMP VIEW placed_orders AS SELECT * FROM checked WHERE ok AND event_type = {PLACED}",
        f"""
        CREATE OR REPLACE TEMP TABLE adjustments AS
        SELECT a.row, a.event_id, a.event_type, a.order_id, a.customer_id, a.at_us, a.amount_us,
               o.customer_id AS order_customer, o.at_us AS placed_at_us, o.amount_us AS value_us,
               o.row AS placed_row,
               CASE
                 WHEN o.order_id IS NULL OR o.at_us > a.at_us THEN 'unknown_order'
                 WHEN o.customer_id <> a.customer_id THEN 'customer_mismatch'
               END AS reason
        FROM unique_events a LEFT JOIN (
            -- only orders that are adjusted: a cheap filter on the hash before the join on text
            SELECT * FROM placed_orders
            WHERE order_hash IN (SELECT order_hash FROM unique_events WHERE event_type <> {PLACED})
        ) o ON o.order_id = a.order_id
        WHERE a.event_type <> {PLACED}
        """,
    ]
    return replays, orders


def ledger_stage(con: duckdb.DuckDBPyConnection) -> None:
    """Run ``_ledger_sql``: replays of ``event_id`` first, then repeated orders among the rest."""
    replays, orders = _ledger_sql()
    # Orders placed more than once are looked for before replays are dropped: a replayed
    # placement adds a candidate (compared by text later), and the two sorts, which
    # release the GIL, run side by side.
    events = _id_hashes(con, "event_hash", "ok")
    placed = _id_hashes(con, "order_hash", f"ok AND event_type = {PLACED}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        repeated_events, repeated_orders = pool.map(_repeated, [events, placed])
    del events, placed
    con.register("repeated_events", repeated_events)
    con.register("repeated_orders", repeated_orders)
    for sql in replays:
        con.execute(sql)
    for sql in orders:
        con.execute(sql)
    for column in ("event_hash", "order_hash"):  # done with: free them before the big sort
        con.execute(f"ALTER TABLE checked DROP COLUMN {column}")
