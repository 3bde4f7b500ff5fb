"""`tier-ml features build` as a user runs it, and the single-customer path from a real SQLite store."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features import FEATURE_COLUMNS, LABEL_COLUMNS, build_features, store_customer_features
from tests.unit.test_features import assert_same_features
from tier_ml.cli import app
from tier_ml.money import instant_to_micros
from tier_ml.policy import load_policy
from tier_ml.simulate import SimulationConfig, simulate, write_simulation
from tier_ml.store.service import apply_events, open_store

runner = CliRunner()


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("features")
    return write_simulation(
        simulate(SimulationConfig(customers=300, seed=9)), folder / "events.parquet"
    ).events


def test_build_with_labels_writes_a_training_table(events_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.parquet"
    result = runner.invoke(
        app,
        [
            "features",
            "build",
            "--events",
            str(events_file),
            "--cutoffs",
            "monthly:2025-05-01:2025-12-01",
            "--horizon-days",
            "90",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert list(table.columns) == ["customer_id", "cutoff", *FEATURE_COLUMNS, *LABEL_COLUMNS]
    # the data ends 2025-12-31: Nov and Dec leave no full 90-day window (Oct 1 + 90 days = Dec 30)
    assert sorted(table["cutoff"].dt.strftime("%Y-%m-%d").unique()) == [
        "2025-05-01",
        "2025-06-01",
        "2025-07-01",
        "2025-08-01",
        "2025-09-01",
        "2025-10-01",
    ]
    assert "skipped 2 cutoffs" in result.output
    september = table[table["cutoff"] == pd.Timestamp("2025-09-01", tz="UTC")].drop(
        columns=LABEL_COLUMNS
    )
    expected = build_features(events_file, load_policy(), datetime(2025, 9, 1, tzinfo=UTC))
    assert_same_features(september.reset_index(drop=True), expected)


def test_build_without_horizon_writes_features_only_as_csv(
    events_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scoring.csv"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "tiers: [{name: Base}, {name: Plus, min_spend: 500}]\nfx_rates: {EUR: 1.1, GBP: 1.3}\n",
        encoding="utf-8",
    )
    result = runner.invoke(
        app,
        [
            "features",
            "build",
            "-e",
            str(events_file),
            "--cutoffs",
            "2025-03-01, 2025-12-31T12:00:00Z",
            "--policy",
            str(policy),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["customer_id", "cutoff", *FEATURE_COLUMNS]
    assert table["cutoff"].nunique() == 2 and set(table["tier"]) <= {"Base", "Plus"}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--events", "missing.parquet", "--cutoffs", "2025-01-01"], "no such events file"),
        (["--events", "{events}", "--cutoffs", "2025-13-01"], "is not an ISO 8601"),
        (["--events", "{events}", "--cutoffs", "monthly:2025-01"], "monthly:START:END"),
        (
            ["--events", "{events}", "--cutoffs", "2025-12-01", "--horizon-days", "90"],
            "no cutoff has a full",
        ),
        (
            ["--events", "{events}", "--cutoffs", "2025-01-01", "--policy", "nope.yaml"],
            "cannot read policy",
        ),
        (
            ["--events", "{events}", "--cutoffs", "2025-01-01", "--out", "x.xlsx"],
            "write .parquet or .csv",
        ),
        (["--events", "{bad}", "--cutoffs", "2025-01-01"], "unknown events format"),
        (["--events", "{corrupt}", "--cutoffs", "2025-01-01", "--horizon-days", "30"], "cannot read parquet"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    events_file: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    bad = tmp_path / "events.txt"
    bad.write_text("x", encoding="utf-8")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    filled = [a.format(events=events_file, bad=bad, corrupt=corrupt) for a in arguments]
    result = runner.invoke(
        app,
        ["features", "build", *filled, "--out", str(tmp_path / "f.parquet")]
        if "--out" not in filled
        else ["features", "build", *filled],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3



def test_an_out_that_cannot_be_written_fails_before_the_work(events_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "features.parquet"
    folder.mkdir()
    for out, message in [(folder, "is a folder"), (events_file, "is the same file as --events")]:
        result = runner.invoke(
            app, ["features", "build", "--events", str(events_file), "--cutoffs", "2025-06-01", "--out", str(out)]
        )
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    assert pd.read_parquet(events_file).shape[0] > 0  # the events are untouched

def test_store_path_equals_batch_for_random_customers(events_file: Path, tmp_path: Path) -> None:
    rows = pd.read_parquet(events_file)
    rows = rows.sort_values("occurred_at", kind="stable")  # the store sees events as they happen
    as_of = datetime(2025, 10, 15, 8, tzinfo=UTC)
    visible = rows[rows["occurred_at"] <= pd.Timestamp(as_of)]
    engine = open_store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    records = visible.astype(object).where(visible.notna(), None).to_dict("records")
    for record in records:
        record["occurred_at"] = (
            record["occurred_at"].isoformat() if record["occurred_at"] is not None else None
        )
    policy = load_policy()
    apply_events(engine, records, instant_to_micros(as_of), policy)
    batch = build_features(events_file, policy, as_of)
    for customer in random.Random(4).sample(batch["customer_id"].tolist(), 25):
        single = store_customer_features(engine, customer, policy, as_of)
        assert_same_features(batch[batch["customer_id"] == customer].reset_index(drop=True), single)
    assert store_customer_features(engine, "nobody", policy, as_of).empty
