"""Many customers' features straight from the tier store (the serving batch path).

``build_features`` starts from canonical *text* (every time parsed, every event
validated, every customer's tier replayed by the batch engine). The store already
holds what that work produces: its ledger keeps accepted events only, with the
instant as ``at_us``, and ``tier_state`` keeps each customer's rules state with
the instant it may next change (``next_due_at_us``). So this path

1. reads the customers' ledger rows, their stored states and open overrides in
   one read transaction, one statement each (the ids travel as one parameter:
   a JSON array on SQLite, an array on PostgreSQL);
2. converts amounts to base-currency micro-units column-wise, exactly as
   ``tier_ml.store.intake.LedgerReader`` does for one row;
3. takes the stored rules state where it is the rules' state at ``as_of``
   (evaluated under this policy at or before ``as_of``, not due again by then,
   no override or grandfathered tier in the way) and replays the others with
   the reference rules engine (``tier_ml.rules.replay``);
4. runs the feature SQL of ``features.sql`` once on DuckDB over both relations.

Same rows as ``store_customer_features`` for each customer and as
``build_features`` over the same events (tests compare every column).
"""

from __future__ import annotations

import atexit
import gc
import json
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.build import _as_of_us, finish_frame
from features.online import TIER_COLUMNS, empty_features
from features.schema import validate_feature_frame
from features.sql import behaviour_sql, features_sql
from tier_ml.policy import Policy
from tier_ml.rules import replay

#: The ledger columns ``LedgerReader.event`` takes, in its argument order (for replays).
_KIND_CODE = "CASE event_type WHEN 'placed' THEN 0 WHEN 'refunded' THEN 1 ELSE 2 END"
#: The ledger columns the event features read; the event type as a small code (no text per
#: row). Not the region: the features take it from the tier state (the latest placement's).
_EVENTS = (
    _KIND_CODE,
    "order_id",
    "customer_id",
    "at_us",
    "amount",
    "currency",
    "channel",
)
_EVENT_TYPES = ("placed", "refunded", "cancelled")
#: Between the values of a text column in ``_packed_ledger`` (the ASCII unit separator).
_SEPARATOR = "\x1f"
_LEDGER_ROW = pa.struct(
    [
        ("kind", pa.int8()),
        ("order_id", pa.string()),
        ("customer_id", pa.string()),
        ("at_us", pa.int64()),
        ("amount", pa.string()),
        ("currency", pa.string()),
        ("channel", pa.string()),
    ]
)
#: From this share of the store's customers on, SQLite scans the ledger once instead of
#: looking every row up through the customer index (about 1.5x faster for 10,000 of 12,000).
_SCAN_SHARE = 0.25
_STATE = (
    "customer_id",
    "tier",
    "rules_tier",
    "eligible_tier",
    "tier_since_us",
    "qualifying_us",
    "pending_us",
    "qualifying_orders",
    "region",
    "last_order_at_us",
    "tier_changes",
    "evaluated_at_us",
    "next_due_at_us",
)
_TIERS = tuple(TIER_COLUMNS)  # the stored state's columns, as the online path reads them


def _among(
    dialect: str, table: str, columns: Sequence[str], ids: list[str], extra: str = "", scan: bool = False
) -> tuple[str, Any]:
    """``SELECT columns FROM table WHERE customer_id among ids``: one statement, one parameter."""
    names = ", ".join(columns)
    if dialect == "postgresql":
        return f"SELECT {names} FROM {table} WHERE customer_id = ANY(%s){extra}", (ids,)
    # json_each is a table-valued function: SQLite joins it to the customer_id index (or,
    # ``scan``, probes it per row of one pass over the table), without the bound-parameter
    # limit or the parse cost of a 10,000-item IN list.
    hint = " NOT INDEXED" if scan else ""
    sql = f"SELECT {names} FROM {table}{hint} WHERE customer_id IN (SELECT value FROM json_each(?)){extra}"
    return sql, (json.dumps(ids),)


