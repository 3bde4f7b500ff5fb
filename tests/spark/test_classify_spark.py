"""``classify`` on Spark ``local[2]`` equals the DuckDB path: same files, same rejects, every scenario.

Sizes are small for CI (a few thousand simulated customers); the 50k-customer
parity run of issue 10 is ``benchmarks/bench_spark.py``, which checks the files
are identical before it reports times.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.eventgen import as_of_instants, random_events, random_policy
from tests.scenarios import expected_rows, load_scenario, scenario_files
from tests.tiers import assert_same_tiers
from tier_ml.batch import classify_frame
from tier_ml.cli import app
from tier_ml.events import parse_instant
from tier_ml.money import instant_to_micros
from tier_ml.simulate import SimulationConfig, simulate, write_simulation

runner = CliRunner()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulator events (3,000 customers, two years, with replays, refunds and bad rows)."""
    folder = tmp_path_factory.mktemp("sim")
    sim = simulate(SimulationConfig(customers=2_000, start="2024-01-01", end="2025-12-31", seed=11))
    return write_simulation(sim, folder / "events.parquet", None).events


def _classify(
    tmp_path: Path, events: Path, engine: str, as_of: str = "2025-09-30"
) -> tuple[bytes, bytes, str]:
    out, rejects = tmp_path / f"{engine}.csv", tmp_path / f"{engine}_rejects.csv"
    result = runner.invoke(
        app,
        [
            "classify",
            "-e",
            str(events),
            "--as-of",
            as_of,
            "-o",
            str(out),
            "--rejects",
            str(rejects),
            "--engine",
            engine,
        ],
    )
    assert result.exit_code == 0, result.output
    return out.read_bytes(), rejects.read_bytes(), result.output


def test_cli_spark_writes_the_duckdb_files_byte_for_byte(
    spark: Any, simulated: Path, tmp_path: Path
) -> None:
    """Spark reads the events as a folder of two Parquet files; DuckDB reads the one file.

    Rows of a folder are numbered file after file, so even the reject rows match.
    """
    table = pq.read_table(simulated)
    folder = tmp_path / "events"
    folder.mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "part-0.parquet")
    pq.write_table(table.slice(half), folder / "part-1.parquet")
    tiers, rejects, output = _classify(tmp_path, folder, "spark")
    want_tiers, want_rejects, want_output = _classify(tmp_path, simulated, "duckdb")
    assert tiers == want_tiers  # every column, money to the cent, same row order
    assert rejects == want_rejects
    frame = pd.read_csv(tmp_path / "spark_rejects.csv")
    assert {"duplicate_order", "unknown_order", "missing_field"} <= set(frame["reason"])
    assert frame["row"].max() > half  # rejects from the second file, numbered after the first
    summary = [line for line in output.splitlines() if "rows read" in line]
    want = [line for line in want_output.splitlines() if "rows read" in line]
    assert summary[0].split(";")[0] == want[0].split(";")[0]  # rows, rejects by reason, replays


def test_spark_reads_rows_beyond_the_header_like_duckdb(spark: Any, tmp_path: Path) -> None:
    """A CSV row with text after the last column is a ``malformed_row`` on both engines; a
    Parquet column that happens to be named like that field is just another column."""
    header = "event_id,event_type,order_id,customer_id,occurred_at,amount,currency,channel,region"
    csv = tmp_path / "events.csv"
    csv.write_text(f"{header}\ne1,placed,o1,C1,2025-01-10T10:00:00Z,25000,USD,web,US,\n"
                   "e2,placed,o2,C2,2025-01-10T10:00:00Z,40,USD,web,shop,EU\n")
    tiers, rejects, _ = _classify(tmp_path, csv, "spark")
    assert (tiers, rejects) == _classify(tmp_path, csv, "duckdb")[:2]
    assert b"malformed_row" in rejects and b"C1,Gold" in tiers
    parquet = tmp_path / "events.parquet"
    frame = pd.read_csv(csv, dtype=str, usecols=range(9)).iloc[:1].assign(beyond_header="note")
    frame.to_parquet(parquet)
    tiers, rejects, _ = _classify(tmp_path, parquet, "spark")
    assert (tiers, rejects) == _classify(tmp_path, parquet, "duckdb")[:2]
    assert b"C1,Gold" in tiers and rejects.count(b"\n") == 1  # the header only


