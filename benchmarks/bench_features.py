"""Benchmark of the feature pipeline (issue 5): batch features at one cutoff, and one customer online.

1. Whole processes on the simulator's Parquet file (1M customers, ~10M events by
   default): ``tier-ml features build`` at one cutoff (validation, the batch
   rules engine for the tier features, every feature, the schema check, Parquet
   out) against the floor named by the issue, one hand-written DuckDB query
   computing only recency, frequency and monetary per customer on the same file.
   Reports medians, peak resident memory and the ratio.
   Then one in-process run of ``features.build_features`` on the same file
   reports the CPU seconds of each step (the rules engine's stages; the event
   features' refund parts at its ``orders`` stage and the runs of its sorted
   placements during ``replay``, each counted apart; the feature table; the schema check).
2. The single-customer path from a SQLite tier store: ``store_customer_features``
   for random customers (ledger read, rules replay, features, schema check);
   p50 / p99 latency.

Usage::

    .venv/bin/python benchmarks/bench_features.py [--customers 1000000] [--runs 1] \
        [--store-customers 5000] [--lookups 1000] [--write docs/bench/features.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench"
BIN = Path(sys.executable).parent
CUTOFF = "2025-12-31T23:59:59Z"

FLOOR_QUERY = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
src, out = sys.argv[1], sys.argv[2]
con.execute(f'''COPY (
    SELECT customer_id,
           date_diff('second', max(occurred_at), TIMESTAMPTZ '2025-12-31 23:59:59+00') / 86400.0 AS recency_days,
           count(*) AS frequency,
           sum(amount) AS monetary
    FROM read_parquet('{src}')
    WHERE event_type = 'placed' AND occurred_at <= TIMESTAMPTZ '2025-12-31 23:59:59+00'
    GROUP BY customer_id) TO '{out}' (FORMAT PARQUET)''')
"""


STEPS_SCRIPT = """
import json, resource, sys, time
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
import features.build as fb
from features.schema import validate_feature_frame
from tier_ml.events import parse_instant
from tier_ml.policy import load_policy
steps, last, inside = [], [cpu()], {"orders": 0.0, "replay": 0.0}
def timed(function, stage):  # event-feature work done inside an engine stage, counted apart
    def run(*args, **kwargs):
        began = cpu()
        try:
            return function(*args, **kwargs)
        finally:
            inside[stage] += cpu() - began
    return run
fb._capture_aggregates = timed(fb._capture_aggregates, "orders")  # refund parts, by SQL
fb.placement_runs = timed(fb.placement_runs, "replay")  # runs of the engine's sorted placements
def step(name):
    now = cpu()
    name = name.split(": ", 1)[-1]
    if name in inside:
        steps.append([name, now - last[0] - inside[name]])
        steps.append([f"event features ({name})", inside[name]])
    else:
        steps.append([name, now - last[0]])
    last[0] = now
frame = fb.build_features(sys.argv[1], load_policy(None), parse_instant(sys.argv[2]), validate=False, on_progress=step)
last[0] = cpu()
validate_feature_frame(frame)
step("schema check")
print(json.dumps(steps))
"""


def step_cpu(source: Path) -> list[tuple[str, float]]:
    """CPU seconds of each step of one in-process ``build_features`` run (imports excluded)."""
    out = subprocess.run(
        [sys.executable, "-c", STEPS_SCRIPT, str(source), CUTOFF], check=True, capture_output=True, text=True
    ).stdout
    return [(name, float(seconds)) for name, seconds in json.loads(out.strip().splitlines()[-1])]


def timed(command: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak resident memory (MB) of one whole process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(command)}\n{process.stderr.read().decode()}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def median_run(command: list[str], runs: int) -> dict[str, float]:
    results = [timed(command) for _ in range(runs)]
    return {
        "median_s": statistics.median(r[0] for r in results),
        "min_s": min(r[0] for r in results),
        "cpu_s": statistics.median(r[1] for r in results),
        "peak_mb": max(r[2] for r in results),
    }


def load_average() -> str:
    try:
        return ", ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = next(
            int(line.split()[1]) // (1024 * 1024)
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        memory = 0
    return f"{os.cpu_count()} cores ({cpu}), {memory} GiB RAM, Python {platform.python_version()}"


def events_file(customers: int) -> Path:
    path = WORK / f"events_{customers}.parquet"
    if not path.exists():
        WORK.mkdir(exist_ok=True)
        subprocess.run(
            [str(BIN / "tier-ml"), "simulate", "--customers", str(customers), "--seed", "7", "--out", str(path)],
            check=True,
        )
    return path