@dataclass
class _StoreRead:
    """What one read transaction gives: typed events, current states, ledger rows to replay."""

    events: pa.Table | None
    current: dict[str, tuple[Any, ...]]
    stale_rows: list[Any]
    stale: set[str]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a read creates ~10^6 acyclic objects (row
    tuples and their values): each allocation burst would otherwise trigger collections that
    walk every row read so far (a third of the read's time for 100,000 rows)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_store(engine: Any, ids: list[str], policy: Policy, as_of_us: int) -> _StoreRead:
    """The customers' events, their current stored states and the raw rows of the others."""
    from tier_ml.store.repository import LEDGER_COLUMNS
    from tier_ml.store.unit_of_work import UnitOfWork

    with _gc_paused(), UnitOfWork(engine, read_only=True) as uow:
        connection = uow.repo.connection
        dialect = connection.dialect.name

        def rows(table: str, columns: Sequence[str], among: list[str], extra: str = "", scan: bool = False) -> list[Any]:
            result = connection.exec_driver_sql(*_among(dialect, table, columns, among, extra, scan))
            try:  # the driver's plain tuples: SQLAlchemy rows cost more than the query
                return result.cursor.fetchall() if result.cursor is not None else []
            finally:
                result.close()

        scan = False
        if dialect == "sqlite":
            customers = connection.exec_driver_sql("SELECT count(*) FROM customers").scalar() or 0
            scan = len(ids) >= _SCAN_SHARE * customers
        columns = _packed_ledger(connection, ids, scan) if dialect == "sqlite" else None
        if columns is None:
            columns = _ledger_columns(rows("order_events", _EVENTS, ids, scan=scan))
        events = _event_table(columns, policy, as_of_us)
        if events is None:
            return _StoreRead(None, {}, [], set())
        states = rows("tier_state", _STATE, ids)
        overridden = {r[0] for r in rows("overrides", ("customer_id",), ids, " AND cleared_at_us IS NULL")}
        current = _current_states(states, policy, as_of_us, overridden, uow.repo.active_policy())
        placed = events.filter(pc.equal(events["event_type"], "placed"))["customer_id"]
        stale = set(pc.unique(placed).to_pylist()) - current.keys()
        stale_rows = rows("order_events", LEDGER_COLUMNS, sorted(stale)) if stale else []
    return _StoreRead(events, current, stale_rows, stale)


def _ledger_columns(ledger: list[Any]) -> list[pa.Array]:
    """Rows of ``_EVENTS`` as Arrow columns, transposed in one pass in C (a Python
    transpose of 100,000 rows costs more than reading them)."""
    return pa.array(ledger, type=_LEDGER_ROW).flatten() if ledger else []


def _packed_ledger(connection: Any, ids: list[str], scan: bool) -> list[pa.Array] | None:
    """Rows of ``_EVENTS`` from SQLite as Arrow columns, read as one row of packed text.

    Why: fetched row by row, SQLite hands over ~800,000 Python values for 10,000
    customers (most of the read's time). Here SQLite concatenates each column in C
    (``group_concat`` over one pass, so all columns keep the same row order) and Arrow
    splits and parses the texts, also in C. A value holding the separator (unit
    separator, U+001F) would shift a column: the lengths are checked and the caller then
    reads rows (None).
    """
    # the separator as a literal: ``char(31)`` would be evaluated per row (a third of the read)
    text = ", ".join(
        f"group_concat(coalesce({name}, ''), '{_SEPARATOR}')"
        for name in ("order_id", "customer_id", "amount", "currency", "channel")
    )
    select = f"count(*), group_concat({_KIND_CODE}, ''), group_concat(at_us, ','), {text}"
    from sqlalchemy.exc import DBAPIError

    sql, params = _among("sqlite", "order_events", [select], ids, scan=scan)
    try:
        result = connection.exec_driver_sql(sql, params)
    except DBAPIError:  # e.g. a text over SQLite's length limit (1 GB): read rows instead
        return None
    try:
        n, kinds, at_us, orders, customers, amounts, currencies, channels = result.cursor.fetchone()
    finally:
        result.close()
    if not n:
        return []
    kind_codes = np.frombuffer(kinds.encode("ascii"), dtype=np.uint8)
    texts = [_split(value, _SEPARATOR, n) for value in (orders, customers, amounts, currencies, channels)]
    times = _split(at_us, ",", n)
    if kind_codes.size != n or times is None or any(t is None for t in texts):
        return None
    try:
        at = times.cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # not an integer as stored
        return None
    orders_, customers_, amounts_, currencies_, channels_ = texts
    kinds_ = pa.array(kind_codes - ord("0"), type=pa.int8())
    return [kinds_, orders_, customers_, at, amounts_, currencies_, channels_]


def _split(text: str, separator: str, n: int) -> pa.Array | None:
    """``text.split(separator)`` as an Arrow string array, or None unless it has ``n`` parts."""
    parts = pc.split_pattern(pa.array([text], type=pa.large_string()), separator).flatten()
    return parts.cast(pa.string()) if len(parts) == n else None


def _event_table(columns: list[pa.Array], policy: Policy, as_of_us: int) -> pa.Table | None:
    """The valid events at ``as_of_us`` as typed columns (money in base micro-units).

    ``LedgerReader.event`` column-wise: a placement or refund whose currency the
    policy has no rate for is left out; a cancel's amount is 0 (and never parsed: the
    store keeps a cancel's amount as delivered, whatever it is). Text that repeats
    (currency, channel) is normalised once per distinct value; amounts are parsed by
    Arrow (correctly rounded, as ``float`` is).
    """
    if not columns or len(columns[0]) == 0:
        return None
    kinds, orders, customers, at_us, amounts, currencies, channels = columns
    n = len(kinds)
    kind = kinds.to_numpy()
    at = at_us.to_numpy()
    cancelled = kind == 2
    rate = _per_distinct(currencies, lambda raw: _rate(policy, raw))
    keep = (at <= as_of_us) & (cancelled | ~np.isnan(rate))
    charged = ~cancelled & keep
    value = _amounts(amounts, charged)
    amount_us = np.zeros(n, dtype=np.int64)
    # money.to_micros: floor(amount * rate * 1e6 + 0.5), the same double operations in order
    amount_us[charged] = np.floor(value[charged] * rate[charged] * 1e6 + 0.5).astype(np.int64)
    table = pa.table(
        {
            "customer_id": customers,
            "event_type": pa.DictionaryArray.from_arrays(pa.array(kind), pa.array(_EVENT_TYPES)),
            "order_id": orders,
            "at_us": at,
            "amount_us": amount_us,
            "channel": _stripped(channels),
            "region": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([""])),
        }
    )
    table = table.filter(pa.array(keep))
    return table.set_column(1, "event_type", table["event_type"].cast(pa.string()))


