"""`make bench`: run the benchmarks and write docs/benchmarks.md.

Each ``benchmarks/bench_<area>.py`` measures one issue's targets (whole processes,
medians, peak memory, the ratio to the floor the issue names) and writes its
Markdown section to ``docs/bench/<area>.md``. This runner runs the chosen ones and
assembles every section into ``docs/benchmarks.md``, so a section measured on its
own (e.g. after tuning one part) joins the report without re-running the rest.
The machine is shared and noisy: read the ratios.

Usage::

    .venv/bin/python benchmarks/run.py                      # everything (about an hour)
    .venv/bin/python benchmarks/run.py --only classify,store
    .venv/bin/python benchmarks/run.py --assemble-only      # just rebuild docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SECTIONS = ROOT / "docs" / "bench"
REPORT = ROOT / "docs" / "benchmarks.md"

sys.path.insert(0, str(BENCH))

import bench_classify  # noqa: E402  (machine() and the 1M events file)

#: The areas in report order, and how each script is told to write its section.
AREAS: dict[str, list[str]] = {
    "simulate": [],  # prints JSON; this runner writes its section
    "classify": ["--write"],
    "store": ["--write"],
    "features": ["--write", str(SECTIONS / "features.md")],
    "training": ["--write", "--million"],
    "oracle": ["--write"],
    "small_shop": ["--write"],
    "serving": ["--out", str(SECTIONS / "serving.md")],
    "notify": [],
    "spark": ["--write", str(SECTIONS / "spark.md")],
}


def run_area(area: str, customers: int, runs: int) -> None:
    """Run one benchmark script; it leaves its section in docs/bench/<area>.md."""
    script = BENCH / f"bench_{area}.py"
    if area == "simulate":
        completed = subprocess.run(
            [sys.executable, str(script), "--customers", str(customers), "--runs", str(runs)],
            check=True, capture_output=True, text=True,
        )
        (SECTIONS / "simulate.md").write_text(simulate_section(json.loads(completed.stdout.strip().splitlines()[-1]), customers, runs))
        return
    subprocess.run([sys.executable, str(script), *AREAS[area]], check=True)


def simulate_section(result: dict, customers: int, runs: int) -> str:
    rate = result.get("events_per_second", 0)
    return "\n".join([
        "## Simulator (issue 3)",
        "",
        f"- {customers:,} customers, {result.get('events', 0):,} events: generation median "
        f"{result.get('seconds', 0):.2f} s = **{rate:,.0f} events/s** (floor named by the issue: "
        f"1,000,000 events/s; ratio {rate / 1e6:.2f}x).",
        f"- Writing Parquet (events + truth): {result.get('write_parquet_seconds', 0):.2f} s.",
        f"- Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"(`benchmarks/bench_simulate.py --customers {customers} --runs {runs}`).",
        "",
    ])


def assemble() -> str:
    """docs/benchmarks.md from the sections, in report order, each as last measured."""
    parts = [
        "# Benchmarks",
        "",
        f"Assembled by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
        "the sections in `docs/bench/` (each says when and how it was measured).",
        f"Machine: {bench_classify.machine()}. The machine is shared and noisy: compare ratios, "
        "not seconds.",
        "",
    ]
    for area in AREAS:
        section = SECTIONS / f"{area}.md"
        if section.exists():
            parts += [section.read_text().rstrip(), ""]
        else:
            parts += [f"## {area}", "", f"Not measured yet: run `benchmarks/run.py --only {area}`.", ""]
    REPORT.write_text("\n".join(parts))
    return REPORT.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(AREAS), help="Comma list of areas to run.")
    parser.add_argument("--customers", type=int, default=1_000_000, help="Simulator benchmark size.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--assemble-only", action="store_true")
    args = parser.parse_args()
    SECTIONS.mkdir(parents=True, exist_ok=True)
    if not args.assemble_only:
        for area in args.only.split(","):
            if area not in AREAS:
                raise SystemExit(f"unknown area {area!r}; choose from {', '.join(AREAS)}")
            print(f"== {area}", flush=True)
            run_area(area, args.customers, args.runs)
    print(assemble())


if __name__ == "__main__":
    main()
