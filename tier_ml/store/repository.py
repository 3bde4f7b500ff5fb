"""Queries of the tier store, behind one small class bound to an open transaction.

The service layer asks for what it needs (the ledger rows a batch refers to,
the events of the customers it touches, their states and overrides) and hands
back what to write; this module turns that into set-based SQLAlchemy Core
statements: one query per kind of row per batch (``WHERE ... IN (...)``) and
multi-row inserts and upserts, no ORM objects on the hot path.

PostgreSQL specifics live here too: writers lock the customers they touch
(``SELECT ... FOR UPDATE``, in customer_id order so two writers never wait on
each other in a cycle), and every write transaction holds a shared advisory
lock that ``policy apply`` takes exclusively while it rewrites every state.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pandas as pd
import pyarrow as pa
from sqlalchemy import (
    BigInteger,
    Connection,
    Integer,
    String,
    Table,
    Text,
    any_,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from tier_ml.events import EVENT_FIELDS, OrderEvent
from tier_ml.policy import Policy, parse_policy
from tier_ml.rules import ReplayCheckpoint
from tier_ml.store import adbc_reads
from tier_ml.store.cache import CachedLedger, LedgerCache
from tier_ml.store.evaluation import Override, TierState, Transition
from tier_ml.store.intake import (
    CLAIMING_REASONS,
    LedgerReader,
    PlacedOrder,
    RawEvent,
    without_orphans,
)
from tier_ml.store.models import (
    AuditRow,
    Customer,
    OrderEventRow,
    OrderRow,
    OutboxRow,
    OverrideRow,
    PolicyVersion,
    RejectedEventRow,
    TierStateRow,
)

POLICIES: Table = PolicyVersion.__table__  # type: ignore[assignment]
CUSTOMERS: Table = Customer.__table__  # type: ignore[assignment]
EVENTS: Table = OrderEventRow.__table__  # type: ignore[assignment]
ORDERS: Table = OrderRow.__table__  # type: ignore[assignment]
STATES: Table = TierStateRow.__table__  # type: ignore[assignment]
OVERRIDES: Table = OverrideRow.__table__  # type: ignore[assignment]
AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
REJECTS: Table = RejectedEventRow.__table__  # type: ignore[assignment]

STATE_FIELDS = tuple(c.name for c in STATES.columns)
#: The ledger columns ``intake.ledger_event`` takes, in its argument order.
LEDGER_COLUMNS = (
    "event_id",
    "event_type",
    "order_id",
    "customer_id",
    "at_us",
    "amount",
    "currency",
    "channel",
    "region",
)
#: Keys per IN list: well under SQLite's limit of 32,766 bound parameters (two per key at most).
IN_CHUNK = 5_000
#: The advisory lock shared by PostgreSQL writers and taken alone by ``policy apply``.
STORE_LOCK_KEY = 74_311_902
#: Rows per driver fetch when a whole table is read into Arrow (SQLite).
ARROW_FETCH = 100_000
#: PostgreSQL inserts of at least this many rows go through ``COPY`` (a policy re-apply's
#: states, audit and outbox rows); smaller ones (an ingest batch of the default 1,000 events)
#: stay one ``unnest`` insert.
PG_COPY_ROWS = 2_000
#: Readers of a large ledger side by side (``detached_ledger_read``: SQLite child processes,
#: PostgreSQL connections): one per ``LEDGER_READER_ROWS`` events, at most ``LEDGER_READERS``.
LEDGER_READERS = 2
LEDGER_READER_ROWS = 200_000


@dataclass(frozen=True)
class ActivePolicy:
    """The policy version in force."""

    version: int
    policy: Policy
    created_at_us: int
    actor: str


@lru_cache(maxsize=16)
def _parse_stored_policy(policy_json: str) -> Policy:
    return parse_policy(json.loads(policy_json), source="stored policy")


def policy_json(policy: Policy) -> str:
    """The policy as stored: every field, extra keys included, as canonical JSON."""
    return json.dumps(policy.model_dump(mode="json"), sort_keys=True)


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Repository:
    """The store's queries, inside the transaction of one unit of work."""

    def __init__(self, connection: Connection, cache: LedgerCache | None = None) -> None:
        self.connection = connection
        self.dialect = connection.dialect.name
        self.cache = cache
        #: Cache entries read in this transaction, kept by the unit of work once it commits.
        self.staged: dict[str, CachedLedger] = {}

    # --- locking -------------------------------------------------------------------------

    def lock_store(self, exclusive: bool = False) -> None:
        """PostgreSQL: writers share the store lock; ``policy apply`` holds it alone."""
        if self.dialect != "postgresql":
            return  # SQLite: BEGIN IMMEDIATE already serializes writers
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        self.connection.execute(text(f"SELECT {function}(:key)"), {"key": STORE_LOCK_KEY})

    def ensure_customers(self, customer_ids: Sequence[str], now_us: int) -> None:
        """Create the customers not seen before (in sorted order, see the module docstring)."""
        rows = [{"customer_id": c, "first_seen_at_us": now_us} for c in sorted(set(customer_ids))]
        self._insert_rows(CUSTOMERS, rows, "ON CONFLICT (customer_id) DO NOTHING")

    def lock_customers(self, customer_ids: Sequence[str]) -> None:
        """PostgreSQL: lock the customers' rows until commit, in customer_id order."""
        if self.dialect != "postgresql" or not customer_ids:
            return
        ids = sorted(set(customer_ids))
        for chunk in _chunks(ids):
            query = (
                select(CUSTOMERS.c.customer_id)
                .where(self._among(CUSTOMERS.c.customer_id, chunk))
                .order_by(CUSTOMERS.c.customer_id)
                .with_for_update()
            )
            self.connection.execute(query).fetchall()

    # --- policy versions ---------------------------------------------------------------

    def active_policy(self) -> ActivePolicy | None:
        row = self.connection.execute(
            select(POLICIES).order_by(POLICIES.c.version.desc()).limit(1)
        ).first()
        if row is None:
            return None
        return ActivePolicy(
            row.version, _parse_stored_policy(row.policy_json), row.created_at_us, row.actor
        )

    def add_policy_version(
        self, policy: Policy, actor: str, now_us: int, source_text: str | None
    ) -> ActivePolicy:
        latest = self.connection.execute(select(func.max(POLICIES.c.version))).scalar()
        version = (latest or 0) + 1
        self.connection.execute(
            POLICIES.insert().values(
                version=version,
                fingerprint=policy.fingerprint,
                policy_json=policy_json(policy),
                source_text=source_text,
                actor=actor,
                created_at_us=now_us,
            )
        )
        return ActivePolicy(version, policy, now_us, actor)

    def policy_versions(self) -> list[dict[str, Any]]:
        query = select(
            POLICIES.c.version,
            POLICIES.c.fingerprint,
            POLICIES.c.actor,
            POLICIES.c.created_at_us,
        ).order_by(POLICIES.c.version)
        return [dict(row._mapping) for row in self.connection.execute(query)]

    # --- the ledger ----------------------------------------------------------------------

    def ledger_events(self, event_ids: Iterable[str]) -> dict[str, RawEvent]:
        """Stored raw rows of the given event ids (those the ledger has)."""
        rows = self._rows_among("order_events", EVENT_FIELDS, "event_id", event_ids)
        return {row[0]: dict(zip(EVENT_FIELDS, row, strict=True)) for row in rows}

    def rejected_claims(self, event_ids: Iterable[str]) -> dict[str, RawEvent]:
        """Raw rows that claimed the given event ids although rejected: the first copy of each
        rejected for its order (see ``intake.CLAIMING_REASONS``), earliest first."""
        reasons = ", ".join(f"'{reason}'" for reason in sorted(CLAIMING_REASONS))
        columns = ("id", "event_id", "raw")
        condition = f"reason IN ({reasons})"
        rows = self._rows_among("rejected_events", columns, "event_id", event_ids, condition)
        claims: dict[str, RawEvent] = {}
        for _, event_id, raw in sorted(rows):
            claims.setdefault(event_id, json.loads(raw))
        return claims

    def placed_orders(self, order_ids: Iterable[str]) -> dict[str, PlacedOrder]:
        columns = ("order_id", "customer_id", "placed_at_us", "placed_event_id")
        rows = self._rows_among("orders", columns, "order_id", order_ids)
        return {row[0]: PlacedOrder(row[1], row[2], row[3]) for row in rows}

    def add_events(self, accepted: Sequence[tuple[OrderEvent, RawEvent]], now_us: int) -> None:
        """Append accepted events: normalized ids, raw time and money as delivered."""
        rows = [
            {
                "event_id": event.event_id,
                "event_type": str(event.event_type),
                "order_id": event.order_id,
                "customer_id": event.customer_id,
                "occurred_at": raw["occurred_at"],
                "at_us": event.at_us,
                "amount": raw["amount"],
                "currency": raw["currency"],
                "channel": raw["channel"],
                "region": raw["region"],
                "received_at_us": now_us,
            }
            for event, raw in accepted
        ]
        self._insert_rows(EVENTS, rows)
        orders = [
            {
                "order_id": event.order_id,
                "customer_id": event.customer_id,
                "placed_event_id": event.event_id,
                "placed_at_us": event.at_us,
            }
            for event, _ in accepted
            if event.event_type == "placed"
        ]
        self._insert_rows(ORDERS, orders)

    def add_rejects(self, rejects: Sequence[Mapping[str, Any]], now_us: int) -> None:
        rows = [
            {
                "event_id": item["event_id"],
                "reason": item["reason"],
                "detail": item["detail"],
                "raw": json.dumps(item["raw"], sort_keys=True),
                "received_at_us": now_us,
            }
            for item in rejects
        ]
        if rows:
            self.connection.execute(REJECTS.insert(), rows)

    def customer_events(
        self, customer_ids: Sequence[str], policy: Policy
    ) -> tuple[dict[str, list[OrderEvent]], dict[str, int]]:
        """Every ledger event of the given customers as engine events under ``policy``,
        and how many ledger rows each customer has (rows the policy cannot read included).

        The hot path of every batch: customers in the process's ledger cache only
        read their rows after the last id seen (see ``cache``), the others all
        their rows; plain driver SQL, one statement per chunk.
        """
        reader = LedgerReader(policy)
        known = {} if self.cache is None else self.cache.lookup(customer_ids, policy.fingerprint)
        events = {c: list(known[c].events) if c in known else [] for c in customer_ids}
        sizes = {c: known[c].size if c in known else 0 for c in customer_ids}
        last_ids = {c: known[c].last_id if c in known else 0 for c in customer_ids}
        fresh = sorted(set(customer_ids) - known.keys())
        rows = [
            *self._ledger_rows(fresh),
            *self._ledger_rows_after({c: e.last_id for c, e in known.items()}),
        ]
        for row in rows:
            customer_id = row[4]
            sizes[customer_id] += 1
            last_ids[customer_id] = max(last_ids[customer_id], row[0])
            event = reader.event(*row[1:])
            if event is not None:
                events[customer_id].append(event)
        for customer_id, found in events.items():
            if len(found) < sizes[customer_id]:  # a row the policy cannot read may orphan others
                events[customer_id] = without_orphans(found)
        if self.cache is not None:
            for customer_id in customer_ids:
                self.staged[customer_id] = CachedLedger(
                    policy.fingerprint,
                    last_ids[customer_id],
                    sizes[customer_id],
                    tuple(events[customer_id]),
                    known[customer_id].checkpoint if customer_id in known else None,
                )
        return events, sizes

    def replay_checkpoints(self, customer_ids: Sequence[str]) -> dict[str, ReplayCheckpoint]:
        """The replay checkpoints this process holds for customers read by ``customer_events``."""
        staged = (self.staged.get(c) for c in customer_ids)
        return {e.checkpoint.customer_id: e.checkpoint for e in staged if e and e.checkpoint}

    def keep_checkpoints(self, checkpoints: Iterable[ReplayCheckpoint]) -> None:
        """Cache new replay checkpoints with the ledger rows they were taken on (after commit)."""
        for checkpoint in checkpoints:
            entry = self.staged.get(checkpoint.customer_id)
            if entry is not None:
                self.staged[checkpoint.customer_id] = CachedLedger(
                    entry.fingerprint, entry.last_id, entry.size, entry.events, checkpoint
                )

    def _ledger_rows(self, customer_ids: Sequence[str]) -> list[Any]:
        """``(id, *LEDGER_COLUMNS)`` rows of the given customers."""
        return self._rows_among(
            "order_events", ["id", *LEDGER_COLUMNS], "customer_id", customer_ids
        )

    def _ledger_rows_after(self, last_ids: Mapping[str, int]) -> list[Any]:
        """``(id, *LEDGER_COLUMNS)`` rows of each customer with an id above the one given."""
        columns = ", ".join(f"e.{name}" for name in ["id", *LEDGER_COLUMNS])
        rows: list[Any] = []
        for chunk in _chunks(sorted(last_ids)):
            if self.dialect == "postgresql":
                sql = (
                    f"SELECT {columns} FROM unnest(%s::text[], %s::bigint[]) AS w(customer_id, after) "
                    "JOIN order_events e ON e.customer_id = w.customer_id AND e.id > w.after"
                )
                parameters: Any = (
                    pg_array_literal(chunk, text=True),
                    pg_array_literal([last_ids[c] for c in chunk], text=False),
                )
            else:
                values = ", ".join(["(?, ?)"] * len(chunk))
                sql = (
                    f"SELECT {columns} FROM (VALUES {values}) AS w "
                    "JOIN order_events e ON e.customer_id = w.column1 AND e.id > w.column2"
                )
                parameters = tuple(v for c in chunk for v in (c, last_ids[c]))
            rows.extend(self.connection.exec_driver_sql(sql, parameters).fetchall())
        return rows

    def ledger_frame(self) -> pd.DataFrame:
        """The whole ledger as raw canonical rows plus ``at_us``, in arrival order."""
        columns = [EVENTS.c[name] for name in EVENT_FIELDS]
        return self._frame(
            select(*columns, EVENTS.c.at_us).order_by(EVENTS.c.id), [*EVENT_FIELDS, "at_us"]
        )

    def ledger_table(self, *, adbc: bool = True) -> pa.Table:
        """The whole ledger as Arrow text columns (``EVENT_FIELDS`` as delivered), in arrival
        order: the input of a batch classification (``policy apply``), read in bulk; through
        ADBC (``detached_ledger_read``) unless ``adbc`` is false or it cannot read the store."""
        table = self.detached_ledger_read()() if adbc else None
        if table is not None:
            return table
        names = ", ".join(EVENT_FIELDS)
        sql = f"SELECT {names} FROM order_events ORDER BY id"
        return self._arrow(sql, [(name, pa.string()) for name in EVENT_FIELDS])

    def detached_ledger_read(self) -> Callable[[], pa.Table | None]:
        """A read of ``ledger_table`` that needs neither this connection nor its thread: ADBC
        (``adbc_reads``) on a connection of its own, reading exactly the ledger this
        transaction sees: on SQLite up to the last id it sees (the ledger only grows, its ids
        only rise), on PostgreSQL in this transaction's exported snapshot (valid while the
        transaction is open). A large ledger is read in parts by id range, side by side.
        The read returns ``None`` when ADBC cannot read the store; ``ledger_table`` then
        reads through this connection."""
        fields = [(name, pa.string()) for name in EVENT_FIELDS]
        names = ", ".join(EVENT_FIELDS)
        sql = "SELECT min(id), max(id) FROM order_events"  # the primary key's ends: no scan
        first, last = (value or 0 for value in self.connection.exec_driver_sql(sql).one())
        span = last - first + 1  # ids are dense: about the event count
        parts = min(LEDGER_READERS, max(1, span // LEDGER_READER_ROWS))
        cuts = [first + span * i // parts for i in range(parts)] + [last + 1]
        sqls = [
            f"SELECT {names} FROM order_events WHERE id >= {low} AND id < {high} ORDER BY id"
            for low, high in itertools.pairwise(cuts)
        ]
        url = self.connection.engine.url
        if self.dialect == "sqlite":
            return functools.partial(adbc_reads.read_sqlite, url.database, sqls, fields)
        snapshot = self.connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar()
        uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return functools.partial(adbc_reads.read_postgres, uri, str(snapshot), sqls, fields)

    def recent_events(self, after_us: int) -> pd.DataFrame:
        """``customer_id, event_type, at_us`` of the ledger events dated after ``after_us``."""
        sql = "SELECT customer_id, event_type, at_us FROM order_events WHERE at_us > "
        sql += "%s" if self.dialect == "postgresql" else "?"
        rows = self.connection.exec_driver_sql(sql, (after_us,)).fetchall()
        return pd.DataFrame.from_records(
            rows, columns=["customer_id", "event_type", "at_us"], coerce_float=False
        )

    def count(self, table: str) -> int:
        tables = {t.name: t for t in (EVENTS, ORDERS, CUSTOMERS, STATES, AUDIT, OUTBOX, REJECTS)}
        return int(
            self.connection.execute(select(func.count()).select_from(tables[table])).scalar()
        )

    # --- tier state ------------------------------------------------------------------------

    def tier_states(self, customer_ids: Sequence[str]) -> dict[str, TierState]:
        rows = self._rows_among("tier_state", _TIER_STATE_FIELDS, "customer_id", customer_ids)
        return {row[0]: TierState(*row) for row in rows}

    def states_frame(self) -> pd.DataFrame:
        """Every customer's stored state, one row each."""
        return self._frame(select(STATES).order_by(STATES.c.customer_id), list(STATE_FIELDS))

    def states_table(self) -> pa.Table:
        """Every customer's stored state as Arrow columns (integers as int64), one row each,
        read in bulk (``policy apply``)."""
        fields = [
            (c.name, pa.string() if isinstance(c.type, String | Text) else pa.int64())
            for c in STATES.columns
        ]
        return self._arrow(f"SELECT {', '.join(STATE_FIELDS)} FROM tier_state", fields)

    def save_states(self, states: Iterable[TierState]) -> None:
        fields = operator.attrgetter(*_TIER_STATE_FIELDS)
        self._insert_tuples(
            STATES, _TIER_STATE_FIELDS, [fields(state) for state in states], _STATE_UPSERT
        )

    def save_state_tuples(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert or replace tier-state rows given as tuples in ``STATE_FIELDS`` order."""
        self._insert_tuples(STATES, STATE_FIELDS, rows, _STATE_UPSERT)

    def due_customers(self, now_us: int, limit: int) -> list[str]:
        query = (
            select(STATES.c.customer_id)
            .where(STATES.c.next_due_at_us <= now_us)
            .order_by(STATES.c.next_due_at_us, STATES.c.customer_id)
            .limit(limit)
        )
        return list(self.connection.execute(query).scalars())

    def due_customers_among(self, customer_ids: Sequence[str], now_us: int) -> list[str]:
        """Those of ``customer_ids`` still due (re-read after locking them)."""
        due: list[str] = []
        for chunk in _chunks(sorted(set(customer_ids))):
            query = select(STATES.c.customer_id).where(
                self._among(STATES.c.customer_id, chunk), STATES.c.next_due_at_us <= now_us
            )
            due.extend(self.connection.execute(query).scalars())
        return sorted(due)

    def clock(self) -> int | None:
        """The latest instant any customer has been evaluated at (the store's clock)."""
        return self.connection.execute(select(func.max(STATES.c.evaluated_at_us))).scalar()

    def has_floors(self) -> bool:
        """Whether any grandfathered tier was ever granted (most stores: none, so a batch can
        skip looking up its customers' floors)."""
        sql = "SELECT 1 FROM grandfathering LIMIT 1"
        return self.connection.exec_driver_sql(sql).first() is not None

    # --- overrides ------------------------------------------------------------------------

    def open_overrides(self, customer_ids: Sequence[str]) -> dict[str, Override]:
        """Each customer's latest override that was not cleared (it may have expired)."""
        rows = self._rows_among(
            "overrides", _OVERRIDE_FIELDS, "customer_id", customer_ids, "cleared_at_us IS NULL"
        )
        rows.sort(key=lambda row: row[0])  # by id: the latest override wins
        return {row[1]: Override(*row) for row in rows}

    def all_open_overrides(self) -> dict[str, Override]:
        query = (
            select(OVERRIDES).where(OVERRIDES.c.cleared_at_us.is_(None)).order_by(OVERRIDES.c.id)
        )
        return {row.customer_id: _override(row._mapping) for row in self.connection.execute(query)}

    def add_override(
        self,
        customer_id: str,
        tier: str,
        actor: str,
        reason: str,
        set_at_us: int,
        until_us: int | None,
    ) -> Override:
        inserted = self.connection.execute(
            OVERRIDES.insert()
            .values(
                customer_id=customer_id,
                tier=tier,
                actor=actor,
                reason=reason,
                set_at_us=set_at_us,
                until_us=until_us,
            )
            .returning(OVERRIDES.c.id)
        ).scalar_one()
        return Override(inserted, customer_id, tier, actor, reason, set_at_us, until_us)

    def close_overrides(self, customer_id: str, at_us: int, actor: str) -> None:
        """Mark the customer's open overrides cleared (a new one replaces them, or a clear)."""
        self.connection.execute(
            update(OVERRIDES)
            .where(OVERRIDES.c.customer_id == customer_id, OVERRIDES.c.cleared_at_us.is_(None))
            .values(cleared_at_us=at_us, cleared_by=actor)
        )

    def overrides_frame(self) -> pd.DataFrame:
        return self._frame(select(OVERRIDES).order_by(OVERRIDES.c.id), OVERRIDES.columns.keys())

    # --- audit and outbox -----------------------------------------------------------------

    def add_audit(self, transitions: Sequence[Transition], version: int, now_us: int) -> None:
        rows = [
            {
                "customer_id": t.customer_id,
                "at_us": t.at_us,
                "recorded_at_us": now_us,
                "old_tier": t.old_tier,
                "new_tier": t.new_tier,
                "reason": t.reason,
                "cause": t.cause,
                "note": t.note,
                "policy_version": version,
                "actor": t.actor,
            }
            for t in transitions
        ]
        self._insert_rows(AUDIT, rows)

    def add_outbox(self, messages: Sequence[Mapping[str, Any]]) -> None:
        self._insert_rows(OUTBOX, list(messages))

    def audit_frame(self, since_us: int | None = None) -> pd.DataFrame:
        query = select(AUDIT).order_by(AUDIT.c.id)
        if since_us is not None:
            query = query.where(AUDIT.c.recorded_at_us >= since_us)
        return self._frame(query, AUDIT.columns.keys())

    def rejects_frame(self, since_us: int | None = None, reasons: Sequence[str] = ()) -> pd.DataFrame:
        """Rejected events in the order they were received (``raw``: their fields as JSON)."""
        query = select(REJECTS).order_by(REJECTS.c.id)
        if since_us is not None:
            query = query.where(REJECTS.c.received_at_us >= since_us)
        if reasons:
            query = query.where(REJECTS.c.reason.in_(list(reasons)))
        return self._frame(query, REJECTS.columns.keys())

    def outbox_frame(self) -> pd.DataFrame:
        return self._frame(select(OUTBOX).order_by(OUTBOX.c.id), OUTBOX.columns.keys())

    # --- helpers ----------------------------------------------------------------------------

    def _frame(self, query: Any, columns: Sequence[str]) -> pd.DataFrame:
        """A query's rows as a frame, fetched as the driver's plain tuples (fast for millions)."""
        result = self.connection.execute(query)
        try:
            rows = result.cursor.fetchall() if result.cursor is not None else []
        finally:
            result.close()
        return pd.DataFrame.from_records(rows, columns=list(columns), coerce_float=False)

    def _arrow(
        self,
        sql: str,
        fields: Sequence[tuple[str, pa.DataType]],
        parameters: tuple[Any, ...] = (),
    ) -> pa.Table:
        """A query's rows as an Arrow table of ``fields`` (its columns, in order), without a
        Python object per value where the driver allows it: PostgreSQL sends the rows with
        ``COPY ... TO STDOUT`` as CSV, which Arrow parses; SQLite's rows (driver tuples,
        fetched in chunks) become Arrow columns in one conversion per chunk."""
        if self.dialect == "postgresql":
            return self._arrow_by_copy(sql, fields, parameters)
        struct = pa.struct(list(fields))
        result = self.connection.exec_driver_sql(sql, parameters)
        chunks = []
        try:
            cursor = result.cursor
            while cursor is not None and (rows := cursor.fetchmany(ARROW_FETCH)):
                chunks.append(pa.array(rows, type=struct))
        finally:
            result.close()
        if not chunks:  # no row (a store whose every event was rejected)
            return pa.schema(list(fields)).empty_table()
        return pa.Table.from_struct_array(pa.chunked_array(chunks, type=struct))

    def _arrow_by_copy(
        self, sql: str, fields: Sequence[tuple[str, pa.DataType]], parameters: tuple[Any, ...]
    ) -> pa.Table:
        """PostgreSQL: the rows of ``sql`` through ``COPY (sql) TO STDOUT (FORMAT csv)``, in
        this transaction. CSV writes NULL as an empty field and an empty text as ``""``,
        which is how it is read back."""
        import pyarrow.csv as pa_csv

        data = io.BytesIO()
        raw = self.connection.connection.driver_connection
        query = f"COPY ({sql}) TO STDOUT (FORMAT csv)"
        with raw.cursor() as cursor, cursor.copy(query, parameters or None) as copy:
            for block in copy:
                data.write(block)
        if data.tell() == 0:
            return pa.table({name: pa.array([], type=kind) for name, kind in fields})
        return pa_csv.read_csv(
            pa.BufferReader(data.getbuffer()),
            read_options=pa_csv.ReadOptions(column_names=[name for name, _ in fields]),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict(fields),
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )

    def _rows_among(
        self,
        table: str,
        columns: Sequence[str],
        key: str,
        keys: Iterable[str],
        condition: str | None = None,
    ) -> list[Any]:
        """Rows (driver tuples of ``columns``) whose ``key`` is among ``keys``: one plain
        driver statement per chunk of keys (the hot path of every batch; SQLAlchemy's
        expansion of a large ``IN`` list per statement costs more than the query)."""
        names = ", ".join(columns)
        extra = "" if condition is None else f" AND {condition}"
        rows: list[Any] = []
        for chunk in _chunks(sorted(set(keys))):
            if self.dialect == "postgresql":
                sql = f"SELECT {names} FROM {table} WHERE {key} = ANY(%s::text[]){extra}"
                parameters: Any = (pg_array_literal(chunk, text=True),)
            else:
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT {names} FROM {table} WHERE {key} IN ({marks}){extra}"
                parameters = tuple(chunk)
            rows.extend(self.connection.exec_driver_sql(sql, parameters).fetchall())
        return rows

    def _among(self, column: Any, keys: Sequence[str]) -> Any:
        """``column IN keys``; on PostgreSQL ``column = ANY(array)``: one parameter, so the
        statement text stays the same for any number of keys (and is prepared once)."""
        if self.dialect == "postgresql":
            return column == any_(literal(list(keys), type_=ARRAY(column.type)))
        return column.in_(keys)

    def _insert_rows(
        self, table: Table, rows: Sequence[Mapping[str, Any]], conflict: str = ""
    ) -> None:
        """Insert many rows with one driver ``executemany`` (no per-row ORM or Core work).

        ``conflict``: an ``ON CONFLICT ...`` clause (the same syntax on SQLite and PostgreSQL).
        """
        if not rows:
            return
        columns = tuple(rows[0])
        if len(columns) == 1:
            self._insert_tuples(table, columns, [(row[columns[0]],) for row in rows], conflict)
            return
        values = operator.itemgetter(*columns)
        self._insert_tuples(table, columns, [values(row) for row in rows], conflict)

    def _insert_tuples(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str = "",
    ) -> None:
        """Insert many rows given as tuples of ``columns``."""
        if not rows:
            return
        names = ", ".join(columns)
        if self.dialect == "postgresql" and len(rows) >= PG_COPY_ROWS:
            self._insert_by_copy(table, columns, rows, conflict)
            return
        if self.dialect == "postgresql":
            # one statement whatever the row count: a column array per column, unnested
            kinds = [_PG_ARRAY[type(table.c[name].type)] for name in columns]
            arrays = ", ".join(f"%s::{kind}" for kind in kinds)
            sql = f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({arrays}) {conflict}"
            texts = [kind == "text[]" for kind in kinds]
            for chunk in _chunks(rows, 50_000):
                columns_of_chunk = zip(*chunk, strict=True)
                self.connection.exec_driver_sql(
                    sql,
                    tuple(
                        pg_array_literal(column, text=is_text)
                        for column, is_text in zip(columns_of_chunk, texts, strict=True)
                    ),
                )
            return
        marks = ", ".join(["?"] * len(columns))
        sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks}) {conflict}"
        self.connection.exec_driver_sql(sql, rows)

    def _insert_by_copy(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str = "",
    ) -> None:
        """PostgreSQL, many rows: ``COPY`` them into a temporary table, then one
        ``INSERT ... SELECT`` (with ``conflict``). psycopg writes COPY rows in C; for many
        rows that beats the ``unnest`` insert, whose array texts are built in Python."""
        names = ", ".join(columns)
        staging = f"staging_{table.name}"
        raw = self.connection.connection.driver_connection
        with raw.cursor() as cursor:
            cursor.execute(
                f"CREATE TEMP TABLE {staging} ON COMMIT DROP AS "
                f"SELECT {names} FROM {table.name} WITH NO DATA"
            )
            with cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {staging} {conflict}"
            )
            cursor.execute(f"DROP TABLE {staging}")


def pg_array_literal(values: Sequence[Any], *, text: bool) -> str:
    """``values`` as the text of a PostgreSQL array (``{"a","b",NULL}``, ``{1,2,NULL}``), the
    parameter of an ``%s::text[]`` / ``%s::bigint[]``: built by ``str.join``, it costs a
    third of psycopg's dumping of a Python list value by value (measured on every
    ingest batch, whose keys and rows go to the server as arrays)."""
    if not values:
        return "{}"
    if not text:
        if None not in values:
            return "{" + ",".join(map(str, values)) + "}"
        return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"
    if None not in values and all(type(v) is str for v in values):
        body = '","'.join(values)
        # each separator holds two quotes: any more, or a backslash, needs escapes
        if "\\" not in body and body.count('"') == 2 * (len(values) - 1):
            return '{"' + body + '"}'
    return "{" + ",".join("NULL" if v is None else _quoted_element(str(v)) for v in values) + "}"


def _quoted_element(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: ``tier_state`` columns in the order of ``TierState``'s fields; ``overrides`` columns in the
#: order of ``Override``'s.
_TIER_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(TierState))
_OVERRIDE_FIELDS = tuple(f.name for f in dataclasses.fields(Override))
_STATE_UPSERT = "ON CONFLICT (customer_id) DO UPDATE SET " + ", ".join(
    f"{name} = excluded.{name}" for name in STATE_FIELDS[1:]
)
_PG_ARRAY = {String: "text[]", Text: "text[]", BigInteger: "bigint[]", Integer: "integer[]"}


def _override(row: Mapping[str, Any]) -> Override:
    return Override(
        row["id"],
        row["customer_id"],
        row["tier"],
        row["actor"],
        row["reason"],
        row["set_at_us"],
        row["until_us"],
    )
