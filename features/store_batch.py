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

import gc
import json
import math
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
_LEDGER = ("event_id", "event_type", "order_id", "customer_id", "at_us", "amount", "currency", "channel", "region")
#: The ledger columns the event features read; the event type as a small code (no text per
#: row). Not the region: the features take it from the tier state (the latest placement's).
_EVENTS = (
    "CASE event_type WHEN 'placed' THEN 0 WHEN 'refunded' THEN 1 ELSE 2 END",
    "order_id",
    "customer_id",
    "at_us",
    "amount",
    "currency",
    "channel",
)
_EVENT_TYPES = ("placed", "refunded", "cancelled")
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
        events = _event_table(rows("order_events", _EVENTS, ids, scan=scan), policy, as_of_us)
        if events is None:
            return _StoreRead(None, {}, [], set())
        states = rows("tier_state", _STATE, ids)
        overridden = {r[0] for r in rows("overrides", ("customer_id",), ids, " AND cleared_at_us IS NULL")}
        current = _current_states(states, policy, as_of_us, overridden, uow.repo.active_policy())
        placed = events.filter(pc.equal(events["event_type"], "placed"))["customer_id"]
        stale = set(pc.unique(placed).to_pylist()) - current.keys()
        stale_rows = rows("order_events", _LEDGER, sorted(stale)) if stale else []
    return _StoreRead(events, current, stale_rows, stale)


def _event_table(ledger: list[Any], policy: Policy, as_of_us: int) -> pa.Table | None:
    """The valid events at ``as_of_us`` as typed columns (money in base micro-units).

    ``LedgerReader.event`` column-wise: a placement or refund whose currency the
    policy has no rate for is left out; a cancel's amount is 0. Text that repeats
    (currency, channel, region) is normalised once per distinct value.
    """
    if not ledger:
        return None
    n = len(ledger)
    kinds, orders, customers, at_us, amounts, currencies, channels = zip(*ledger, strict=True)
    kind = np.fromiter(kinds, dtype=np.int8, count=n)
    at = np.fromiter(at_us, dtype=np.int64, count=n)
    cancelled = kind == 2
    rate_of = {}
    for raw in set(currencies):
        rate = policy.rate(raw.strip(" ").upper() if raw else "")
        rate_of[raw] = math.nan if rate is None else rate
    rate = np.fromiter(map(rate_of.__getitem__, currencies), dtype=np.float64, count=n)
    value = np.fromiter((float(a) if a else math.nan for a in amounts), dtype=np.float64, count=n)
    keep = (at <= as_of_us) & (cancelled | ~np.isnan(rate))
    charged = ~cancelled & keep
    amount_us = np.zeros(n, dtype=np.int64)
    # money.to_micros: floor(amount * rate * 1e6 + 0.5), the same double operations in order
    amount_us[charged] = np.floor(value[charged] * rate[charged] * 1e6 + 0.5).astype(np.int64)
    table = pa.table(
        {
            "customer_id": pa.array(customers, type=pa.string()),
            "event_type": pa.DictionaryArray.from_arrays(pa.array(kind), pa.array(_EVENT_TYPES)),
            "order_id": pa.array(orders, type=pa.string()),
            "at_us": at,
            "amount_us": amount_us,
            "channel": _stripped(channels),
            "region": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([""])),
        }
    )
    table = table.filter(pa.array(keep))
    return table.set_column(1, "event_type", table["event_type"].cast(pa.string()))


def _stripped(values: tuple[str | None, ...]) -> pa.DictionaryArray:
    """``value.strip(" ") if value else ""`` per row, computed once per distinct value."""
    distinct = list(set(values))
    index = {v: i for i, v in enumerate(distinct)}
    codes = np.fromiter(map(index.__getitem__, values), dtype=np.int32, count=len(values))
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array([v.strip(" ") if v else "" for v in distinct]))


def _current_states(
    states: list[Any], policy: Policy, as_of_us: int, overridden: set[str], active: Any
) -> dict[str, tuple[Any, ...]]:
    """Stored rules states that are the rules' state at ``as_of_us``, as ``_TIERS`` tuples.

    A stored state is that when it was evaluated under this policy (same fingerprint,
    by the event path: after a ``policy apply`` wrote it, whose batch reclassification
    stores money rounded to cents; version 1 is never such a rewrite) at or before
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
    (``ledger``: their rows of ``_LEDGER``)."""
    from tier_ml.store.intake import LedgerReader

    reader = LedgerReader(policy)
    events: dict[str, list[Any]] = {c: [] for c in customer_ids}
    for row in ledger:
        if row[3] in events:
            event = reader.event(*row)
            if event is not None:
                events[row[3]].append(event)
    out = []
    for customer_id in sorted(customer_ids):
        state = replay(policy, customer_id, events[customer_id], as_of_us)
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
    con = duckdb.connect()
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
