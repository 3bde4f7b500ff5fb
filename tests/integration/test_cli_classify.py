"""`tier-ml classify` as a user runs it: files in, files and a summary out, clear errors."""

from __future__ import annotations

import json
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


def test_every_engine_writes_parquet_of_one_schema(tmp_path: Path) -> None:
    """Money as decimal(18, 2) and instants as text, whichever engine wrote the file."""
    import pyarrow.parquet as pq

    from tier_ml.batch import TIERS_FILE_TYPES

    events = _events_file(tmp_path)
    tables = {}
    for engine in ("duckdb", "reference"):
        out = tmp_path / f"{engine}.parquet"
        result = runner.invoke(app, ["classify", "--events", str(events), "--as-of", "2025-06-30",
                                     "--out", str(out), "--engine", engine])
        assert result.exit_code == 0, result.output
        tables[engine] = pq.read_table(out)
    fields = [(f.name, str(f.type)) for f in tables["duckdb"].schema]
    assert [name for name, _ in fields] == list(TIERS_FILE_TYPES)
    assert dict(fields)["qualifying_spend"] == "decimal128(18, 2)"
    assert [(f.name, str(f.type)) for f in tables["reference"].schema] == fields
    assert tables["reference"].to_pylist() == tables["duckdb"].to_pylist()


def test_json_lines_outputs_hold_what_the_csv_files_hold(tmp_path: Path) -> None:
    """``--out tiers.jsonl`` (or .json, .ndjson): one object per customer, the same bytes from
    every engine; before, any suffix but .parquet got CSV text."""
    events = _events_file(tmp_path)
    files = {}
    for engine in ("duckdb", "reference"):
        for suffix in ("csv", "jsonl"):
            out, rejects = tmp_path / f"{engine}.{suffix}", tmp_path / f"{engine}_rejects.{suffix}"
            result = runner.invoke(app, ["classify", "--events", str(events), "--as-of", "2025-06-30",
                                         "--out", str(out), "--rejects", str(rejects), "--engine", engine])
            assert result.exit_code == 0, result.output
            files[engine, suffix] = out.read_bytes() + rejects.read_bytes()
    assert files["duckdb", "jsonl"] == files["reference", "jsonl"]
    lines = pd.read_json(tmp_path / "duckdb.jsonl", lines=True, dtype={"customer_id": str, "region": str})
    csv = pd.read_csv(tmp_path / "duckdb.csv", dtype={"customer_id": str, "region": str}, keep_default_na=False)
    assert lines["customer_id"].tolist() == csv["customer_id"].tolist()
    assert lines["qualifying_spend"].tolist() == csv["qualifying_spend"].tolist()
    assert json.loads((tmp_path / "duckdb.jsonl").read_text().splitlines()[0])["tier"] in {"Silver", "Gold", "VIP"}
    rejects = pd.read_json(tmp_path / "duckdb_rejects.jsonl", lines=True)
    assert rejects["reason"].tolist() == pd.read_csv(tmp_path / "duckdb_rejects.csv")["reason"].tolist()


def test_csv_parquet_and_jsonl_inputs_give_the_same_files(tmp_path: Path) -> None:
    """The same rows as CSV, Parquet (text) and JSON lines: tiers and rejects byte for byte.

    The rejects keep every field as written (``occurred_at`` too), whatever the format.
    """
    csv_path = _events_file(tmp_path)
    events = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    files = []
    for path in (csv_path, tmp_path / "events.parquet", tmp_path / "events.jsonl"):
        if path.suffix == ".parquet":
            events.to_parquet(path)
        elif path.suffix == ".jsonl":
            events.to_json(path, orient="records", lines=True)
        out, rejects = tmp_path / f"{path.name}.tiers.csv", tmp_path / f"{path.name}.rejects.csv"
        result = runner.invoke(app, ["classify", "-e", str(path), "--as-of", "2025-06-30", "-o", str(out),
                                     "--rejects", str(rejects)])
        assert result.exit_code == 0, result.output
        files.append((out.read_bytes(), rejects.read_bytes()))
    assert files[1] == files[0] and files[2] == files[0]
    assert len(files[0][1].splitlines()) > 1  # there are rejects to compare


def _jsonl(path: Path, rows: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + tail)
    return path


def _good_rows(count: int) -> list[dict]:
    return [{"event_id": f"e{i}", "event_type": "placed", "order_id": f"o{i}", "customer_id": f"c{i % 50}",
             "occurred_at": "2025-01-01T00:00:00Z", "amount": 5, "currency": "USD"} for i in range(count)]


