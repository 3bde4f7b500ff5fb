"""Benchmark of the tier store: ingest throughput, event-to-tier latency, policy re-apply.

Usage::

    .venv/bin/python benchmarks/bench_store.py [--events 1000000] [--single 2000]
        [--backends sqlite,postgresql]

A simulated stream (about ten events per customer) is applied in time order,
as the live store would see it:

- ``batch_1000``: all but the last ``--single`` events in batches of 1,000 (one
  transaction each, the clock at the batch's latest event, the loop of
  ``tier-ml ingest`` including its garbage-collector setting): events/s, and the
  latency of a batch (from the ``apply`` call to the committed tier state,
  which is the event-to-tier latency of every event in it) p50 / p99;
- ``batch_1``: the last ``--single`` events one by one: events/s and the
  latency p50 / p99 of a single event;
- ``sweep``: a sweep at the end of the stream (customers whose maturities came);
- ``policy_reapply``: ``apply_policy`` with a new policy (thresholds -10 %,
  other fx rates) over the whole store (sweep, ledger read, classify, diff,
  writes, audit, outbox), against ``classify`` (the DuckDB batch path) of the
  same ledger written as a Parquet file: seconds and the ratio.

PostgreSQL runs when ``TIER_ML_TEST_POSTGRES_URL`` is set (a fresh schema,
dropped afterwards). Prints a Markdown section, then the same numbers as one JSON
line; ``--write`` also writes the section to docs/bench/store.md.

``--only reapply`` measures the policy re-apply alone, ``--repeat`` times, on a
copy of a store that went through the whole stream and its sweep (built once by
ingest and kept under ``--cache``, default ``.bench/``; PostgreSQL gets a fresh
schema loaded from that SQLite file with ``COPY``): seconds, CPU seconds of this
process, the load average, and the ratio to ``classify``. It prints JSON lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from sections import write_section  # benchmarks/sections.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tier_ml.batch import classify_frame, sql_literal
from tier_ml.events import frame_records, parse_instant
from tier_ml.policy import load_policy, parse_policy
from tier_ml.simulate import SimulationConfig, simulate
from tier_ml.store import service
from tier_ml.store.cache import freeze_long_lived, thaw_long_lived
from tier_ml.store.intake import canonical_raw
from tier_ml.store.unit_of_work import run_in_transaction

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "bench" / "store.md"


def stream_rows(events: int, seed: int) -> list[dict[str, Any]]:
    """About ``events`` canonical rows of a simulation, in time order."""
    sim = simulate(SimulationConfig(customers=max(50, events // 10), seed=seed))
    rows = [canonical_raw(r) for r in frame_records(sim.events)]
    rows.sort(key=lambda r: (parse_instant(r["occurred_at"]) or 0, r["event_id"] or ""))
    return rows[:events]


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    values = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "max_ms": round(float(values.max()), 2),
    }


def clock_of(rows: list[dict[str, Any]]) -> int:
    return max(parse_instant(r["occurred_at"]) or 0 for r in rows)


def new_policy():
    policy = load_policy(None).model_dump(mode="json")
    for tier in policy["tiers"][1:]:
        tier["min_spend"] = tier["min_spend"] * 0.9
    policy["fx_rates"] = {"EUR": 1.08, "GBP": 1.27}
    return parse_policy(policy)


def run_backend(url: str, rows: list[dict[str, Any]], single: int) -> dict[str, Any]:
    engine = service.open_store(url)
    policy = load_policy(None)
    bulk, tail = rows[: len(rows) - single], rows[len(rows) - single :]
    result: dict[str, Any] = {}

    batch_latency = []
    batches = [bulk[start : start + 1_000] for start in range(0, len(bulk), 1_000)]
    clocks = [clock_of(batch) for batch in batches]  # the caller's clock, read before timing
    load_began = os.getloadavg()[0]
    began, cpu_began = time.perf_counter(), time.process_time()
    for batch, now in zip(batches, clocks, strict=True):
        t0 = time.perf_counter()
        service.apply_events(engine, batch, now, policy)
        batch_latency.append(time.perf_counter() - t0)
        freeze_long_lived()  # as `tier-ml ingest` does after each batch
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    thaw_long_lived()
    result["batch_1000"] = {
        "events": len(bulk),
        "seconds": round(elapsed, 2),
        "events_per_s": round(len(bulk) / elapsed),
        "cpu_seconds": round(cpu, 2),  # this process only (not the PostgreSQL server)
        "events_per_cpu_s": round(len(bulk) / cpu),
        **percentiles(batch_latency),
        "load_average": [round(load_began, 2), round(os.getloadavg()[0], 2)],  # 1-min, start / end
    }

    single_latency = []
    began = time.perf_counter()
    for row in tail:
        now = parse_instant(row["occurred_at"]) or clock_of(bulk)
        t0 = time.perf_counter()
        service.apply_events(engine, [row], now)
        single_latency.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - began
    result["batch_1"] = {
        "events": len(tail),
        "seconds": round(elapsed, 2),
        "events_per_s": round(len(tail) / elapsed) if elapsed else None,
        **percentiles(single_latency),
    }

    end = clock_of(rows) + 30 * 86_400_000_000
    began = time.perf_counter()
    swept = service.sweep(engine, end)
    result["sweep"] = {
        "customers": swept.customers,
        "seconds": round(time.perf_counter() - began, 2),
    }

    result["policy_reapply"], result["customers"] = measure_reapply(engine, end)
    engine.dispose()
    return result


def measure_reapply(engine: Any, end: int) -> tuple[dict[str, Any], int]:
    """``classify`` of the store's ledger (as a Parquet file) then ``apply_policy`` with
    ``new_policy`` at ``end``: wall and CPU seconds (this process) and the ratio."""
    ledger = run_in_transaction(engine, lambda uow: uow.repo.ledger_table(), read_only=True)
    target = new_policy()
    with tempfile.TemporaryDirectory() as folder:  # classify of the same events as a file
        path = Path(folder) / "ledger.parquet"
        pq.write_table(ledger, path)
        del ledger
        began, cpu_began = time.perf_counter(), cpu_with_children()
        tiers, _ = classify_frame(target, path, end)
        classify_seconds = time.perf_counter() - began
        classify_cpu = cpu_with_children() - cpu_began
    load_began = os.getloadavg()[0]
    began, cpu_began = time.perf_counter(), cpu_with_children()
    applied = service.apply_policy(engine, target, "bench", end)
    reapply_seconds = time.perf_counter() - began
    reapply_cpu = cpu_with_children() - cpu_began
    return {
        "customers": applied.customers,
        "tier_changes": applied.changed,
        "states_written": applied.states_written,
        "seconds": round(reapply_seconds, 2),
        "classify_seconds": round(classify_seconds, 2),
        "ratio_to_classify": round(reapply_seconds / classify_seconds, 2),
        # this process and its children (the SQLite ledger reader), not the PostgreSQL server
        "cpu_seconds": round(reapply_cpu, 2),
        "classify_cpu_seconds": round(classify_cpu, 2),
        "cpu_ratio": round(reapply_cpu / classify_cpu, 2),
        "load_average": [round(load_began, 2), round(os.getloadavg()[0], 2)],
    }, len(tiers)


def cpu_with_children() -> float:
    """CPU seconds of this process and of its finished child processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


