"""Benchmark of the Spark engine (issue 10): ``classify`` on Spark ``local[2]`` against DuckDB.

1. Parity at the issue's size: simulator data (50k customers by default),
   ``tier-ml classify --engine spark`` and ``--engine duckdb`` as whole processes;
   the tiers and rejects files must be byte for byte the same (the run stops otherwise).
2. Speed: the same two commands on a larger simulated file (1M customers by
   default; ``--customers 200000`` on a busy machine, then the report extrapolates
   linearly and says so). Reports medians, peak memory of the driver process, the
   ratio Spark / DuckDB, and Spark's throughput per core (events per core-second,
   start-up excluded), the number the cluster sizing in docs/spark.md is built on.

Usage::

    .venv/bin/python benchmarks/bench_spark.py [--customers 1000000] [--parity-customers 50000] \
        [--runs 1] [--write docs/bench/spark.md]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench"
BIN = Path(sys.executable).parent
AS_OF = "2025-12-31T23:59:59Z"
TARGET_CUSTOMERS = 1_000_000


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MB) of one whole process (children included)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(
            f"benchmark command failed: {' '.join(command)}\n{process.stderr.read().decode()}"
        )
    return elapsed, usage.ru_maxrss / 1024


def spark_env() -> dict[str, str]:
    env = dict(os.environ, SPARK_MASTER="local[2]", PYSPARK_PYTHON=sys.executable)
    env.setdefault("PYSPARK_SUBMIT_ARGS", "--driver-memory 4g pyspark-shell")
    return env


def simulated(customers: int) -> tuple[Path, int]:
    """The simulator's events for ``customers`` (made once, reused), and their row count."""
    import pyarrow.parquet as pq

    WORK.mkdir(exist_ok=True)
    path = WORK / f"spark_events_{customers}.parquet"
    if not path.exists():
        subprocess.run(
            [
                str(BIN / "tier-ml"),
                "simulate",
                "--customers",
                str(customers),
                "--seed",
                "7",
                "--out",
                str(path),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return path, pq.ParquetFile(path).metadata.num_rows


def classify(events: Path, engine: str, tag: str) -> tuple[list[str], Path, Path]:
    out, rejects = WORK / f"{tag}_{engine}_tiers.csv", WORK / f"{tag}_{engine}_rejects.csv"
    command = [
        str(BIN / "tier-ml"),
        "classify",
        "-e",
        str(events),
        "--as-of",
        AS_OF,
        "-o",
        str(out),
        "--rejects",
        str(rejects),
        "--engine",
        engine,
    ]
    return command, out, rejects


def run(events: Path, engine: str, tag: str, runs: int) -> dict[str, float]:
    command, _, _ = classify(events, engine, tag)
    env = spark_env() if engine == "spark" else None
    results = [timed(command, env) for _ in range(runs)]
    return {
        "median_s": statistics.median(r[0] for r in results),
        "peak_mb": max(r[1] for r in results),
    }


def startup_seconds() -> float:
    """A Spark session and one trivial job: the fixed cost inside every Spark run."""
    code = (
        "from tier_ml.engines.spark import spark_session; "
        "s = spark_session(); s.range(10).count(); s.stop()"
    )
    return timed([sys.executable, "-c", code], spark_env())[0]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores (shared with other jobs), Linux, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=TARGET_CUSTOMERS)
    parser.add_argument("--parity-customers", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()

    parity_events, parity_rows = simulated(args.parity_customers)
    times = {}
    for engine in ("duckdb", "spark"):
        times[engine] = run(parity_events, engine, "parity", 1)
    _, duck_out, duck_rejects = classify(parity_events, "duckdb", "parity")
    _, spark_out, spark_rejects = classify(parity_events, "spark", "parity")
    same = filecmp.cmp(duck_out, spark_out, shallow=False) and filecmp.cmp(
        duck_rejects, spark_rejects, shallow=False
    )
    if not same:
        raise SystemExit("parity failed: Spark and DuckDB wrote different files")

    events, rows = simulated(args.customers)
    duck = run(events, "duckdb", "speed", args.runs)
    spark = run(events, "spark", "speed", args.runs)
    startup = startup_seconds()
    scale = TARGET_CUSTOMERS / args.customers
    ratio = spark["median_s"] / duck["median_s"]
    work = max(spark["median_s"] - startup, 1e-9)
    per_core = rows / work / 2

    lines = [
        "## Spark engine: classify on Spark local[2] vs DuckDB (issue 10)",
        "",
        f"Machine: {machine()}. Whole `tier-ml classify` processes (start-up included), "
        f"as of {AS_OF}, simulator data (seed 7), {args.runs} run(s) each; Spark with "
        "`SPARK_MASTER=local[2]`, `--driver-memory 4g`, default shuffle partitions (200, AQE on), customer buckets by `bucket_count` (one per 2.5M events, at least one per core).",
        "",
        f"**Parity** at {args.parity_customers:,} customers ({parity_rows:,} events): tiers and rejects "
        f"files byte for byte identical: **{'yes' if same else 'NO'}** "
        f"(DuckDB {times['duckdb']['median_s']:.1f} s, Spark {times['spark']['median_s']:.1f} s).",
        "",
        "| engine | customers | events | median s | peak MB (driver process) |",
        "|---|---:|---:|---:|---:|",
        f"| duckdb | {args.customers:,} | {rows:,} | {duck['median_s']:.1f} | {duck['peak_mb']:.0f} |",
        f"| spark local[2] | {args.customers:,} | {rows:,} | {spark['median_s']:.1f} | {spark['peak_mb']:.0f} |",
        "",
        f"**Ratio Spark / DuckDB: {ratio:.1f}x** (DuckDB faster on one machine, as the issue expects). "
        f"Spark start-up (session + one trivial job): {startup:.1f} s. "
        f"Spark throughput: **{per_core:,.0f} events per core-second** (start-up excluded).",
    ]
    if scale != 1:
        lines += [
            "",
            f"Measured at {args.customers:,} customers, not {TARGET_CUSTOMERS:,}: the machine is shared "
            f"and busy. Linear extrapolation to {TARGET_CUSTOMERS:,} customers (~{rows * scale:,.0f} events): "
            f"DuckDB ~{duck['median_s'] * scale:.0f} s, Spark ~{startup + work * scale:.0f} s "
            f"(ratio ~{(startup + work * scale) / (duck['median_s'] * scale):.1f}x).",
        ]
    load = os.getloadavg()[1]
    lines += [
        "",
        f"Load average (5 min) at the end of the run: {load:.1f} on {os.cpu_count()} cores. Above the "
        "core count the seconds (and the throughput per core) include waiting for other jobs.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