def test_spark_writes_json_lines_like_duckdb(spark: Any, simulated: Path, tmp_path: Path) -> None:
    files = {}
    for engine in ("spark", "duckdb"):
        out, rejects = tmp_path / f"{engine}.jsonl", tmp_path / f"{engine}_rejects.ndjson"
        result = runner.invoke(app, ["classify", "-e", str(simulated), "--as-of", "2025-09-30",
                                     "-o", str(out), "--rejects", str(rejects), "--engine", engine])
        assert result.exit_code == 0, result.output
        files[engine] = (out.read_bytes(), rejects.read_bytes())
    assert files["spark"] == files["duckdb"]
    assert files["spark"][0].startswith(b'{"customer_id":')


@pytest.mark.parametrize("seed", range(3))
def test_spark_agrees_with_duckdb_on_tricky_events(spark: Any, seed: int) -> None:
    """Generated edge cases: same-instant ties, refunds at maturity, conflicting replays, bad rows."""
    from tier_ml.engines.spark import classify_spark_frame

    rng = random.Random(100 + seed)
    policy = random_policy(rng)
    rows = pd.DataFrame(random_events(rng, customers=12))
    for as_of in as_of_instants(rng, 1):
        as_of_us = instant_to_micros(as_of)
        tiers, rejects = classify_spark_frame(policy, rows, as_of_us, spark=spark)
        want_tiers, want_rejects = classify_frame(policy, rows, as_of_us)
        assert_same_tiers(tiers, want_tiers)
        pd.testing.assert_frame_equal(
            rejects.astype(object).where(rejects.notna(), None),
            want_rejects.astype(object).where(want_rejects.notna(), None),
            check_dtype=False,
        )


@pytest.mark.parametrize("path", scenario_files(), ids=lambda p: p.stem)
def test_scenario_on_spark(spark: Any, path: Path) -> None:
    from tier_ml.engines.spark import classify_spark_frame

    scenario = load_scenario(path)
    frame = pd.DataFrame(scenario.events)
    for check in scenario.checks:
        tiers, _ = classify_spark_frame(
            scenario.policy, frame, parse_instant(check["as_of"]), spark=spark, rejects=False
        )
        got = {
            row.customer_id: (
                row.tier,
                round(float(row.qualifying_spend), 2),
                round(float(row.pending_spend), 2),
            )
            for row in tiers.itertuples()
        }
        assert got == expected_rows(check), f"{scenario.name} as of {check['as_of']}"


def test_spark_session_without_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tier_ml.engines import EngineUnavailableError
    from tier_ml.engines import spark as engine

    monkeypatch.setattr(engine.shutil, "which", lambda _name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(EngineUnavailableError, match="Java 17"):
        engine.spark_session(master="local[1]")


def test_cli_spark_missing_file_exits_2(spark: Any, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["classify", "-e", str(tmp_path / "missing.parquet"), "--engine", "spark"]
    )
    assert result.exit_code == 2 and "no such events file" in result.output
    assert "Traceback" not in result.output


def test_uris_survive_pathlib() -> None:
    """Typer hands options over as Path, which folds ``s3://`` into ``s3:/``; Spark needs it back."""
    from tier_ml.engines.spark import _has_scheme, _target

    assert _target(Path("s3://lake/events/")) == "s3://lake/events"
    assert _target(Path("abfss://c@acct.dfs.core.windows.net/x.parquet")).startswith("abfss://c@")
    assert _target("dbfs:/mnt/lake/events") == "dbfs:/mnt/lake/events"
    assert _target(Path("/tmp/events.parquet")) == Path("/tmp/events.parquet")
    assert _has_scheme(Path("hdfs://nn:8020/events")) and not _has_scheme(Path("events.parquet"))


def test_bucket_count_setting_survives_spark_submit(spark: Any) -> None:
    """spark-submit drops ``--conf`` keys outside ``spark.*``: ``spark.tier_ml.buckets`` is read."""
    from tier_ml.engines.spark import bucket_count

    raw = spark.range(10)
    try:
        spark.conf.set("spark.tier_ml.buckets", "7")
        assert bucket_count(spark, raw) == 7
        spark.conf.unset("spark.tier_ml.buckets")
        spark.conf.set("tier_ml.buckets", "3")
        assert bucket_count(spark, raw) == 3
    finally:
        spark.conf.unset("spark.tier_ml.buckets")
        spark.conf.unset("tier_ml.buckets")
    # 10 rows: one bucket per core
    assert bucket_count(spark, raw) == spark.sparkContext.defaultParallelism
