"""How close can a churn model get? The observable-information bound on simulated data (issue 6).

Usage::

    .venv/bin/python benchmarks/bench_oracle.py [--customers 20000] [--write]

Simulates ``--customers`` customers over two years (seed 7, like bench_training.py),
builds the training data with the same cutoffs and purged split as ``tier-ml train``
(as of 2025-12-31, horizon 90 days), fits the churn model the same way (without
MLflow) and scores the validation rows with it, with BG/NBD and with:

- the simulator's oracle (knows the latent state: healthy / declining since when / churned);
- the filtered oracle (``tier_ml.oracle_filter``): knows every customer's true parameters
  but only the observed order log (times and values), not the latent state;
- the same filter without order values, and with population-mean parameters;
- the same filter with each customer's order rate integrated over the population's gamma
  distribution (``prior_churn_probability``: what a model can learn from the log).

Prints a Markdown section (``## How close can a churn model get?``); ``--write`` also
writes it to ``docs/bench/oracle.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tier_ml.oracle_filter import (  # noqa: E402
    filtered_churn_probability,
    population_truth,
    prior_churn_probability,
)
from tier_ml.policy import load_policy  # noqa: E402
from tier_ml.simulate import (  # noqa: E402
    SimulationConfig,
    oracle_churn_probability,
    simulate,
    write_simulation,
)

AS_OF = datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)
HORIZON = 90.0


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}"
    )


def validation_scores(events_path: Path, seed: int = 0) -> pd.DataFrame:
    """The validation rows of ``tier-ml train`` with the model's and the baselines' scores."""
    from features import CATEGORICAL_COLUMNS, FEATURE_COLUMNS
    from training.data import (
        build_dataset,
        first_event_time,
        part,
        purged_split,
        training_cutoffs,
    )
    from training.evaluate import evaluate_churn
    from training.fit import BoosterConfig, fit_churn, make_encoder

    config = BoosterConfig(interval_draws=0)  # the bands do not change churn_probability
    first = first_event_time(events_path)
    cutoffs = training_cutoffs(first, AS_OF, HORIZON)
    split = purged_split(cutoffs, HORIZON)
    used = sorted({*split.train, *split.calibration, *split.validation})
    data = build_dataset(events_path, load_policy(), used, HORIZON, AS_OF)
    train, calibration, validation = (
        part(data, split.train),
        part(data, split.calibration),
        part(data, split.validation),
    )
    encoder = make_encoder(
        train, FEATURE_COLUMNS, CATEGORICAL_COLUMNS, HORIZON, config.use_bgnbd_features
    )
    model = fit_churn(encoder, train, calibration, config, seed)
    evaluation = evaluate_churn(model, train, validation, HORIZON)
    out = validation.copy()
    for name, scores in evaluation.scores.items():
        out[f"score_{name}"] = scores
    return out


def add_oracles(
    validation: pd.DataFrame,
    truth: pd.DataFrame,
    events: pd.DataFrame,
    config: SimulationConfig,
    prior_nodes: int,
) -> dict:
    """Oracle scores per validation row (added as columns); seconds per oracle."""
    seconds: dict[str, float] = {}
    population = population_truth(truth)
    scorers = {
        "oracle": lambda cut: oracle_churn_probability(truth, cut, HORIZON),
        "filtered": lambda cut: filtered_churn_probability(truth, events, cut, HORIZON),
        "filtered_times": lambda cut: filtered_churn_probability(
            truth, events, cut, HORIZON, use_values=False
        ),
        "filtered_population": lambda cut: filtered_churn_probability(
            population, events, cut, HORIZON
        ),
        "prior": lambda cut: prior_churn_probability(
            truth, events, cut, HORIZON, config, nodes=prior_nodes
        ),
    }
    for name, scorer in scorers.items():
        column = np.full(len(validation), np.nan)
        began = time.perf_counter()
        for cutoff in validation["cutoff"].unique():
            rows = (validation["cutoff"] == cutoff).to_numpy()
            scores = scorer(pd.Timestamp(cutoff))
            column[rows] = scores.reindex(validation.loc[rows, "customer_id"]).to_numpy()
        seconds[name] = time.perf_counter() - began
        validation[f"score_{name}"] = column
    return seconds


SCORERS = (
    ("simulator oracle (latent state + parameters)", "oracle"),
    ("filtered oracle: true parameters, order times + values", "filtered"),
    ("filtered oracle: true parameters, order times only", "filtered_times"),
    ("filtered oracle: population-mean parameters, times + values", "filtered_population"),
    ("filter, rate integrated over the population (times only)", "prior"),
    ("LightGBM (calibrated)", "model"),
    ("baseline: BG/NBD", "bgnbd"),
    ("baseline: recency", "recency"),
)


def auc_table(validation: pd.DataFrame) -> list[str]:
    y = validation["churned"].to_numpy(dtype=int)
    gold = (validation["tier"].astype(str) == "Gold").to_numpy()
    lines = [
        "| churn score, validation cutoffs | ROC AUC | ROC AUC Gold | mean p (churn rate "
        f"{y.mean():.4f}) |",
        "|---|---|---|---|",
    ]
    for label, name in SCORERS:
        p = validation[f"score_{name}"].to_numpy(dtype=float)
        lines.append(
            f"| {label} | {roc_auc_score(y, p):.4f} | {roc_auc_score(y[gold], p[gold]):.4f} "
            f"| {p.mean():.4f} |"
        )
    return lines


def run(customers: int, prior_nodes: int) -> list[str]:
    config = SimulationConfig(customers=customers, seed=7)
    with tempfile.TemporaryDirectory() as folder:
        sim = simulate(config)
        written = write_simulation(sim, Path(folder) / "events.parquet")
        began = time.perf_counter()
        validation = validation_scores(written.events)
        trained = time.perf_counter() - began
    seconds = add_oracles(validation, sim.truth, sim.events, config, prior_nodes)
    cutoffs = sorted({f"{pd.Timestamp(c):%Y-%m-%d %H:%M}" for c in validation["cutoff"]})
    y = validation["churned"].to_numpy(dtype=int)
    auc = {
        name: roc_auc_score(y, validation[f"score_{name}"].to_numpy(dtype=float))
        for _, name in SCORERS
    }
    lines = [
        f"### {customers:,} customers, 2 years, seed 7, as of {AS_OF:%Y-%m-%d}, horizon {HORIZON:g} days",
        "",
        f"Validation rows {len(validation):,} (cutoffs {', '.join(cutoffs)}), the rows and labels "
        f"of `tier-ml train`; model fitted in {trained:.0f} s. Filter time for both cutoffs: "
        f"{seconds['filtered']:.1f} s ({seconds['oracle']:.1f} s for the latent oracle; "
        f"{seconds['prior']:.0f} s for the rate-integrated filter, {prior_nodes} rates).",
        "",
        *auc_table(validation),
        "",
        f"Latent oracle − filtered oracle (true parameters): **{auc['oracle'] - auc['filtered']:.4f}** "
        "AUC: what knowing the latent state adds; no model that reads the order log has it. "
        f"Issue 6 asks for the model within 0.03 of the latent oracle, i.e. AUC >= "
        f"{auc['oracle'] - 0.03:.4f}; the filtered oracle with the *true* parameters reaches "
        f"{auc['filtered']:.4f}. Model gap to the filtered oracle: "
        f"**{auc['filtered'] - auc['model']:.4f}**; to the population-parameter filter: "
        f"**{auc['filtered_population'] - auc['model']:+.4f}**; to the rate-integrated filter "
        f"(the population, not the customer, is known): **{auc['prior'] - auc['model']:+.4f}**.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--prior-nodes", type=int, default=16, help="rates of the prior filter")
    parser.add_argument("--write", action="store_true", help="write docs/bench/oracle.md")
    args = parser.parse_args()
    lines = [
        "## How close can a churn model get?",
        "",
        f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}.",
        "",
        *run(args.customers, args.prior_nodes),
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        target = ROOT / "docs" / "bench" / "oracle.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")


if __name__ == "__main__":
    main()
