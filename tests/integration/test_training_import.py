"""End to end from a retailer's export with only customer, date and amount: import, train, score.

The export comes from a simulator configured unlike the defaults the models were
developed on (fewer, larger orders; faster churn; more declines), written with day-level
dates and no event ids, types, channels or regions: what a shop's order report looks like.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from tier_ml.cli import app
from tier_ml.simulate import SimulationConfig, simulate

AS_OF = "2025-06-30T23:59:59Z"


def shop_export(path: Path) -> Path:
    config = SimulationConfig(
        customers=2500, start="2024-01-01", end="2025-06-30", seed=23,
        orders_per_year=7.0, mean_basket=4200.0, healthy_days=420.0, decline_share=0.7,
        refund_share=0.0, cancel_share=0.0, replay_share=0.0, malformed_share=0.0,
    )  # fmt: skip
    events = simulate(config).events
    placed = events[events["event_type"] == "placed"]
    export = pd.DataFrame(
        {
            "CustID": placed["customer_id"].str.removeprefix("C").astype(int),
            "OrderDate": placed["occurred_at"].dt.strftime("%m/%d/%Y"),
            "Total": placed["amount"].map(lambda v: f"${v:,.2f}"),
        }
    )
    export.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_imported_export_trains_and_scores(tmp_path: Path) -> None:
    runner = CliRunner()
    source = shop_export(tmp_path / "orders.csv")
    events = tmp_path / "events.parquet"
    imported = runner.invoke(
        app,
        ["import", str(source), "--map", "customer_id=CustID", "--map", "occurred_at=OrderDate",
         "--map", "amount=Total", "--currency", "USD", "--out", str(events)],
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained = runner.invoke(
        app,
        ["train", "--events", str(events), "--as-of", AS_OF, "--tracking-uri", uri,
         "--experiment", "shop", "--max-rounds", "80", "--max-cutoffs", "10"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "registered churn version 1 (challenger, champion)" in trained.output

    client = MlflowClient(uri, uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("shop").experiment_id], "tags.`tier_ml.kind` = 'churn'"
    )
    metrics = runs[0].data.metrics
    assert metrics["val_roc_auc"] > 0.7
    assert metrics["baseline_bgnbd_val_roc_auc"] > 0.6  # the baseline is fitted and sensible

    out = tmp_path / "scores.parquet"
    scored = runner.invoke(
        app,
        ["score", "--events", str(events), "--as-of", AS_OF, "--out", str(out),
         "--tracking-uri", uri],
    )  # fmt: skip
    assert scored.exit_code == 0, scored.output
    scores = pd.read_parquet(out)
    customers = pd.read_csv(source)["CustID"].nunique()
    assert len(scores) == customers
    assert scores["churn_probability"].between(0, 1).all()
    assert set(scores["tier"]) <= {"Silver", "Gold", "VIP"}
