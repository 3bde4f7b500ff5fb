"""The customer lookup's read: one SQL statement on SQLite.

``tier_ml.store.views.customer_view`` reads a customer in four or five statements
through SQLAlchemy (about half of a lookup's time on SQLite). For a customer who
is not due (nothing matured or expired since their last evaluation) the view is
the stored rows: their state, the active policy, the open override, the audit
history and, with pending spend, their ledger (to list the pending orders, with
the rules engine's own functions). :func:`read_customer` fetches all of it in one
statement on the DB-API connection (one statement is one consistent snapshot)
and builds the same :class:`CustomerView`; due customers and other databases go
to ``customer_view``. Tests check both give equal views for every customer of a
store, now and once time has moved on.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine

from tier_ml.policy import Policy
from tier_ml.rules import build_orders, pending_at
from tier_ml.store.evaluation import Override, TierState
from tier_ml.store.intake import LedgerReader, without_orphans
from tier_ml.store.repository import LEDGER_COLUMNS, STATE_FIELDS
from tier_ml.store.views import (
    CustomerView,
    PendingOrder,
    customer_view,
    next_tier_of,
    parse_stored_policy,
)

_HISTORY_FIELDS = (
    "at_us",
    "recorded_at_us",
    "old_tier",
    "new_tier",
    "reason",
    "cause",
    "note",
    "policy_version",
    "actor",
)
_OVERRIDE_FIELDS = ("id", "customer_id", "tier", "actor", "reason", "set_at_us", "until_us")
_ONE_STATEMENT = f"""
SELECT {", ".join(f"s.{name}" for name in STATE_FIELDS)},
       p.version, p.policy_json,
       {", ".join(f"o.{name}" for name in _OVERRIDE_FIELDS)},
       (SELECT json_group_array(json_array({", ".join(_HISTORY_FIELDS)}))
          FROM (SELECT * FROM audit_log WHERE customer_id = s.customer_id ORDER BY id)),
       CASE WHEN s.pending_us > 0 THEN
         (SELECT json_group_array(json_array({", ".join(LEDGER_COLUMNS)}))
            FROM (SELECT * FROM order_events WHERE customer_id = s.customer_id ORDER BY id))
       END
  FROM tier_state AS s
  JOIN (SELECT version, policy_json FROM policy_versions ORDER BY version DESC LIMIT 1) AS p
  LEFT JOIN (SELECT {", ".join(_OVERRIDE_FIELDS)} FROM overrides
              WHERE customer_id = ? AND cleared_at_us IS NULL ORDER BY id DESC LIMIT 1) AS o
    ON 1 = 1
 WHERE s.customer_id = ?
"""
_N_STATE = len(STATE_FIELDS)


def read_customer(engine: Engine, customer_id: str, now_us: int) -> CustomerView | None:
    """``customer_view(engine, customer_id, now_us)``, in one statement when it can be."""
    if engine.dialect.name != "sqlite":
        return customer_view(engine, customer_id, now_us)
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            row = cursor.execute(_ONE_STATEMENT, (customer_id, customer_id)).fetchone()
        finally:
            cursor.close()
    finally:
        connection.close()  # back to the pool
    view = None if row is None else _simple_view(row, now_us)
    return view if view is not None else customer_view(engine, customer_id, now_us)


def _simple_view(row: tuple[Any, ...], now_us: int) -> CustomerView | None:
    """The view from the statement's row; None when the customer needs the full read."""
    state = TierState(**dict(zip(STATE_FIELDS, row[:_N_STATE], strict=True)))
    due = state.next_due_at_us is not None and state.next_due_at_us <= now_us
    if state.tier is None or due:
        return None
    version, policy_json = row[_N_STATE], row[_N_STATE + 1]
    policy = parse_stored_policy(policy_json)
    found = row[_N_STATE + 2 : _N_STATE + 2 + len(_OVERRIDE_FIELDS)]
    override = None if found[0] is None else Override(*found)
    if override is not None and not override.active_after(state.evaluated_at_us):
        override = None
    history = [dict(zip(_HISTORY_FIELDS, entry, strict=True)) for entry in json.loads(row[-2])]
    pending = [] if row[-1] is None else _pending_orders(json.loads(row[-1]), policy, state)
    return CustomerView(
        state, policy, version, override, pending, history, next_tier_of(policy, state)
    )


def _pending_orders(
    ledger: list[list[Any]], policy: Policy, state: TierState
) -> list[PendingOrder]:
    """The orders still inside their buffer at the state's evaluation instant, as
    ``customer_view`` finds them: the ledger rows read as engine events under the policy."""
    reader = LedgerReader(policy)
    at_us = state.evaluated_at_us
    events = without_orphans([e for entry in ledger if (e := reader.event(*entry)) is not None])
    pending = []
    for order in build_orders([e for e in events if e.at_us <= at_us]):
        value = pending_at(order, policy, at_us)
        if value > 0:
            matures = order.placed_at_us + policy.buffer_us
            pending.append(PendingOrder(order.order_id, order.placed_at_us, value, matures))
    return pending
