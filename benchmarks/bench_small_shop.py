"""Benchmark of small-shop mode and of the churn intervals (issue 12).

Usage::

    .venv/bin/python benchmarks/bench_small_shop.py [--seeds 10] [--write]

1. Coverage: ``--seeds`` simulated shops of 200 customers with 90 days of history; the
   BTYD fallback's 90 % intervals against the simulator's true churn rate of five
   predicted-probability groups per shop (docs/training.md), next to zero-width and
   shrunk intervals, and the bootstrap over customers for comparison (fewer seeds).
2. Fit time of the fallback (regularised BG/NBD + Laplace draws) for 200 to 20,000 customers.
3. Interval cost per prediction: the LightGBM calibration bands (100 refits) alone, and
   the BTYD models, for 1 and 2,000 rows, against the 30 ms single-prediction p99 target.

Prints a Markdown section (``## Small shops and churn intervals``); ``--write`` also
writes it to ``docs/bench/small_shop.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AS_OF = datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC)
HORIZON = 90.0
TARGET_P99_MS = 30.0


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}"


def shop(customers: int, seed: int, start: str = "2025-04-02"):
    from features import build_features
    from tier_ml.policy import load_policy
    from tier_ml.simulate import SimulationConfig, simulate

    sim = simulate(SimulationConfig(customers=customers, start=start, end="2025-06-30", seed=seed))
    return sim, build_features(sim.events, load_policy(), AS_OF)


def group_coverage(scored: pd.DataFrame, low: str, high: str, groups: int = 5) -> float:
    rank = scored["churn_probability"].rank(method="first")
    means = scored.assign(g=pd.qcut(rank, groups, labels=False)).groupby("g")[[low, high, "oracle"]].mean()
    return float(((means[low] <= means["oracle"]) & (means["oracle"] <= means[high])).mean())


def coverage(seeds: int) -> list[str]:
    from tier_ml.simulate import oracle_churn_probability
    from training.bgnbd import BGNBD
    from training.btyd_model import BTYDChurnModel
    from training.fallback import LOG_PRIOR_SD, fit_btyd
    from training.rfm import rfm_inputs

    laplace, zero, shrunk, boot, width = [], [], [], [], []
    for seed in range(1, seeds + 1):
        sim, features = shop(200, seed)
        churn, _, _ = fit_btyd(features, HORIZON, seed)
        oracle = oracle_churn_probability(sim.truth, AS_OF, HORIZON).reindex(features["customer_id"])
        scored = churn.predict(None, features).assign(oracle=oracle.to_numpy())
        p = scored["churn_probability"]
        laplace.append(group_coverage(scored, "churn_probability_low", "churn_probability_high"))
        zero.append(group_coverage(scored.assign(point=p), "point", "churn_probability"))
        narrow = scored.assign(lo=p - (p - scored["churn_probability_low"]) / 5,
                               hi=p + (scored["churn_probability_high"] - p) / 5)  # fmt: skip
        shrunk.append(group_coverage(narrow, "lo", "hi"))
        width.append(float((scored["churn_probability_high"] - scored["churn_probability_low"]).mean()))
        if seed <= 3:
            rfm = rfm_inputs(features)
            model = BGNBD(log_prior_sd=LOG_PRIOR_SD).fit(rfm["frequency"], rfm["recency"], rfm["age"])
            began = time.perf_counter()
            draws = model.bootstrap(50, seed)
            boot_seconds = time.perf_counter() - began
            other = BTYDChurnModel(model.params_, draws, HORIZON, churn.reference)
            scored_b = other.predict(None, features).assign(oracle=oracle.to_numpy())
            boot.append((group_coverage(scored_b, "churn_probability_low", "churn_probability_high"), boot_seconds))
    return [
        f"### Coverage: {seeds} shops of 200 customers, 90 days of history, 90-day horizon",
        "",
        "Share of predicted-probability groups (5 per shop) whose true churn rate (mean oracle "
        "probability) lies inside the group's mean 90 % interval:",
        "",
        "| intervals | groups covered | nominal |",
        "|---|---|---|",
        f"| BTYD fallback, Laplace posterior (200 draws) | **{np.mean(laplace):.2f}** | 0.90 |",
        f"| bootstrap over customers (50 refits, first {len(boot)} shops, "
        f"{np.mean([b[1] for b in boot]):.1f} s a fit) | {np.mean([b[0] for b in boot]):.2f} | 0.90 |",
        f"| zero width (point estimates) | {np.mean(zero):.2f} | – |",
        f"| shrunk to a fifth of their width | {np.mean(shrunk):.2f} | – |",
        "",
        f"Mean interval width {np.mean(width):.3f}.",
        "",
    ]


def fit_times() -> list[str]:
    from training.fallback import fit_btyd

    rows = ["### Fallback fit time (BG/NBD with prior + 200 Laplace draws)", "",
            "| customers | history | fit s (median of 3) |", "|---|---|---|"]  # fmt: skip
    for customers, start in ((200, "2025-04-02"), (2000, "2025-01-01"), (20000, "2025-01-01")):
        _, features = shop(customers, 5, start)
        times = []
        for _ in range(3):
            began = time.perf_counter()
            fit_btyd(features, HORIZON, 0)
            times.append(time.perf_counter() - began)
        rows.append(f"| {len(features):,} | from {start} | {np.median(times):.3f} |")
    return [*rows, ""]


def _timed(call, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return float(np.median(times) * 1e3), float(np.percentile(times, 99) * 1e3)


def interval_cost() -> list[str]:
    from features import FEATURE_COLUMNS
    from training.calibration import BinaryCalibrator, CalibrationBands
    from training.fallback import fit_btyd

    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, 20_000)
    y = (rng.uniform(0, 1, raw.size) < raw).astype(int)
    point = BinaryCalibrator("isotonic").fit(raw, y)
    bands = CalibrationBands("isotonic", 100).fit(raw, y)
    _, features = shop(2000, 5, "2025-01-01")
    churn, change, _ = fit_btyd(features, HORIZON, 0)
    frame = features[FEATURE_COLUMNS]
    rows = ["### Interval cost per prediction", "",
            f"Target: single prediction p99 {TARGET_P99_MS:g} ms (the whole request).", "",
            "| what | rows | median ms | p99 ms | p99 / target |", "|---|---|---|---|---|"]  # fmt: skip
    for label, n, call in (
        ("LightGBM calibration bands (100 refits)", 1,
         lambda: bands.transform(raw[:1], point.transform(raw[:1]))),
        ("LightGBM calibration bands (100 refits)", 2000,
         lambda: bands.transform(raw[:2000], point.transform(raw[:2000]))),
        ("BTYD churn model (point + interval)", 1, lambda: churn.predict(None, frame.head(1))),
        ("BTYD churn model (point + interval)", 2000, lambda: churn.predict(None, frame.head(2000))),
        ("BTYD tier-change model", 1, lambda: change.predict(None, frame.head(1))),
        ("BTYD tier-change model", 2000, lambda: change.predict(None, frame.head(2000))),
    ):  # fmt: skip
        median, p99 = _timed(call, 200 if n == 1 else 10)
        ratio = f"{p99 / TARGET_P99_MS:.3f}x" if n == 1 else "–"
        rows.append(f"| {label} | {n:,} | {median:.3f} | {p99:.3f} | {ratio} |")
    return [*rows, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="write docs/bench/small_shop.md")
    args = parser.parse_args()
    lines = [
        "## Small shops and churn intervals",
        "",
        f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.1f} "
        "(other jobs share the cores: read the ratios).",
        "",
        *coverage(args.seeds),
        *fit_times(),
        *interval_cost(),
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        target = ROOT / "docs" / "bench" / "small_shop.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")


if __name__ == "__main__":
    main()
