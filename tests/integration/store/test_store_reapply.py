"""Policy re-apply writes exact values, and only what changes; the bulk reads and writes it uses
(Arrow reads of the ledger and states, PostgreSQL ``COPY``) keep every value as stored."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import insert

from tests.integration.store.support import END_OF_SIMULATION, simulated, snapshot
from tier_ml.events import EVENT_FIELDS
from tier_ml.money import MICROS_PER_DAY
from tier_ml.policy import load_policy
from tier_ml.store import adbc_reads, repository, service
from tier_ml.store.repository import CUSTOMERS, EVENTS, STATE_FIELDS
from tier_ml.store.unit_of_work import run_in_transaction

LATER = END_OF_SIMULATION + 45 * MICROS_PER_DAY


@pytest.fixture
def loaded(engine):
    _, rows = simulated(300)
    service.apply_events(engine, list(rows), END_OF_SIMULATION, load_policy(None))
    return engine


def test_reapplying_the_same_policy_changes_nothing(loaded) -> None:
    """Stored spend is exact (micro-units, fractions of a cent after currency conversion), and
    the batch path gives the very same states: no state rewritten, no audit or outbox row."""
    engine = loaded
    before = snapshot(engine)
    spend = before["states"]["qualifying_us"].dropna().astype("int64")
    assert (spend % 10_000 != 0).any()  # fractions of a cent: rounding would show
    result = service.apply_policy(engine, load_policy(None), "bob", END_OF_SIMULATION)
    assert result.version == 2 and result.changed == 0 and result.states_written == 0
    after = snapshot(engine)
    pd.testing.assert_frame_equal(after["states"], before["states"])
    assert after["audit"] == before["audit"] and after["outbox"] == before["outbox"]
    assert [v for v, _ in after["policies"]] == [1, 2]


def test_reapplying_later_writes_what_a_sweep_writes(loaded, new_store_url) -> None:
    """Customers due by then are brought up to date first, so the same policy later changes
    the same states as a sweep (values exact), and adds no reclassification."""
    engine = loaded
    twin = service.open_store(new_store_url())
    _, rows = simulated(300)
    service.apply_events(twin, list(rows), END_OF_SIMULATION, load_policy(None))
    service.sweep(twin, LATER)
    service.apply_policy(engine, load_policy(None), "bob", LATER)
    got, want = snapshot(engine), snapshot(twin)
    twin.dispose()
    compared = [name for name in STATE_FIELDS if name != "evaluated_at_us"]
    pd.testing.assert_frame_equal(got["states"][compared], want["states"][compared])
    assert got["audit"] == want["audit"]  # the due customers' own rows, nothing else
    assert "reclassification" not in set(service.export_audit(engine)["reason"])


TRICKY = ["a,b", 'say "hi"', "line\nbreak", "tab\there", "back\\slash", "", " padded ", "é€"]


def _tricky_ledger(engine, leading: list[dict] | None = None) -> None:
    """Ledger rows with text CSV must quote (and NULLs next to empty strings), written as is,
    after the ``leading`` rows (customers C0 to C2)."""
    rows = list(leading or [])
    for i, text in enumerate(TRICKY):
        rows.append(
            {
                "event_id": f"E{i}{text}",
                "event_type": "placed",
                "order_id": f"O{i}{text}",
                "customer_id": f"C{i % 3}",
                "occurred_at": "2025-01-01T00:00:00Z",
                "at_us": 1_735_689_600_000_000 + i,
                "amount": None if i % 2 else f"{i}.5",
                "currency": None if i == 3 else "USD",
                "channel": text,
                "region": None if i % 3 == 0 else text,
                "received_at_us": 1,
            }
        )

    def work(uow) -> None:
        uow.repo.connection.execute(
            insert(CUSTOMERS), [{"customer_id": f"C{i}", "first_seen_at_us": 1} for i in range(3)]
        )
        uow.repo.connection.execute(insert(EVENTS), rows)

    run_in_transaction(engine, work)


def test_bulk_ledger_read_keeps_every_value(engine) -> None:
    _tricky_ledger(engine)

    def read(uow):
        return uow.repo.ledger_table(), uow.repo.ledger_frame()

    table, frame = run_in_transaction(engine, read, read_only=True)
    assert table.column_names == list(EVENT_FIELDS)
    assert table.to_pylist() == frame[list(EVENT_FIELDS)].to_dict("records")
    assert {row["channel"] for row in table.to_pylist()} == set(TRICKY)


@pytest.mark.parametrize("readers", [1, 3])
def test_ledger_is_read_by_adbc_with_every_value(engine, monkeypatch, readers) -> None:
    """The ledger comes through ADBC (the driver's row path is made to fail here), equal to
    the driver's rows in their order, also when a text column's first 3,000 values are NULL
    (ADBC's SQLite driver would otherwise take that column for integers and stop at the first
    text), and when the ledger is read in parts side by side (SQLite: child processes,
    PostgreSQL: connections sharing one snapshot)."""
    monkeypatch.setattr(repository, "LEDGER_READERS", readers)
    monkeypatch.setattr(repository, "LEDGER_READER_ROWS", 1_000)
    nulls = [
        {
            "event_id": f"N{i}",
            "event_type": "cancelled",
            "order_id": f"N{i}",
            "customer_id": "C0",
            "occurred_at": "2025-01-02T00:00:00Z",
            "at_us": 2 + i,
            "amount": None,
            "currency": None,
            "channel": None,
            "region": None,
            "received_at_us": 1,
        }
        for i in range(3_000)
    ]
    _tricky_ledger(engine, leading=nulls)
    frame = run_in_transaction(engine, lambda uow: uow.repo.ledger_frame(), read_only=True)

    def no_driver_rows(*args, **kwargs):
        raise AssertionError("the ledger was read through the Python driver")

    monkeypatch.setattr(repository.Repository, "_arrow", no_driver_rows)
    table = run_in_transaction(engine, lambda uow: uow.repo.ledger_table(), read_only=True)
    assert table.schema == pa.schema([(name, pa.string()) for name in EVENT_FIELDS])
    assert table.to_pylist() == frame[list(EVENT_FIELDS)].to_dict("records")
    assert table.num_rows == 3_000 + len(TRICKY)


def test_ledger_read_sees_what_its_transaction_sees(engine) -> None:
    """ADBC reads on a connection of its own, yet it reads the ledger this transaction sees
    when another writer commits events meanwhile: on SQLite the transaction's snapshot (up to
    the last id it sees), on PostgreSQL (read committed) the exported snapshot of now."""
    _, rows = simulated(20)
    rows = list(rows)
    service.apply_events(engine, rows[:-5], END_OF_SIMULATION, load_policy(None))

    def read(uow):
        seen = uow.repo.count("order_events")  # SQLite: the transaction's snapshot starts here
        service.apply_events(engine, rows[-5:], END_OF_SIMULATION, load_policy(None))
        return seen, uow.repo.ledger_table(), uow.repo.count("order_events")

    seen, table, after = run_in_transaction(engine, read, read_only=True)
    later = run_in_transaction(engine, lambda uow: uow.repo.count("order_events"))
    assert later > seen
    assert table.num_rows == after == (seen if engine.dialect.name == "sqlite" else later)
    assert run_in_transaction(engine, lambda uow: uow.repo.ledger_table()).num_rows == later


def test_adbc_reader_declines_what_it_cannot_read(tmp_path) -> None:
    fields = [("a", pa.string())]
    assert adbc_reads.read_sqlite(None, ["SELECT 1"], fields) is None
    assert adbc_reads.read_sqlite(":memory:", ["SELECT 1"], fields) is None
    assert adbc_reads.read_sqlite(str(tmp_path / "none.sqlite"), ["SELECT 1"], fields) is None
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"not a database")
    assert adbc_reads.read_sqlite(str(broken), ["SELECT 1", "SELECT 2"], fields) is None
    unreachable = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
    assert adbc_reads.read_postgres(unreachable, "00000003-1", ["SELECT 1"], fields) is None


def test_bulk_state_writes_and_reads_keep_every_value(engine, monkeypatch) -> None:
    """States written through the bulk path (``COPY`` on PostgreSQL, forced here for a few
    rows) read back equal, NULLs and odd text included, and an upsert replaces them."""
    monkeypatch.setattr(repository, "PG_COPY_ROWS", 1)
    customers = [f"C{i}" for i in range(len(TRICKY))]
    states = [
        (
            c,
            None if i == 0 else "Gold",
            "Silver",
            None,
            None if i % 2 else 10 * i,
            123_456_789 + i,
            7,
            i,
            text if i else None,
            None,
            2**62 + i,
            None,
            i,
            5,
            None if i % 3 else 99,
        )
        for i, (c, text) in enumerate(zip(customers, TRICKY, strict=True))
    ]

    def write(uow, rows) -> None:
        uow.repo.ensure_customers(customers, 1)
        uow.repo.save_state_tuples(rows)

    run_in_transaction(engine, lambda uow: write(uow, states))
    replaced = [(*row[:6], row[6] + 1, *row[7:]) for row in states]
    run_in_transaction(engine, lambda uow: write(uow, replaced))

    def read(uow):
        return uow.repo.states_table(), uow.repo.states_frame()

    table, frame = run_in_transaction(engine, read, read_only=True)
    assert table.column_names == list(STATE_FIELDS)
    got = sorted(tuple(row.values()) for row in table.to_pylist())
    assert got == sorted(replaced)
    expected = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert sorted(tuple(row.values()) for row in expected) == got


def test_policy_apply_reads_through_the_driver_when_adbc_cannot(loaded, monkeypatch) -> None:
    """When ADBC cannot read the store, the plan reads the ledger through its own connection,
    with the same answer, and does not ask ADBC a second time."""
    policy = load_policy(None)
    want = service.apply_policy(loaded, policy, "bob", LATER, dry_run=True)
    calls = []

    def cannot(*args, **kwargs):
        calls.append(args)
        return None

    monkeypatch.setattr(adbc_reads, "read_sqlite", cannot)
    monkeypatch.setattr(adbc_reads, "read_postgres", cannot)
    got = service.apply_policy(loaded, policy, "bob", LATER, dry_run=True)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(got.matrix, want.matrix)
    assert (got.customers, got.changed) == (want.customers, want.changed)
