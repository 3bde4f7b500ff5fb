"""Features, training sets and scores on Spark ``local[2]`` equal the DuckDB path (floats to tolerance).

Features are compared through the CLI (``features build --engine spark|duckdb``);
the data is the training fixtures' (2,500 simulated customers), shared with the
training tests so the models are trained once per session.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import features
from tier_ml.cli import app

runner = CliRunner()
CUTOFF = datetime(2025, 3, 1, tzinfo=UTC)

pytestmark = pytest.mark.slow


def _on_both_engines(
    args: list[str], out: Path, read: Callable[[Path], pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """Run the CLI command ``args`` with ``--engine spark`` and ``duckdb``; read each output."""
    outs = {}
    for engine in ("spark", "duckdb"):
        target = out.with_name(f"{engine}_{out.name}")
        result = runner.invoke(app, [*args, "-o", str(target), "--engine", engine])
        assert result.exit_code == 0, result.output
        outs[engine] = read(target)
    return outs


def test_training_set_on_spark_equals_duckdb_on_a_customer_sample(
    spark: Any, training_data: Any
) -> None:
    """Features and labels of a 30 % customer sample equal the DuckDB rows of those customers."""
    from features.spark import build_training_set_spark

    want = features.build_training_set(training_data.events, training_data.policy, [CUTOFF], 90)
    got = build_training_set_spark(
        training_data.events, training_data.policy, [CUTOFF], 90, spark=spark, sample_fraction=0.3
    )
    assert 0.2 * len(want) < len(got) < 0.4 * len(want)
    assert got["churned"].nunique() == 2 and got["tier_change"].nunique() >= 2
    kept = want[want["customer_id"].isin(got["customer_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, kept, check_exact=False, rtol=1e-9, atol=1e-9)


def test_cli_score_engine_spark_equals_duckdb(
    spark: Any, trained_models: Any, tmp_path: Path
) -> None:
    """Both registered models shipped to the executors and applied per partition; same scores."""
    data = trained_models.data
    outs = _on_both_engines(
        [
            *("score", "-e", str(data.events), "--as-of", data.as_of.isoformat()),
            *("--tracking-uri", trained_models.tracking_uri),
        ],
        tmp_path / "scores.csv",
        lambda out: pd.read_csv(out, dtype={"customer_id": str}),
    )
    assert len(outs["spark"]) > 1000
    pd.testing.assert_frame_equal(
        outs["spark"], outs["duckdb"], check_exact=False, rtol=1e-9, atol=1e-12
    )


def test_cli_features_build_engine_spark(spark: Any, training_data: Any, tmp_path: Path) -> None:
    outs = _on_both_engines(
        ["features", "build", "-e", str(training_data.events), "--cutoffs", "2025-03-01"],
        tmp_path / "features.parquet",
        pd.read_parquet,
    )
    pd.testing.assert_frame_equal(outs["spark"], outs["duckdb"], check_exact=False, rtol=1e-9)


def test_data_end_on_spark_skips_rejected_rows_as_duckdb_does(spark: Any, tmp_path: Path) -> None:
    """The default data end on Spark is the latest event that passes the row checks, as on DuckDB."""
    from features.build import data_end_us
    from features.spark import data_end_us_spark
    from tier_ml.policy import load_policy

    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,event_type,order_id,customer_id,occurred_at,amount,currency,channel,region\n"
        "e1,placed,o1,c1,2025-04-01T00:00:00Z,100,USD,web,US\n"
        "e2,placed,o2,c1,2099-06-01T00:00:00Z,100,XXX,web,US\n"  # a mistyped year, rejected
    )
    policy = load_policy()
    end = data_end_us(path, policy)
    assert end == int(datetime(2025, 4, 1, tzinfo=UTC).timestamp()) * 1_000_000
    assert data_end_us_spark(path, policy, spark) == end