# --- re-apply alone, on a cached store ---------------------------------------------------------


def cached_store(cache: Path, events: int, seed: int, single: int) -> tuple[Path, int]:
    """A SQLite store that took the whole stream (batches of 1,000, then ``single`` events one
    by one) and a sweep at its end plus 30 days; built once and kept. Returns it and that
    instant."""
    path = cache / f"store_{events}_seed{seed}.sqlite"
    end_file = path.with_suffix(".end")
    if path.exists() and end_file.exists():
        return path, int(end_file.read_text())
    rows = stream_rows(events, seed)
    single = min(single, len(rows) // 2)
    building = path.with_suffix(".building")
    building.unlink(missing_ok=True)
    engine = service.open_store(f"sqlite:///{building}")
    policy = load_policy(None)
    bulk, tail = rows[: len(rows) - single], rows[len(rows) - single :]
    for start in range(0, len(bulk), 1_000):
        batch = bulk[start : start + 1_000]
        service.apply_events(engine, batch, clock_of(batch), policy)
        freeze_long_lived()
    thaw_long_lived()
    for row in tail:
        service.apply_events(engine, [row], parse_instant(row["occurred_at"]) or clock_of(bulk))
    end = clock_of(rows) + 30 * 86_400_000_000
    service.sweep(engine, end)
    engine.dispose()  # the last connection checkpoints the write-ahead log into the file
    building.rename(path)
    end_file.write_text(str(end))
    return path, end


def bulk_store(cache: Path, events: Path) -> tuple[Path, int]:
    """A SQLite store holding the events file ``events`` (say the 1M-customer classify data),
    loaded in bulk rather than ingested (10M events would take half an hour one batch at a
    time): each event id once, rows with an instant, customer and order, as delivered
    text; the first placement of each order in ``orders``; the default policy stored
    and applied (every state written). Built once and kept. Returns it and the instant
    30 days after the last event."""
    path = cache / f"bulk_{events.stem}.sqlite"
    end_file = path.with_suffix(".end")
    if path.exists() and end_file.exists():
        return path, int(end_file.read_text())
    import duckdb

    building = path.with_suffix(".building")
    building.unlink(missing_ok=True)
    engine = service.open_store(f"sqlite:///{building}")
    con = duckdb.connect()
    con.execute(
        f"""
        CREATE TABLE ledger AS
        SELECT event_id, event_type, order_id, customer_id,
               strftime(occurred_at, '%Y-%m-%dT%H:%M:%S.%fZ') AS occurred_at,
               epoch_us(occurred_at) AS at_us, CAST(amount AS VARCHAR) AS amount,
               currency, channel, region
        FROM (SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY file_row_number) AS copy
              FROM read_parquet({sql_literal(str(events))}, file_row_number = true))
        WHERE copy = 1 AND occurred_at IS NOT NULL AND customer_id IS NOT NULL
          AND order_id IS NOT NULL AND event_type IN ('placed', 'refunded', 'cancelled')
        ORDER BY at_us, event_id
        """
    )
    last = con.execute("SELECT max(at_us) FROM ledger").fetchone()[0]
    end = int(last) + 30 * 86_400_000_000
    names = "event_id, event_type, order_id, customer_id, occurred_at, at_us, amount, currency, channel, region"
    with contextlib.closing(sqlite3.connect(building)) as lite, lite:  # closed: WAL folded in
        lite.executemany(
            "INSERT INTO customers (customer_id, first_seen_at_us) VALUES (?, ?)",
            con.execute("SELECT customer_id, min(at_us) FROM ledger GROUP BY 1").fetchall(),
        )
        reader = con.sql(f"SELECT {names}, at_us FROM ledger").to_arrow_reader(200_000)
        for batch in reader:
            lite.executemany(
                f"INSERT INTO order_events ({names}, received_at_us) VALUES ({', '.join('?' * 11)})",
                zip(*(column.to_pylist() for column in batch.columns), strict=True),
            )
        lite.executemany(
            "INSERT INTO orders (order_id, customer_id, placed_event_id, placed_at_us) VALUES (?, ?, ?, ?)",
            con.execute(
                "SELECT order_id, arg_min(customer_id, (at_us, event_id)), "
                "arg_min(event_id, (at_us, event_id)), min(at_us) "
                "FROM ledger WHERE event_type = 'placed' GROUP BY order_id"
            ).fetchall(),
        )
    con.close()
    run_in_transaction(
        engine, lambda uow: uow.repo.add_policy_version(load_policy(None), "bench", 0, None)
    )
    service.apply_policy(engine, load_policy(None), "bench", end)  # every customer's state
    engine.dispose()
    building.rename(path)
    end_file.write_text(str(end))
    return path, end


def load_into_postgres(source: Path, url: str) -> None:
    """Copy every table of the SQLite store ``source`` into the (migrated) store at ``url``."""
    from tier_ml.store.models import Base

    engine = service.open_store(url)
    with sqlite3.connect(source) as lite, engine.begin() as connection:
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor:
            for table in Base.metadata.sorted_tables:
                if table.name == "alembic_version":
                    continue
                names = [c.name for c in table.columns]
                rows = lite.execute(f"SELECT {', '.join(names)} FROM {table.name}")
                with cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                if "id" in names and table.c.id.autoincrement is True:
                    cursor.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"coalesce((SELECT max(id) FROM {table.name}), 0) + 1, false)"
                    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()


def reapply_only(args: argparse.Namespace) -> None:
    """``--only reapply``: the re-apply on fresh copies of the cached store, ``--repeat`` times."""
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.from_events:
        store, end = bulk_store(cache, Path(args.from_events))
    else:
        store, end = cached_store(cache, args.events, args.seed, args.single)
    for _ in range(args.repeat):
        for backend in args.backends.split(","):
            with tempfile.TemporaryDirectory() as folder:
                drop = None
                if backend == "sqlite":
                    copy = Path(folder) / "store.sqlite"
                    shutil.copy(store, copy)
                    url = f"sqlite:///{copy}"
                else:
                    found = postgres_url()
                    if found is None:
                        skipped = {"backend": backend, "skipped": "no TIER_ML_TEST_POSTGRES_URL"}
                        print(json.dumps(skipped))
                        continue
                    url, drop = found
                    load_into_postgres(store, url)
                try:
                    engine = service.open_store(url)
                    measured, customers = measure_reapply(engine, end)
                    engine.dispose()
                finally:
                    if drop is not None:
                        drop()
            stamp = time.strftime("%H:%M:%S", time.gmtime())
            line = {"backend": backend, "at": stamp, "store_customers": customers, **measured}
            print(json.dumps(line), flush=True)


def postgres_url() -> tuple[str, Any] | None:
    base = os.environ.get("TIER_ML_TEST_POSTGRES_URL")
    if not base:
        return None
    url = make_url(base).set(drivername="postgresql+psycopg")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    scoped = url.update_query_dict({"options": f"-csearch_path={schema}"})
    return scoped.render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=2_000, help="Events applied one by one.")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"Also write the section to {REPORT.relative_to(ROOT)}.",
    )
    parser.add_argument(
        "--only",
        choices=("all", "reapply"),
        default="all",
        help="reapply: only the policy re-apply, on copies of a cached store (see --cache).",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="With --only reapply: runs per backend."
    )
    parser.add_argument(
        "--cache",
        default=str(ROOT / ".bench"),
        help="With --only reapply: where the store built from the stream is kept.",
    )
    parser.add_argument(
        "--from-events",
        metavar="PARQUET",
        help="With --only reapply: a store loaded in bulk from this events file (e.g. the 1M-customer "
        "data of bench_classify) instead of the ingested stream.",
    )
    args = parser.parse_args()
    if args.only == "reapply":
        reapply_only(args)
        return

    rows = stream_rows(args.events, args.seed)
    single = min(args.single, len(rows) // 2)
    report: dict[str, Any] = {
        "benchmark": "store",
        "events": len(rows),
        "single_events": single,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "backends": {},
    }
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{Path(folder) / 'store.sqlite'}"
            report["backends"]["sqlite"] = run_backend(url, rows, single)
    if "postgresql" in backends:
        found = postgres_url()
        if found is None:
            report["backends"]["postgresql"] = "skipped: TIER_ML_TEST_POSTGRES_URL not set"
        else:
            url, drop = found
            try:
                report["backends"]["postgresql"] = run_backend(url, rows, single)
            finally:
                drop()
    report["median_batch_latency_ms"] = {
        name: result["batch_1000"]["p50_ms"]
        for name, result in report["backends"].items()
        if isinstance(result, dict)
    }
    section = markdown(report)
    if args.write:
        write_section(REPORT, section)
    print(section)
    print(json.dumps(report))  # last line: read by benchmarks/run.py


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown section: one table row per backend and measurement."""
    lines = [
        "## Tier store (issue 4)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {report['cpus']} shared cores "
        f"(Python {report['python']}); the machine is shared with other jobs, so CPU time is given as well.",
        f"Stream: {report['events']:,} simulated events in time order (about ten per customer); the last "
        f"{report['single_events']:,} are applied one by one.",
        "Load average (1 min) at the start / end of the batch ingest: "
        + "; ".join(
            f"{name} {r['batch_1000']['load_average'][0]:.1f} / {r['batch_1000']['load_average'][1]:.1f}"
            for name, r in report["backends"].items()
            if isinstance(r, dict)
        )
        + ".",
        "",
        "| backend | batches of 1,000: events/s | events per CPU s | batch p50 / p99 ms "
        "| single events: events/s | p50 / p99 ms | sweep s | policy re-apply s | classify s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["backends"].items():
        if not isinstance(result, dict):
            lines.append(f"| {name} | {result} |")
            continue
        bulk, single, policy = result["batch_1000"], result["batch_1"], result["policy_reapply"]
        lines.append(
            f"| {name} | {bulk['events_per_s']:,} | {bulk['events_per_cpu_s']:,} | "
            f"{bulk['p50_ms']:.0f} / {bulk['p99_ms']:.0f} | {single['events_per_s']:,} | "
            f"{single['p50_ms']:.1f} / {single['p99_ms']:.1f} | {result['sweep']['seconds']:.2f} | "
            f"{policy['seconds']:.2f} | {policy['classify_seconds']:.2f} | {policy['ratio_to_classify']:.2f}x |"
        )
    lines += [
        "",
        "Targets (issue 4): >= 5,000 events/s in batches, single-event p99 <= 50 ms on SQLite, policy "
        "re-apply within 3x `classify` of the same ledger (the store's customers, "
        f"{next((r['customers'] for r in report['backends'].values() if isinstance(r, dict)), 0):,} here). "
        "Batch latency is the event-to-tier latency of every event in the batch.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
