"""Benchmark of the order simulator: generation rate (events/s) and Parquet write time.

Usage::

    .venv/bin/python benchmarks/bench_simulate.py [--customers 1000000] [--runs 3]

Prints one JSON line. ``seconds`` is the median over ``--runs`` generations (the
``simulate()`` call: events, truth and malformed-row table built in memory),
excluding writing; ``write_parquet_seconds`` is one write of events and truth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tier_ml.simulate import SimulationConfig, simulate, write_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    config = SimulationConfig(customers=args.customers, seed=args.seed)
    simulate(SimulationConfig(customers=1000, seed=args.seed))  # warm caches and imports
    timings = []
    sim = None
    for _ in range(args.runs):
        sim = simulate(config)
        timings.append(sim.seconds)
    assert sim is not None
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        written = write_simulation(sim, Path(folder) / "events.parquet")
        write_seconds = time.perf_counter() - began
        size = written.events.stat().st_size
    seconds = statistics.median(timings)
    print(
        json.dumps(
            {
                "benchmark": "simulate",
                "customers": config.n_customers,
                "events": len(sim.events),
                "days": config.days,
                "runs": args.runs,
                "seconds": round(seconds, 3),
                "seconds_all_runs": [round(t, 3) for t in timings],
                "events_per_second": round(len(sim.events) / seconds),
                "write_parquet_seconds": round(write_seconds, 3),
                "parquet_megabytes": round(size / 1e6, 1),
                "python": platform.python_version(),
                "numpy": np.__version__,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