def batch(customers: int, runs: int) -> dict[str, object]:
    source = events_file(customers)
    rows = int(
        subprocess.run(
            [sys.executable, "-c", f"import pyarrow.parquet as pq; print(pq.ParquetFile('{source}').metadata.num_rows)"],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    with tempfile.TemporaryDirectory() as folder:
        floor = median_run([sys.executable, "-c", FLOOR_QUERY, str(source), f"{folder}/rfm.parquet"], runs)
        out = Path(folder) / "features.parquet"
        features = median_run(
            [str(BIN / "tier-ml"), "features", "build", "--events", str(source), "--cutoffs", CUTOFF,
             "--out", str(out)],
            runs,
        )
        written = int(
            subprocess.run(
                [sys.executable, "-c", f"import pyarrow.parquet as pq; print(pq.ParquetFile('{out}').metadata.num_rows)"],
                check=True, capture_output=True, text=True,
            ).stdout
        )
    steps = step_cpu(source)
    return {
        "customers": customers, "rows": rows, "feature_rows": written, "floor": floor, "features": features,
        "steps": steps,
    }


def online(store_customers: int, lookups: int) -> dict[str, float]:
    """p50 / p99 of ``store_customer_features`` from a SQLite store of simulated customers."""
    import numpy as np

    from features import store_customer_features
    from tier_ml.money import instant_to_micros
    from tier_ml.policy import load_policy
    from tier_ml.simulate import SimulationConfig, simulate
    from tier_ml.store.service import apply_events, open_store

    events = simulate(SimulationConfig(customers=store_customers, seed=11)).events
    events = events.sort_values("occurred_at", kind="stable")
    records = events.astype(object).where(events.notna(), None).to_dict("records")
    for record in records:
        if record["occurred_at"] is not None:
            record["occurred_at"] = record["occurred_at"].isoformat()
    as_of = datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)
    policy = load_policy()
    with tempfile.TemporaryDirectory() as folder:
        engine = open_store(f"sqlite:///{folder}/store.sqlite")
        for start in range(0, len(records), 5_000):
            apply_events(engine, records[start : start + 5_000], instant_to_micros(as_of), policy)
        customers = sorted(events["customer_id"].dropna().unique())
        picks = random.Random(5).choices(customers, k=lookups)
        for customer in picks[:20]:  # warm up imports and the connection pool
            store_customer_features(engine, customer, policy, as_of)
        latencies = []
        for customer in picks:
            began = time.perf_counter()
            store_customer_features(engine, customer, policy, as_of)
            latencies.append((time.perf_counter() - began) * 1000)
        engine.dispose()
    values = np.array(latencies)
    return {
        "store_customers": store_customers,
        "store_events": len(records),
        "lookups": lookups,
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }


def report(result: dict[str, object], latency: dict[str, float] | None) -> str:
    floor, features = result["floor"], result["features"]
    ratio = features["median_s"] / floor["median_s"]
    lines = [
        "## Features (issue 5)",
        "",
        f"Written by `benchmarks/bench_features.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        f"Machine: {machine()}; shared with other jobs, so read the ratios.",
        "",
        f"Data: simulator output (seed 7), {result['customers']:,} customers, {result['rows']:,} event rows, "
        f"default policy, one cutoff {CUTOFF}; {result['feature_rows']:,} feature rows written. "
        "Whole processes (start-up included).",
        "",
        "| job | median s | min s | CPU s | peak memory MB |",
        "|---|---:|---:|---:|---:|",
        f"| floor: one DuckDB query, recency + frequency + monetary per customer | {floor['median_s']:.2f} | "
        f"{floor['min_s']:.2f} | {floor['cpu_s']:.1f} | {floor['peak_mb']:.0f} |",
        f"| `tier-ml features build` (validation, rules engine, all features, schema check, Parquet) | "
        f"{features['median_s']:.2f} | {features['min_s']:.2f} | {features['cpu_s']:.1f} | {features['peak_mb']:.0f} |",
        "",
        f"Load average when done: {load_average()} (2 cores): wall times include waiting for the CPU; "
        f"the CPU seconds do not.",
        "",
        f"Ratio features / floor: **{ratio:.1f}x** wall, {features['cpu_s'] / floor['cpu_s']:.1f}x CPU "
        f"(target <= 4x: {'met' if ratio <= 4 else 'missed'}); "
        f"absolute target <= 90 s: {'met' if features['median_s'] <= 90 else 'missed'}; "
        f"peak memory target <= 6 GB: {'met' if features['peak_mb'] <= 6144 else 'missed'}.",
    ]
    steps = result.get("steps") or []
    if steps:
        names = {
            "validate": "rules engine: validate", "ledger": "rules engine: ledger (replays, duplicate orders)",
            "rejects": "rules engine: rejects", "replay": "rules engine: replay", "output": "rules engine: output",
            "orders": "rules engine: orders (refunds per order)",
            "event features (orders)": "event aggregates: refund parts, at the engine's orders stage",
            "event features (replay)": "event aggregates: runs of the replay's sorted placements, reduced in numpy",
            "done": "feature table (event + tier features, Arrow to pandas)",
        }
        lines += [
            "",
            "CPU seconds per step of one in-process `build_features` run (imports excluded; "
            f"{sum(s for _, s in steps):.1f} CPU s in all):",
            "",
            "| step | CPU s |",
            "|---|---:|",
            *(f"| {names.get(name, name)} | {seconds:.1f} |" for name, seconds in steps),
        ]
    if latency is not None:
        lines += [
            "",
            f"Single customer from a SQLite tier store ({latency['store_customers']:,} customers, "
            f"{latency['store_events']:,} events), `store_customer_features` for {latency['lookups']:,} random "
            f"customers: p50 **{latency['p50_ms']:.1f} ms**, p99 **{latency['p99_ms']:.1f} ms**, "
            f"max {latency['max_ms']:.1f} ms (target p99 <= 20 ms: "
            f"{'met' if latency['p99_ms'] <= 20 else 'missed'}).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--store-customers", type=int, default=5_000)
    parser.add_argument("--lookups", type=int, default=1_000)
    parser.add_argument("--skip-online", action="store_true")
    parser.add_argument("--write", type=Path, default=None, help="Also write the section to this file.")
    args = parser.parse_args()
    result = batch(args.customers, args.runs)
    latency = None if args.skip_online else online(args.store_customers, args.lookups)
    text = report(result, latency)
    print(text)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
