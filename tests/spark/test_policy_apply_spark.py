"""``tier-ml policy apply --engine spark`` previews and applies exactly what the DuckDB path does.

A small simulated store (SQLite file) is loaded once; every test works on its
own copy, so a dry run, an apply and a failure never see each other's writes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from tests.integration.store.support import END_OF_SIMULATION, simulated, snapshot
from tier_ml.cli import app
from tier_ml.money import MICROS_PER_DAY
from tier_ml.policy import load_policy, parse_policy
from tier_ml.store import service

runner = CliRunner()
NOW = "2026-01-20T00:00:00Z"
NOW_US = END_OF_SIMULATION + 19 * MICROS_PER_DAY
POLICY_YAML = """\
base_currency: USD
fx_rates: {EUR: 1.05, GBP: 1.25}
buffer_days: 14
window_days: 365
downgrade_grace_days: 60
tiers:
  - name: Silver
  - name: Gold
    min_spend: 12000
  - name: VIP
    min_spend: 35000
"""
NEW_POLICY = parse_policy(
    {
        "base_currency": "USD",
        "fx_rates": {"EUR": 1.05, "GBP": 1.25},
        "buffer_days": 14,
        "window_days": 365,
        "downgrade_grace_days": 60,
        "tiers": [
            {"name": "Silver"},
            {"name": "Gold", "min_spend": 12000},
            {"name": "VIP", "min_spend": 35000},
        ],
    }
)


@pytest.fixture(scope="module")
def store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with 300 simulated customers under the default policy, closed (one file)."""
    path = tmp_path_factory.mktemp("store") / "store.sqlite"
    engine = service.open_store(f"sqlite:///{path}")
    _, rows = simulated(300)
    service.apply_events(engine, list(rows), END_OF_SIMULATION, load_policy(None))
    service.set_override(
        engine, "C0000003", "VIP", "alice", "press partner", END_OF_SIMULATION, None
    )
    engine.dispose()
    return path


def _copy(store_file: Path, folder: Path, name: str) -> str:
    target = folder / f"{name}.sqlite"
    shutil.copyfile(store_file, target)
    return f"sqlite:///{target}"


def _run(*args: str) -> Result:
    return runner.invoke(app, list(args))


def _without_timing(output: str) -> str:
    return re.sub(r" in \d+\.\ds", "", output)


@pytest.mark.slow  # a Spark job each (seconds; the first one warms Spark up)
def test_cli_dry_run_on_spark_prints_and_writes_the_duckdb_preview(
    spark: Any, store_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Matrix, movers sample, revenue share and the movers CSV: the same on both engines."""
    policy = tmp_path / "new.yaml"
    policy.write_text(POLICY_YAML)
    url = _copy(store_file, tmp_path, "store")
    before = snapshot(service.open_store(url))
    outputs, movers = {}, {}
    for engine in ("duckdb", "spark"):
        (tmp_path / engine).mkdir()
        monkeypatch.chdir(tmp_path / engine)  # the same relative --movers path in both outputs
        movers[engine] = tmp_path / engine / "movers.csv"
        result = _run(
            "policy", "apply", str(policy), "--dry-run", "--now", NOW, "--db", url,
            "--movers", "movers.csv", "--sample", "5", "--engine", engine,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs[engine] = _without_timing(result.output)
    assert outputs["spark"] == outputs["duckdb"]
    assert "Transitions (dry run)" in outputs["spark"] and "would move" in outputs["spark"]
    assert movers["spark"].read_bytes() == movers["duckdb"].read_bytes()
    assert len(pd.read_csv(movers["spark"])) > 0  # the new thresholds move someone
    after = snapshot(service.open_store(url))
    assert after["audit"] == before["audit"] and after["policies"] == before["policies"]
    pd.testing.assert_frame_equal(after["states"], before["states"])


@pytest.mark.slow  # a Spark job each (seconds; the first one warms Spark up)
def test_preview_with_grandfathering_is_the_same_on_spark(
    spark: Any, store_file: Path, tmp_path: Path
) -> None:
    engine = service.open_store(_copy(store_file, tmp_path, "store"))
    until = NOW_US + 90 * MICROS_PER_DAY
    previews = {
        name: service.preview_policy(
            engine, NEW_POLICY, NOW_US, grandfather_until_us=until, sample=7, batch_engine=name
        )
        for name in ("duckdb", "spark")
    }
    got, want = previews["spark"], previews["duckdb"]
    pd.testing.assert_frame_equal(got.matrix, want.matrix)
    pd.testing.assert_frame_equal(got.matrix_now, want.matrix_now)
    pd.testing.assert_frame_equal(got.movers, want.movers)
    pd.testing.assert_frame_equal(got.sample, want.sample)
    assert got.to_dict() == want.to_dict()
    assert (got.customers, got.revenue_us, got.movers_revenue_us) == (
        want.customers,
        want.revenue_us,
        want.movers_revenue_us,
    )
    assert want.grandfathered > 0 and got.held == want.held


@pytest.mark.slow  # a Spark job each (seconds; the first one warms Spark up)
def test_apply_on_spark_writes_what_duckdb_writes(
    spark: Any, store_file: Path, tmp_path: Path
) -> None:
    """Without --dry-run: states, audit rows, outbox messages and the policy version alike."""
    stores = {}
    for name in ("duckdb", "spark"):
        engine = service.open_store(_copy(store_file, tmp_path, name))
        result = service.apply_policy(
            engine, NEW_POLICY, "bob", NOW_US, source_text=POLICY_YAML, batch_engine=name
        )
        assert result.version == 2 and result.changed > 0
        stores[name] = snapshot(engine)
        engine.dispose()
    got, want = stores["spark"], stores["duckdb"]
    pd.testing.assert_frame_equal(got.pop("states"), want.pop("states"))
    assert got == want


def test_unknown_engine_is_one_line_and_exit_2(store_file: Path, tmp_path: Path) -> None:
    policy = tmp_path / "new.yaml"
    policy.write_text(POLICY_YAML)
    url = _copy(store_file, tmp_path, "store")
    result = _run("policy", "apply", str(policy), "--dry-run", "--now", NOW, "--db", url,
                  "--engine", "flink")  # fmt: skip
    assert result.exit_code == 2
    assert "--engine must be duckdb or spark, not 'flink'" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    with pytest.raises(service.StoreError, match="--engine must be"):
        service.preview_policy(service.open_store(url), NEW_POLICY, NOW_US, batch_engine="flink")


def test_spark_unavailable_is_one_line_and_exit_2(
    store_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tier_ml.engines import EngineUnavailableError
    from tier_ml.engines import spark as spark_engine

    def unavailable(*_args: object, **_kwargs: object) -> None:
        raise EngineUnavailableError("--engine spark needs Java 17 or later: install it")

    monkeypatch.setattr(spark_engine, "spark_session", unavailable)
    policy = tmp_path / "new.yaml"
    policy.write_text(POLICY_YAML)
    url = _copy(store_file, tmp_path, "store")
    before = snapshot(service.open_store(url))
    result = _run("policy", "apply", str(policy), "--now", NOW, "--db", url, "--engine", "spark")
    assert result.exit_code == 2 and "needs Java 17" in result.output
    assert "Traceback" not in result.output
    after = snapshot(service.open_store(url))
    assert after["policies"] == before["policies"] and after["audit"] == before["audit"]
