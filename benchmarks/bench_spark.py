"""Benchmark of the Spark engine (issue 10): ``classify`` on Spark ``local[2]`` against DuckDB.

1. Parity at the issue's size: simulator data (50k customers by default),
   ``tier-ml classify --engine spark`` and ``--engine duckdb`` as whole processes;
   the tiers and rejects files must be byte for byte the same (the run stops otherwise).
   ``--skip-parity`` leaves it to tests/spark (it costs minutes on a busy machine).
2. Speed: the same two commands on a larger simulated file (1M customers, ~10M
   events by default; ``--customers 200000`` on a busy machine, then the report
   extrapolates linearly and says so). Reports wall and CPU seconds, peak memory of
   the whole process tree (Spark's JVM and Python workers included), the load average
   during each run, the ratio Spark / DuckDB, and the speed files must match too.
3. Per partition: Spark's event log gives every task's run time, rows, shuffle bytes
   and peak execution memory, stage by stage; with the Python workers' peak memory
   that is the throughput per core and the memory per partition on which the
   cluster sizing for 100M customers / 5B events (printed at the end, and in
   docs/spark.md) is built.

Usage::

    .venv/bin/python benchmarks/bench_spark.py [--customers 1000000] [--parity-customers 50000] \
        [--runs 1] [--skip-parity] [--events FILE] [--features-cutoff 2025-12-01 [--skip-classify]] \
        [--write docs/bench/spark.md]

``--features-cutoff`` also times ``tier-ml features build`` at that cutoff on both
engines (and checks the feature rows are equal to float tolerance).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench"
BIN = Path(sys.executable).parent
AS_OF = "2025-12-31T23:59:59Z"
TARGET_CUSTOMERS = 1_000_000
#: The cluster the estimate is for (issue 10).
CLUSTER_CUSTOMERS, CLUSTER_EVENTS = 100_000_000, 5_000_000_000


class TreeSampler(threading.Thread):
    """Samples a process tree every second: peak RSS (tree, JVM, largest worker), CPU, load.

    ``ru_maxrss`` of ``wait4`` only sees processes that were waited for (not Spark's
    JVM nor its Python workers), so the whole tree is read with psutil instead.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.done = pid, threading.Event()
        self.peak_tree_mb = self.peak_worker_mb = self.peak_jvm_mb = 0.0
        self.cpu: dict[int, float] = {}
        self.loads: list[float] = []

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.done.wait(1.0):
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0.0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss / 2**20
                    times = proc.cpu_times()
                    name = proc.name()
                except psutil.Error:
                    continue
                total += rss
                self.cpu[proc.pid] = max(self.cpu.get(proc.pid, 0.0), times.user + times.system)
                if name == "java":
                    self.peak_jvm_mb = max(self.peak_jvm_mb, rss)
                elif proc.pid != self.pid:
                    self.peak_worker_mb = max(self.peak_worker_mb, rss)
            self.peak_tree_mb = max(self.peak_tree_mb, total)
            self.loads.append(os.getloadavg()[0])