def _rate(policy: Policy, raw: str | None) -> float:
    rate = policy.rate(raw.strip(" ").upper() if raw else "")
    return math.nan if rate is None else rate


def _per_distinct(values: pa.Array, convert: Any) -> np.ndarray:
    """``convert(value)`` per row as float64, computed once per distinct value (in C: the
    dictionary encoding; in Python: one call per distinct value)."""
    encoded = values.dictionary_encode()
    distinct = [convert(v) for v in encoded.dictionary.to_pylist()]
    lookup = np.array([*distinct, convert(None)], dtype=np.float64)
    return lookup[encoded.indices.fill_null(len(distinct)).to_numpy()]


def _amounts(text: pa.Array, parse: np.ndarray) -> np.ndarray:
    """``float(amount.strip(" "))`` of the rows where ``parse`` is set (NaN elsewhere and for
    no amount). Arrow's parser accepts every amount validation accepts and rounds
    correctly, as ``float`` does; text it refuses takes ``float`` row by row."""
    try:
        trimmed = pc.utf8_trim(pc.if_else(pa.array(parse), text, None), " ")
        trimmed = pc.if_else(pc.equal(trimmed, ""), None, trimmed)
        return pc.cast(trimmed, pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        return np.fromiter(
            (float(a.strip(" ")) if p and a else math.nan for a, p in zip(text.to_pylist(), parse, strict=True)),
            dtype=np.float64,
            count=len(text),
        )


def _stripped(values: pa.Array) -> pa.DictionaryArray:
    """``value.strip(" ") if value else ""`` per row, computed once per distinct value."""
    encoded = values.dictionary_encode()
    distinct = [v.strip(" ") for v in encoded.dictionary.to_pylist()]
    indices = encoded.indices.fill_null(len(distinct))
    return pa.DictionaryArray.from_arrays(indices, pa.array([*distinct, ""], type=pa.string()))


def _current_states(
    states: list[Any], policy: Policy, as_of_us: int, overridden: set[str], active: Any
) -> dict[str, tuple[Any, ...]]:
    """Stored rules states that are the rules' state at ``as_of_us``, as ``_TIERS`` tuples.

    A stored state is that when it was evaluated under this policy (same fingerprint,
    by the event path, not by a ``policy apply``: those states are exact too, but the
    ones an apply left unchanged keep their older evaluation instant, so states of that
    instant are replayed rather than told apart; version 1 is never such a rewrite) at or before
    ``as_of_us`` and nothing is due by then
    (maturity, window exit, grace end, an event dated later: ``next_due_at_us``), and
    the effective tier is the rules tier (an override or a grandfathered floor above the
    rules tier changes ``tier_since``; a floor at or below it changes nothing stored).
    """
    if active is None or active.policy.fingerprint != policy.fingerprint:
        return {}
    rank = {name: i for i, name in enumerate(policy.tier_names)}
    current = {}
    for (
        customer_id, tier, rules_tier, eligible, since, qualifying, pending, orders, region,
        last_order, changes, evaluated, due,
    ) in states:
        if (
            rules_tier is None
            or tier != rules_tier
            or customer_id in overridden
            or evaluated > as_of_us
            or evaluated < active.created_at_us
            or (evaluated == active.created_at_us and active.version > 1)
            or (due is not None and due <= as_of_us)
            or rules_tier not in rank
            or eligible not in rank
        ):
            continue
        current[customer_id] = (
            customer_id, rank[rules_tier], rank[eligible], qualifying, pending, orders,
            since, last_order, region if region is not None else "", changes,
        )
    return current


def _replayed_states(
    ledger: list[Any], customer_ids: set[str], policy: Policy, as_of_us: int
) -> list[tuple[Any, ...]]:
    """The reference rules engine's state at ``as_of_us`` for customers without a current one
    (``ledger``: their rows of ``tier_ml.store.repository.LEDGER_COLUMNS``)."""
    from tier_ml.store.intake import LedgerReader, without_orphans

    reader = LedgerReader(policy)
    events: dict[str, list[Any]] = {c: [] for c in customer_ids}
    for row in ledger:
        if row[3] in events:
            event = reader.event(*row)
            if event is not None:
                events[row[3]].append(event)
    out = []
    for customer_id in sorted(customer_ids):
        state = replay(policy, customer_id, without_orphans(events[customer_id]), as_of_us)
        if state is not None:
            out.append(
                (
                    customer_id, state.tier, state.eligible_tier, state.qualifying_us, state.pending_us,
                    state.qualifying_orders, state.tier_since_us, state.last_order_at_us,
                    state.region, len(state.changes),
                )
            )
    return out


def _tiers_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(_TIERS)
    types = [pa.string(), *[pa.int64()] * 7, pa.string(), pa.int64()]
    return pa.table(
        {name: pa.array(list(values), type=t) for name, values, t in zip(_TIERS, columns, types, strict=True)}
    )


_DATABASE: list[duckdb.DuckDBPyConnection] = []
_DATABASE_LOCK = threading.Lock()


def _duckdb() -> duckdb.DuckDBPyConnection:
    """The process's in-memory DuckDB database, opened on first use: opening one costs
    20-40 ms, a connection to it (``cursor()``) well under one. One thread per query:
    the feature query is small (tens of milliseconds), and on a busy machine a second
    thread costs more CPU than it saves time; a server runs many requests at once anyway."""
    with _DATABASE_LOCK:
        if not _DATABASE:
            _DATABASE.append(duckdb.connect(config={"threads": 1}))
            atexit.register(_close_duckdb)
        return _DATABASE[0]


def _close_duckdb() -> None:
    """Close and drop the database before the interpreter tears its modules down."""
    with _DATABASE_LOCK:
        while _DATABASE:
            _DATABASE.pop().close()


def store_batch_features(
    engine: Any,
    customer_ids: Sequence[str],
    policy: Policy,
    as_of: datetime | int,
    *,
    check: bool = True,
) -> Any:
    """Feature rows (``build_features``' columns, sorted by customer) of the given customers.

    Customers without a placed order at or before ``as_of`` (or unknown to the store)
    have no row. ``engine`` is the tier store's SQLAlchemy engine.
    """
    as_of_us = _as_of_us(as_of)
    ids = sorted({str(c) for c in customer_ids})
    if not ids:
        return empty_features()
    read = _read_store(engine, ids, policy, as_of_us)
    if read.events is None:
        return empty_features()
    tiers = [read.current[c] for c in sorted(read.current)]
    tiers.extend(_replayed_states(read.stale_rows, read.stale, policy, as_of_us))
    con = _duckdb().cursor()  # a connection of its own: registrations stay private to it
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("store_events", read.events)
        con.register("store_tiers", _tiers_table(tiers))
        behaviour = f"({behaviour_sql('store_events', as_of_us)})"
        frame = con.execute(features_sql(policy, as_of_us, behaviour, "store_tiers")).df()
    finally:
        con.close()
    frame = finish_frame(frame, as_of_us)
    return validate_feature_frame(frame) if check else frame