def test_jsonl_rows_that_break_the_sampled_types_are_rejects(tmp_path: Path) -> None:
    """Past the reader's sample (20,480 rows), a text time and a text amount are only bad rows."""
    rows = _good_rows(25_000)
    rows[24_000]["occurred_at"] = "yesterday"
    rows[24_001]["amount"] = "abc"
    events = _jsonl(tmp_path / "events.jsonl", rows)
    out, rejects = tmp_path / "tiers.csv", tmp_path / "rejects.csv"
    result = runner.invoke(app, ["classify", "-e", str(events), "--as-of", "2025-06-30", "-o", str(out),
                                 "--rejects", str(rejects)])
    assert result.exit_code == 0, result.output
    found = pd.read_csv(rejects, dtype=str)
    assert list(zip(found["row"], found["reason"], found["occurred_at"], found["amount"], strict=True)) == [
        ("24001", "unparseable_time", "yesterday", "5"),
        ("24002", "unparseable_amount", "2025-01-01T00:00:00Z", "abc"),
    ]
    assert len(pd.read_csv(out)) == 50


def test_a_file_broken_after_the_sample_exits_2_with_one_line(tmp_path: Path) -> None:
    broken_json = _jsonl(tmp_path / "broken.jsonl", _good_rows(25_000), tail='{"event_id": "x", oops\n')
    header = "event_id,event_type,order_id,customer_id,occurred_at,amount,currency\n"
    lines = [f"e{i},placed,o{i},c1,2025-01-01,5,USD\n" for i in range(30_000)]
    lines[25_000] = 'e25000,placed,"o25000,c1,2025-01-01,5,USD\n'  # a quote never closed
    broken_csv = tmp_path / "broken.csv"
    broken_csv.write_text(header + "".join(lines))
    for path, says in ((broken_json, "line 25001 is not JSON"), (broken_csv, "opened on line 25002 is never closed")):
        result = runner.invoke(app, ["classify", "-e", str(path), "--as-of", "2025-06-30",
                                     "-o", str(tmp_path / "tiers.csv")])
        assert result.exit_code == 2, result.output
        assert says in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) <= 2, result.output  # one line (folded at most once)


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


def test_outputs_that_cannot_be_written_exit_2_and_keep_the_events(tmp_path: Path) -> None:
    events = _events_file(tmp_path)
    original = events.read_bytes()
    folder = tmp_path / "folder"
    folder.mkdir()
    a_file = tmp_path / "plain.csv"
    a_file.write_text("x")
    base = ["classify", "--events", str(events), "--as-of", "2025-06-30"]
    cases = [
        (["--out", str(folder)], "is a folder"),
        (["--out", str(events)], "is the same file as --events"),
        (["--out", str(tmp_path / "t.csv"), "--rejects", str(events)], "is the same file as --events"),
        (["--out", str(tmp_path / "t.csv"), "--rejects", str(tmp_path / "t.csv")], "same file as --out"),
        (["--out", str(a_file / "tiers.csv")], "cannot write in"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and message in said, (extra, result.output)
        assert "Traceback" not in result.output
    assert events.read_bytes() == original  # nothing was overwritten


def test_unreadable_and_broken_policy_yaml_is_one_line(tmp_path: Path) -> None:
    events = str(_events_file(tmp_path))
    binary = tmp_path / "policy.yaml"
    binary.write_bytes(b"\x00\xff\xfe not text")
    result = runner.invoke(app, ["classify", "--events", events, "--policy", str(binary)])
    assert result.exit_code == 2 and "not UTF-8 text" in result.output
    assert "Traceback" not in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("tiers: [\n")
    result = runner.invoke(app, ["classify", "--events", events, "--policy", str(broken)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "not valid YAML" in said and "at line 2, column 1" in said
    assert len(result.output.strip().splitlines()) == 1


def test_a_jsonl_file_without_a_required_key_names_it_and_the_keys_it_has(tmp_path: Path) -> None:
    rows = [{k: v for k, v in row.items() if k != "customer_id"} for row in _good_rows(3)]
    result = runner.invoke(app, ["classify", "-e", str(_jsonl(tmp_path / "e.jsonl", rows)),
                                 "-o", str(tmp_path / "tiers.csv")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "missing required columns ['customer_id']" in said, result.output
    assert "found ['amount', 'currency', 'event_id', 'event_type', 'occurred_at', 'order_id']" in said