def timed(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall and CPU seconds, peak memory (MB) and 1-minute load average of one process tree."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    sampler = TreeSampler(process.pid)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    if status != 0:
        raise SystemExit(
            f"benchmark command failed: {' '.join(command)}\n{process.stderr.read().decode()}"
        )
    loads = sampler.loads or [os.getloadavg()[0]]
    return {
        "wall_s": elapsed,
        "cpu_s": max(sum(sampler.cpu.values()), usage.ru_utime + usage.ru_stime),
        "peak_mb": max(sampler.peak_tree_mb, usage.ru_maxrss / 1024),
        "peak_worker_mb": sampler.peak_worker_mb,
        "peak_jvm_mb": sampler.peak_jvm_mb,
        "load_mean": statistics.fmean(loads),
        "load_max": max(loads),
    }


def spark_env(event_log: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, SPARK_MASTER="local[2]", PYSPARK_PYTHON=sys.executable)
    args = "--driver-memory 4g"
    if event_log is not None:  # every task's metrics, read back by stage_metrics()
        event_log.mkdir(parents=True, exist_ok=True)
        args += (
            " --conf spark.eventLog.enabled=true --conf spark.eventLog.compress=false"
            f" --conf spark.eventLog.dir=file://{event_log}"
        )
    env.setdefault("PYSPARK_SUBMIT_ARGS", f"{args} pyspark-shell")
    return env


def simulated(customers: int) -> tuple[Path, int]:
    """The simulator's events for ``customers`` (made once, reused), and their row count."""
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
    return path, rows_of(path)


def rows_of(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


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


def run(
    events: Path, engine: str, tag: str, runs: int, event_log: Path | None = None
) -> dict[str, float]:
    """``runs`` timed runs of one engine: median wall and CPU seconds, the worst peaks and load."""
    command, _, _ = classify(events, engine, tag)
    env = spark_env(event_log) if engine == "spark" else None
    results = [timed(command, env) for _ in range(runs)]
    merged = {key: max(r[key] for r in results) for key in results[0]}
    merged["median_s"] = statistics.median(r["wall_s"] for r in results)
    merged["cpu_s"] = statistics.median(r["cpu_s"] for r in results)
    return merged


def same_files(tag: str) -> bool:
    _, duck_out, duck_rejects = classify(Path(), "duckdb", tag)
    _, spark_out, spark_rejects = classify(Path(), "spark", tag)
    return filecmp.cmp(duck_out, spark_out, shallow=False) and filecmp.cmp(
        duck_rejects, spark_rejects, shallow=False
    )


def _new_stage() -> dict[str, Any]:
    return {
        "tasks": 0,
        "run_s": 0.0,
        "max_task_s": 0.0,
        "rows_in": 0,
        "shuffle_read": 0,
        "shuffle_write": 0,
        "peak_task_mb": 0.0,
        "spill_mb": 0.0,
    }


def stage_metrics(event_log: Path) -> list[dict[str, Any]]:
    """Per stage of the last Spark run: tasks, task seconds, rows, shuffle bytes, peak memory.

    Read from Spark's event log (``SparkListenerTaskEnd``): what every partition
    cost, independent of how many cores ran them, the input of the cluster sizing.
    """
    # one application per run (the folder is emptied first); Spark 4 rolls the log into
    # eventlog_v2_<app>/events_<n>_<app> files, Spark 3 writes one file
    logs = sorted(
        (p for p in event_log.rglob("*") if p.is_file() and p.name.startswith("events")),
        key=lambda p: (
            p.parent.name,
            int(p.name.split("_")[1]) if p.name.startswith("events_") else 0,
        ),
    )
    names: dict[int, str] = {}
    stages: dict[int, dict[str, Any]] = {}
    for log in logs:
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # the last line of a log still being written
                continue
            kind = event.get("Event")
            if kind == "SparkListenerStageCompleted":
                info = event["Stage Info"]
                names[info["Stage ID"]] = info["Stage Name"]
            if kind != "SparkListenerTaskEnd" or not event.get("Task Metrics"):
                continue
            m = event["Task Metrics"]
            stage = stages.setdefault(event["Stage ID"], _new_stage())
            read = m.get("Shuffle Read Metrics", {})
            read_bytes = read.get("Remote Bytes Read", 0) + read.get("Local Bytes Read", 0)
            run_s = m.get("Executor Run Time", 0) / 1000
            stage["tasks"] += 1
            stage["run_s"] += run_s
            stage["max_task_s"] = max(stage["max_task_s"], run_s)
            stage["rows_in"] += m.get("Input Metrics", {}).get("Records Read", 0)
            stage["rows_in"] += read.get("Total Records Read", 0)
            stage["shuffle_read"] += read_bytes
            stage["shuffle_write"] += m.get("Shuffle Write Metrics", {}).get(
                "Shuffle Bytes Written", 0
            )
            stage["peak_task_mb"] = max(
                stage["peak_task_mb"], m.get("Peak Execution Memory", 0) / 2**20
            )
            stage["spill_mb"] += m.get("Disk Bytes Spilled", 0) / 2**20
    return [
        {"stage": sid, "name": names.get(sid, "?").split(" at ")[0], **stage}
        for sid, stage in sorted(stages.items())
    ]


def startup_seconds() -> float:
    """A Spark session and one trivial job: the fixed cost inside every Spark run."""
    code = (
        "from tier_ml.engines.spark import spark_session; "
        "s = spark_session(); s.range(10).count(); s.stop()"
    )
    return timed([sys.executable, "-c", code], spark_env())["wall_s"]


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


def stage_table(stages: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| stage | what | tasks | task s (sum) | longest task s | rows in | shuffle read MB "
        "| shuffle write MB | peak exec. MB per task | spill MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for st in stages:
        lines.append(
            f"| {st['stage']} | {st['name']} | {st['tasks']} | {st['run_s']:.1f} "
            f"| {st['max_task_s']:.1f} | {st['rows_in']:,} | {st['shuffle_read'] / 2**20:,.0f} "
            f"| {st['shuffle_write'] / 2**20:,.0f} | {st['peak_task_mb']:,.0f} "
            f"| {st['spill_mb']:,.0f} |"
        )
    return lines


def cluster_estimate(
    rows: int, task_s: float, cpu_s: float, shuffle_bytes: int, worker_mb: float
) -> list[str]:
    """Cluster size for ``CLUSTER_EVENTS`` from this run, linear in events.

    Two rates bound a core's throughput: events per second of *task time*
    (Spark's executor run time; on a busy machine it includes waiting for a
    core, so it is pessimistic) and events per *CPU-second* of the whole process
    tree (no waiting, but no network shuffle or object-store reads either, so
    optimistic). The plan uses their geometric mean.
    """
    pessimistic, optimistic = rows / task_s, rows / cpu_s
    per_core = (pessimistic * optimistic) ** 0.5
    scale = CLUSTER_EVENTS / rows
    core_hours = CLUSTER_EVENTS / per_core / 3600
    shuffle_gb = shuffle_bytes * scale / 2**30
    lines = [
        f"Cluster estimate for {CLUSTER_CUSTOMERS:,} customers / {CLUSTER_EVENTS:,} events, "
        f"linear in events from this run: {pessimistic:,.0f} events per second of task time "
        f"(pessimistic: includes waiting for a core) and {optimistic:,.0f} per CPU-second "
        f"(optimistic: no network); planning rate their geometric mean, **{per_core:,.0f} events "
        f"per core-second -> {core_hours:,.0f} core-hours** "
        f"({CLUSTER_EVENTS / pessimistic / 3600:,.0f} to {CLUSTER_EVENTS / optimistic / 3600:,.0f}); "
        f"shuffle written ~{shuffle_gb:,.0f} GB in all; largest Python worker here "
        f"{worker_mb:,.0f} MB for a bucket of <= 2.5M events.",
        "",
        "| executors x cores | cores | expected wall (core-hours / cores / 0.75 efficiency) |",
        "|---|---:|---:|",
    ]
    for executors, cores in ((12, 8), (25, 8), (50, 8), (100, 8)):
        total = executors * cores
        lines.append(
            f"| {executors} x {cores} | {total} | {core_hours / total / 0.75 * 60:,.0f} min |"
        )
    return lines


def features_lines(events: Path, rows: int, customers: int, cutoff: str) -> list[str]:
    """``tier-ml features build`` at one cutoff on both engines: times, memory, equality."""
    import pandas as pd

    timings, frames = {}, {}
    for engine in ("duckdb", "spark"):
        out = WORK / f"features_{engine}.parquet"
        command = [
            str(BIN / "tier-ml"),
            "features",
            "build",
            "-e",
            str(events),
            "--cutoffs",
            cutoff,
            "-o",
            str(out),
            "--engine",
            engine,
        ]
        print(f"{time.strftime('%H:%M:%S')} features on {engine}", file=sys.stderr, flush=True)
        timings[engine] = timed(command, spark_env() if engine == "spark" else None)
        frames[engine] = pd.read_parquet(out)
    try:
        pd.testing.assert_frame_equal(
            frames["spark"], frames["duckdb"], check_exact=False, rtol=1e-9
        )
        equal = "yes"
    except AssertionError as exc:
        equal = f"NO ({str(exc).splitlines()[0]})"
    duck, spark = timings["duckdb"], timings["spark"]
    return [
        "",
        f"### features build at one cutoff ({cutoff}), {customers:,} customers / {rows:,} events",
        "",
        "| engine | wall s | CPU s | peak MB (process tree) | load avg 1 min (mean / max) |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {t['wall_s']:.1f} | {t['cpu_s']:.0f} | {t['peak_mb']:,.0f} "
            f"| {t['load_mean']:.1f} / {t['load_max']:.1f} |"
            for name, t in (("duckdb", duck), ("spark local[2]", spark))
        ),
        "",
        f"**Ratio Spark / DuckDB: {spark['wall_s'] / duck['wall_s']:.1f}x wall, "
        f"{spark['cpu_s'] / duck['cpu_s']:.1f}x CPU**; {len(frames['spark']):,} feature rows, "
        f"equal to the DuckDB rows (rtol 1e-9): **{equal}**.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=TARGET_CUSTOMERS)
    parser.add_argument("--parity-customers", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--skip-parity", action="store_true", help="leave the 50k parity to tests/spark"
    )
    parser.add_argument(
        "--events", type=Path, default=None, help="an existing simulator file of --customers"
    )
    parser.add_argument(
        "--features-cutoff", default=None, help="also time `features build` at this cutoff"
    )
    parser.add_argument(
        "--skip-classify", action="store_true", help="with --features-cutoff: features only"
    )
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()

    parity_line = "Parity at the issue's size is checked by tests/spark (not rerun here)."
    if not args.skip_parity:
        parity_events, parity_rows = simulated(args.parity_customers)
        times = {engine: run(parity_events, engine, "parity", 1) for engine in ("duckdb", "spark")}
        if not same_files("parity"):
            raise SystemExit("parity failed: Spark and DuckDB wrote different files")
        parity_line = (
            f"**Parity** at {args.parity_customers:,} customers ({parity_rows:,} events): tiers "
            f"and rejects files byte for byte identical: **yes** (DuckDB "
            f"{times['duckdb']['median_s']:.1f} s, Spark {times['spark']['median_s']:.1f} s)."
        )

    if args.events is not None:
        events, rows = args.events, rows_of(args.events)
    else:
        events, rows = simulated(args.customers)
    if args.skip_classify and args.features_cutoff:
        lines = [
            "## Spark engine: features build on Spark local[2] vs DuckDB (issue 10)",
            "",
            f"Machine: {machine()}. Whole processes, one run each.",
            *features_lines(events, rows, args.customers, args.features_cutoff),
        ]
        emit("\n".join(lines) + "\n", args.write)
        return
    event_log = WORK / "spark-events"
    shutil.rmtree(event_log, ignore_errors=True)
    print(f"{time.strftime('%H:%M:%S')} duckdb on {rows:,} events", file=sys.stderr, flush=True)
    duck = run(events, "duckdb", "speed", args.runs)
    print(f"{time.strftime('%H:%M:%S')} spark on {rows:,} events", file=sys.stderr, flush=True)
    spark = run(events, "spark", "speed", args.runs, event_log=event_log)
    print(f"{time.strftime('%H:%M:%S')} spark start-up", file=sys.stderr, flush=True)
    same = same_files("speed")
    startup = startup_seconds()
    stages = stage_metrics(event_log)
    task_s = sum(st["run_s"] for st in stages)
    shuffle = sum(st["shuffle_write"] for st in stages)
    scale = TARGET_CUSTOMERS / args.customers
    ratio = spark["median_s"] / duck["median_s"]

    lines = [
        "## Spark engine: classify on Spark local[2] vs DuckDB (issue 10)",
        "",
        f"Machine: {machine()}. Whole `tier-ml classify` processes (start-up included), "
        f"as of {AS_OF}, simulator data (seed 7), {args.runs} run(s) each; Spark with "
        "`SPARK_MASTER=local[2]`, `--driver-memory 4g`, default shuffle partitions (200, AQE on), "
        "customer buckets by `bucket_count` (one per 2.5M events, at least one per core).",
        "",
        parity_line,
        "",
        "| engine | customers | events | wall s | CPU s | peak MB (process tree) | load avg 1 min (mean / max) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| duckdb | {args.customers:,} | {rows:,} | {duck['median_s']:.1f} | {duck['cpu_s']:.0f} "
        f"| {duck['peak_mb']:,.0f} | {duck['load_mean']:.1f} / {duck['load_max']:.1f} |",
        f"| spark local[2] | {args.customers:,} | {rows:,} | {spark['median_s']:.1f} "
        f"| {spark['cpu_s']:.0f} | {spark['peak_mb']:,.0f} (JVM {spark['peak_jvm_mb']:,.0f}, "
        f"largest Python worker {spark['peak_worker_mb']:,.0f}) "
        f"| {spark['load_mean']:.1f} / {spark['load_max']:.1f} |",
        "",
        f"**Ratio Spark / DuckDB: {ratio:.1f}x wall, {spark['cpu_s'] / duck['cpu_s']:.1f}x CPU** "
        f"(DuckDB faster on one machine, as the issue expects). Files of the speed run byte for "
        f"byte identical: **{'yes' if same else 'NO'}**. Spark start-up (session + one trivial "
        f"job): {startup:.1f} s.",
    ]
    if stages:
        lines += [
            "",
            f"Per partition (Spark event log, {sum(st['tasks'] for st in stages)} tasks, "
            f"{task_s:,.0f} task-seconds in all = **{rows / task_s:,.0f} events per core-second**; "
            f"shuffle written {shuffle / 2**20:,.0f} MB = {shuffle / rows:.0f} bytes per event):",
            "",
            *stage_table(stages),
            "",
            *cluster_estimate(rows, task_s, spark["cpu_s"], shuffle, spark["peak_worker_mb"]),
        ]
    if scale != 1:
        work = max(spark["median_s"] - startup, 1e-9)
        lines += [
            "",
            f"Measured at {args.customers:,} customers, not {TARGET_CUSTOMERS:,}: linear "
            f"extrapolation to {TARGET_CUSTOMERS:,} customers (~{rows * scale:,.0f} events): "
            f"DuckDB ~{duck['median_s'] * scale:.0f} s, Spark ~{startup + work * scale:.0f} s "
            f"(ratio ~{(startup + work * scale) / (duck['median_s'] * scale):.1f}x).",
        ]
    lines += [
        "",
        "The load average above the core count means the seconds include waiting for other "
        "jobs on the shared machine: read the ratio and the per-core figures, not the seconds.",
    ]
    if args.features_cutoff:
        lines += features_lines(events, rows, args.customers, args.features_cutoff)
    emit("\n".join(lines) + "\n", args.write)


def emit(text: str, write: Path | None) -> None:
    print(text)
    if write is not None:
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
