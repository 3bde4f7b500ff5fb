"""Benchmark of ``tier-ml classify`` against the floor the foundation issue names.

Usage::

    .venv/bin/python benchmarks/bench_classify.py [--customers 1000000] [--runs 3] [--write]

Data: the simulator's output (``.bench/events_<customers>.parquet``, generated
with seed 7 when missing), the default policy, as of 2025-12-31T23:59:59Z.
Floor: one DuckDB query over the same Parquet file that sums matured, never
refunded spend per customer (``FLOOR_QUERY``). Both run as whole processes
(start-up included), alternately, ``--runs`` times each, so both see the same
load on a shared machine; the report gives medians, the process CPU time
(user + system, all threads) and peak resident memory, and the ratios. Prints a
Markdown section (``## ...``); ``--write`` also writes it to docs/bench/classify.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sections import write_section  # benchmarks/sections.py

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench"
BIN = Path(sys.executable).parent
AS_OF = "2025-12-31T23:59:59Z"
REPORT = ROOT / "docs" / "bench" / "classify.md"

FLOOR_QUERY = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
src = sys.argv[1]
con.execute(f'''COPY (
    SELECT customer_id, sum(amount) AS spend FROM read_parquet('{src}')
    WHERE event_type = 'placed' AND occurred_at + INTERVAL 14 DAY <= TIMESTAMPTZ '2025-12-31 23:59:59+00'
      AND order_id NOT IN (SELECT order_id FROM read_parquet('{src}') WHERE event_type <> 'placed')
    GROUP BY customer_id) TO '{sys.argv[2]}' (FORMAT CSV, HEADER)''')
"""


def timed(command: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system) and peak resident memory (MB) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(command)}\n{process.stderr.read().decode()}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        "median_s": statistics.median(r["wall"] for r in runs),
        "min_s": min(r["wall"] for r in runs),
        "cpu_s": statistics.median(r["cpu"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def events_file(customers: int) -> Path:
    """The simulator's events for ``customers`` (seed 7), generated once."""
    WORK.mkdir(exist_ok=True)
    events = WORK / f"events_{customers}.parquet"
    if not events.exists():
        subprocess.run([str(BIN / "tier-ml"), "simulate", "--customers", str(customers), "--seed", "7",
                        "--out", str(events)], check=True)
    return events


def measure(events: Path, runs: int) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """Floor and classify, alternately: their summaries and the per-pair wall ratios."""
    floor_cmd = [sys.executable, "-c", FLOOR_QUERY, str(events), str(WORK / "floor.csv")]
    classify_cmd = [str(BIN / "tier-ml"), "classify", "--events", str(events), "--as-of", AS_OF,
                    "--out", str(WORK / "tiers.csv"), "--rejects", str(WORK / "rejects.csv")]
    floors, classifies, loads = [], [], [os.getloadavg()[0]]
    for _ in range(runs):
        floors.append(timed(floor_cmd))
        classifies.append(timed(classify_cmd))
        loads.append(os.getloadavg()[0])
    pairs = [c["wall"] / f["wall"] for f, c in zip(floors, classifies, strict=True)]
    return summary(floors), {**summary(classifies), "load_min": min(loads), "load_max": max(loads)}, pairs


def report(customers: int, rows: int, runs: int, floor: dict, classify: dict, pairs: list[float]) -> str:
    ratio = classify["median_s"] / floor["median_s"]
    cpu_ratio = classify["cpu_s"] / floor["cpu_s"]
    return "\n".join([
        "## `tier-ml classify` (issue 2)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}; the machine is",
        "shared with other jobs, so the floor runs alternately with classify and the ratios are the numbers to read.",
        "",
        f"Data: simulator output, {customers:,} customers, {rows:,} event rows (refunds, cancels,",
        f"replays, malformed rows, 3 regions, 3 currencies), default policy, as of {AS_OF}.",
        f"Whole processes, median of {runs} runs each.",
        "",
        "| job | median s | min s | CPU s (median) | peak memory MB |",
        "|---|---:|---:|---:|---:|",
        f"| floor: one DuckDB query summing matured, never-refunded spend per customer | {floor['median_s']:.2f} "
        f"| {floor['min_s']:.2f} | {floor['cpu_s']:.2f} | {floor['peak_mb']:.0f} |",
        f"| `tier-ml classify` (validation, replays, refunds, grace, full output + rejects) | "
        f"{classify['median_s']:.2f} | {classify['min_s']:.2f} | {classify['cpu_s']:.2f} | {classify['peak_mb']:.0f} |",
        "",
        f"Ratio classify / floor: **{ratio:.1f}x** wall (median of the pairs {statistics.median(pairs):.1f}x), "
        f"{cpu_ratio:.1f}x CPU time (target <= 3x); absolute target < 60 s: "
        f"{'met' if classify['median_s'] < 60 else 'missed'}; peak memory target < 4 GB: "
        f"{'met' if classify['peak_mb'] < 4096 else 'missed'}. Load average (1 min) during the runs: "
        f"{classify['load_min']:.1f}-{classify['load_max']:.1f} on {os.cpu_count()} cores.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"Also write the section to {REPORT.relative_to(ROOT)}.")
    args = parser.parse_args()
    events = events_file(args.customers)
    import pyarrow.parquet as pq

    rows = pq.read_metadata(events).num_rows
    floor, classify, pairs = measure(events, args.runs)
    section = report(args.customers, rows, args.runs, floor, classify, pairs)
    if args.write:
        write_section(REPORT, section)
    print(section)


if __name__ == "__main__":
    main()
