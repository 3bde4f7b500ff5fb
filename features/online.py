"""The single-customer (online) path: one customer's features as of an instant.

Same definitions as the batch path: the tier state comes from the reference
rules engine (``tier_ml.rules.replay``, which the batch engine is proven equal
to); the event features from ``features.mirror``, the feature SQL's formulas in
plain Python (a few milliseconds, where planning the SQL on DuckDB costs tens).
``engine="sql"`` runs the feature SQL itself on a one-customer in-memory DuckDB
relation instead (a connection per thread, opened on first use); tests prove
both equal the batch row.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd

from features.build import _as_of_us, finish_frame
from features.mirror import behaviour_row, tier_row
from features.registry import FEATURE_COLUMNS, FEATURES
from features.schema import validate_feature_frame, validate_feature_row
from features.sql import behaviour_sql, features_sql
from tier_ml.events import EventType, OrderEvent, frame_records, validate
from tier_ml.money import micros_to_instant
from tier_ml.policy import Policy
from tier_ml.rules import CustomerTier, replay

EVENT_COLUMNS = ["customer_id", "event_type", "order_id", "at_us", "amount_us", "channel", "region"]
TIER_COLUMNS = [
    "customer_id",
    "tier_rank",
    "eligible_rank",
    "qualifying_us",
    "pending_us",
    "qualifying_orders",
    "tier_since_us",
    "last_order_at_us",
    "region",
    "tier_changes",
]

_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET threads = 1")  # one tiny relation: parallelism only costs
        _local.con = con
    return con


def _valid_events(events: pd.DataFrame | Iterable[OrderEvent], policy: Policy, as_of_us: int) -> list[OrderEvent]:
    if isinstance(events, pd.DataFrame):
        return validate(frame_records(events), policy, as_of_us).events
    return [e for e in events if e.at_us <= as_of_us]


def empty_features() -> pd.DataFrame:
    """A feature frame with no rows and the right columns and types."""
    return finish_frame(pd.DataFrame(columns=["customer_id", *FEATURE_COLUMNS]), 0)


def customer_features(
    events: pd.DataFrame | Iterable[OrderEvent],
    policy: Policy,
    as_of: datetime | int,
    *,
    engine: Literal["python", "sql"] = "python",
    check: bool = True,
) -> pd.DataFrame:
    """One customer's feature row as of ``as_of`` (no rows without a placed order by then).

    ``events`` are that customer's events: validated ``OrderEvent`` objects (as the
    store holds them) or a DataFrame of raw canonical events (validated here).
    ``engine="python"`` (default, a few ms) evaluates the feature formulas in
    ``features.mirror``; ``engine="sql"`` runs the feature SQL itself on DuckDB
    (tens of ms). Tests prove both equal the batch row.
    """
    as_of_us = _as_of_us(as_of)
    valid = _valid_events(events, policy, as_of_us)
    customers = {e.customer_id for e in valid}
    if len(customers) > 1:
        raise ValueError(f"customer_features takes one customer's events, got {len(customers)} customers")
    state = replay(policy, customers.pop(), valid, as_of_us) if customers else None
    if state is None:
        return empty_features()
    if engine == "sql":
        frame = _sql_row(valid, state, policy, as_of_us)
        return validate_feature_frame(frame) if check else frame
    behaviour = behaviour_row(valid, as_of_us)
    assert behaviour is not None  # the rules engine found a placed order
    row = {"customer_id": state.customer_id, **behaviour, **tier_row(state, policy, as_of_us)}
    if check:
        validate_feature_row(row)  # the frame check's rules on the dict: a frame check costs ~5 ms
    return _frame_of(row, as_of_us)


_DTYPES = {feature.name: feature.dtype for feature in FEATURES}


def _frame_of(row: dict[str, Any], as_of_us: int) -> pd.DataFrame:
    """A one-row feature frame with the registry's dtypes, built without per-column conversions."""
    columns: dict[str, Any] = {
        "customer_id": np.array([row["customer_id"]], dtype=object),
        "cutoff": pd.DatetimeIndex([micros_to_instant(as_of_us)]).astype("datetime64[us, UTC]"),
    }
    for name in FEATURE_COLUMNS:
        value = row[name]
        dtype = _DTYPES[name]
        if dtype == "float64" and value is None:
            value = np.nan
        columns[name] = np.array([value], dtype=dtype)
    # copy=True consolidates the columns into one block per dtype: the models' column
    # selections then take a few blocks instead of one per column (~2 ms a prediction)
    return pd.DataFrame(columns, copy=True)


def _sql_row(valid: list[OrderEvent], state: CustomerTier, policy: Policy, as_of_us: int) -> pd.DataFrame:
    """The feature SQL of ``features.sql`` on a one-customer in-memory relation."""
    event_rows = {
        "customer_id": [e.customer_id for e in valid],
        "event_type": [str(e.event_type) for e in valid],
        "order_id": [e.order_id for e in valid],
        "at_us": [e.at_us for e in valid],
        "amount_us": [e.amount_us if e.event_type != EventType.CANCELLED else 0 for e in valid],
        "channel": [e.channel for e in valid],
        "region": [e.region for e in valid],
    }
    tier_state: dict[str, Any] = {
        "customer_id": [state.customer_id],
        "tier_rank": [state.tier],
        "eligible_rank": [state.eligible_tier],
        "qualifying_us": [state.qualifying_us],
        "pending_us": [state.pending_us],
        "qualifying_orders": [state.qualifying_orders],
        "tier_since_us": [state.tier_since_us],
        "last_order_at_us": [state.last_order_at_us],
        "region": [state.region],
        "tier_changes": [len(state.changes)],
    }
    con = _connection()
    con.register("online_events", pd.DataFrame(event_rows, columns=EVENT_COLUMNS))
    con.register("online_tiers", pd.DataFrame(tier_state, columns=TIER_COLUMNS))
    try:
        behaviour = f"({behaviour_sql('online_events', as_of_us)})"
        frame = con.execute(features_sql(policy, as_of_us, behaviour, "online_tiers")).df()
    finally:
        con.unregister("online_events")
        con.unregister("online_tiers")
    return finish_frame(frame, as_of_us)


def store_customer_features(engine: Any, customer_id: str, policy: Policy, as_of: datetime | int) -> pd.DataFrame:
    """One customer's features from the tier store's ledger (``tier_ml.store``), as of ``as_of``.

    The ledger holds accepted events only, so they go to the engine as they are.
    """
    from tier_ml.store.unit_of_work import UnitOfWork

    with UnitOfWork(engine, read_only=True) as uow:
        events, _ = uow.repo.customer_events([customer_id], policy)
    return customer_features(events.get(customer_id, []), policy, as_of)
