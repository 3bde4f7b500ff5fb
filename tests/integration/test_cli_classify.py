"""`tier-ml classify` as a user runs it: files in, files and a summary out, clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from tests.eventgen import random_events
from tier_ml.cli import app

runner = CliRunner()


def _events_file(tmp_path: Path) -> Path:
    rows = random_events(random.Random(3), customers=20)
    path = tmp_path / "events.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_classify_writes_tiers_and_rejects(tmp_path: Path) -> None:
    events = _events_file(tmp_path)
    out, rejects = tmp_path / "tiers.csv", tmp_path / "rejects.csv"
    result = runner.invoke(app, ["classify", "--events", str(events), "--as-of", "2025-06-30",
                                 "--out", str(out), "--rejects", str(rejects)])
    assert result.exit_code == 0, result.output
    tiers = pd.read_csv(out)
    assert list(tiers.columns[:4]) == ["customer_id", "tier", "qualifying_spend", "pending_spend"]
    assert tiers["customer_id"].is_unique and len(tiers) > 0
    assert set(pd.read_csv(rejects).columns) >= {"row", "reason", "detail", "event_id"}
    reference = tmp_path / "reference.csv"
    result = runner.invoke(app, ["classify", "--events", str(events), "--as-of", "2025-06-30",
                                 "--out", str(reference), "--engine", "reference"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(reference), tiers, check_dtype=False)
    assert reference.read_bytes() == out.read_bytes()  # the same file, byte for byte


def test_classify_parquet_and_jsonl_inputs_agree(tmp_path: Path) -> None:
    events = pd.read_csv(_events_file(tmp_path), dtype=str, keep_default_na=False)
    outs = []
    for name in ("events.parquet", "events.jsonl"):
        path = tmp_path / name
        if name.endswith(".parquet"):
            events.to_parquet(path)
        else:
            events.to_json(path, orient="records", lines=True)
        out = tmp_path / f"{name}.tiers.csv"
        result = runner.invoke(app, ["classify", "-e", str(path), "--as-of", "2025-06-30", "-o", str(out)])
        assert result.exit_code == 0, result.output
        outs.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(outs[0], outs[1])


def test_unreadable_file_and_bad_policy_exit_2_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["classify", "--events", str(tmp_path / "missing.csv")])
    assert result.exit_code == 2 and "no such events file" in result.output
    assert "Traceback" not in result.output
    policy = tmp_path / "policy.yaml"
    policy.write_text("tiers:\n  - {name: A}\n  - {name: B, min_spend: 5}\n  - {name: C, min_spend: 3}\n")
    result = runner.invoke(app, ["classify", "--events", str(_events_file(tmp_path)), "--policy", str(policy)])
    assert result.exit_code == 2 and "must increase" in result.output
    result = runner.invoke(app, ["classify", "--events", str(_events_file(tmp_path)), "--as-of", "yesterday"])
    assert result.exit_code == 2 and "ISO 8601" in result.output
