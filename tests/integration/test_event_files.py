"""Events files as real exports write them: every engine reads a file alike.

Each case runs ``tier-ml classify`` with the batch engine and the reference engine
(which reads files for ``ingest`` and ``explain`` too) and expects the same tiers and
rejects files, byte for byte, or the same one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tier_ml.cli import app

runner = CliRunner()
AS_OF = "2025-12-31T23:59:59Z"
HEADER = "event_id,event_type,order_id,customer_id,occurred_at,amount,currency,channel,region"


def _classify(path: Path, engine: str) -> tuple[int, str, pd.DataFrame | None, pd.DataFrame | None, bytes]:
    out, rejects = path.with_name(f"{engine}.tiers.csv"), path.with_name(f"{engine}.rejects.csv")
    out.unlink(missing_ok=True)
    result = runner.invoke(app, ["classify", "-e", str(path), "--as-of", AS_OF, "-o", str(out),
                                 "--rejects", str(rejects), "--engine", engine])
    if result.exit_code != 0:
        return result.exit_code, result.output, None, None, b""
    tiers = pd.read_csv(out, dtype=str, keep_default_na=False)
    found = pd.read_csv(rejects, dtype=str, keep_default_na=False)
    return 0, result.output, tiers, found, out.read_bytes() + rejects.read_bytes()


def classify_both(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tiers and rejects of ``path``; fails unless both engines wrote the same files."""
    batch, reference = _classify(path, "duckdb"), _classify(path, "reference")
    assert batch[0] == 0, batch[1]
    assert reference[0] == 0, reference[1]
    assert batch[4] == reference[4]
    return batch[2], batch[3]


def error_of_both(path: Path) -> str:
    """The one-line error both engines stop with (exit 2)."""
    batch, reference = _classify(path, "duckdb"), _classify(path, "reference")
    assert batch[0] == 2 and reference[0] == 2, (batch[1], reference[1])
    message = " ".join(batch[1].split())
    assert message == " ".join(reference[1].split())
    assert "Traceback" not in message
    return message


def _csv(tmp_path: Path, text: str, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_a_short_row_is_a_reject_and_the_other_rows_count(tmp_path: Path) -> None:
    path = _csv(tmp_path, f"{HEADER}\ne1,placed,o1,C1,2025-01-10T10:00:00Z,15000,USD,web,US\n"
                          "e2,placed,o2,C2,2025-01-10T10:00:00Z\n"  # cut off after the time
                          "e3,placed,o3,C3,2025-01-10T10:00:00Z,20,USD,web,US\n")
    tiers, rejects = classify_both(path)
    assert list(tiers["customer_id"]) == ["C1", "C3"]
    assert list(zip(rejects["row"], rejects["reason"], strict=True)) == [("2", "missing_field")]


def test_empty_fields_beyond_the_header_are_ignored_and_text_there_is_a_malformed_row(tmp_path: Path) -> None:
    """Exports that end every line with a comma read as usual; a row with text after the
    last column had its values shifted (an unquoted comma) or carries a stray field: its
    columns cannot be trusted, so it is rejected rather than read with the wrong region."""
    path = _csv(tmp_path, f"{HEADER}\r\ne1,placed,o1,C1,2025-01-10T10:00:00Z,25000,USD,web,US,\r\n"
                          "e2,placed,o2,C2,2025-01-10T10:00:00Z,20,USD,web,EU,, \r\n"
                          "e3,placed,o3,C3,2025-01-10T10:00:00Z,30,USD,web,US,stray\r\n"
                          "e4,placed,o4,C4,2025-01-10T10:00:00Z,40,USD,web,shop,EU\r\n"  # channel 'web,shop'
                          'e5,placed,o5,C5,2025-01-10T10:00:00Z,50,USD,web,US,""\r\n')
    tiers, rejects = classify_both(path)
    assert list(zip(tiers["customer_id"], tiers["tier"], tiers["region"], strict=True)) == [
        ("C1", "Gold", "US"), ("C2", "Silver", "EU"), ("C5", "Silver", "US")]
    assert list(zip(rejects["row"], rejects["reason"], rejects["region"], strict=True)) == [
        ("3", "malformed_row", "US"), ("4", "malformed_row", "shop")]
    assert list(rejects["detail"]) == [
        "the row has more fields than the header ('stray' after the last column; an unquoted comma?)",
        "the row has more fields than the header ('EU' after the last column; an unquoted comma?)"]


def test_a_header_that_ends_with_a_comma_still_catches_a_shifted_row(tmp_path: Path) -> None:
    """Excel ends the header line with the separator too: its empty last name is no column,
    so a shifted row's last value is still beyond the header."""
    path = _csv(tmp_path, f"{HEADER},\ne1,placed,o1,C1,2025-01-10T10:00:00Z,25000,USD,web,US,\n"
                          "e2,placed,o2,C2,2025-01-10T10:00:00Z,40,USD,web,shop,EU\n")
    tiers, rejects = classify_both(path)
    assert list(tiers["customer_id"]) == ["C1"]
    assert list(zip(rejects["row"], rejects["reason"], strict=True)) == [("2", "malformed_row")]


def test_a_malformed_row_after_as_of_is_invisible_and_one_without_a_time_is_rejected(tmp_path: Path) -> None:
    """The same visibility rule as every per-row reject (rows after ``as_of`` are unseen)."""
    path = _csv(tmp_path, f"{HEADER}\ne1,placed,o1,C1,2026-02-01T00:00:00Z,25000,USD,web,US,x\n"
                          "e2,placed,o2,C2,,20,USD,web,EU,x\n")
    tiers, rejects = classify_both(path)
    assert tiers.empty
    assert list(zip(rejects["row"], rejects["reason"], strict=True)) == [("2", "malformed_row")]


def test_a_header_column_named_like_the_extra_field_is_just_another_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, f"{HEADER},beyond_header\ne1,placed,o1,C1,2025-01-10T10:00:00Z,25000,USD,web,US,note\n"
                          "e2,placed,o2,C2,2025-01-10T10:00:00Z,20,USD,web,EU,note,more\n")
    tiers, rejects = classify_both(path)
    assert list(tiers["customer_id"]) == ["C1"]
    assert list(zip(rejects["row"], rejects["reason"], strict=True)) == [("2", "malformed_row")]
    parquet = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist([{**_rows(["C1"])[0], "beyond_header": "note"}]), parquet)
    tiers, rejects = classify_both(parquet)
    assert list(tiers["customer_id"]) == ["C1"] and rejects.empty


def test_header_spaces_a_byte_order_mark_and_quoted_fields(tmp_path: Path) -> None:
    header = ", ".join(HEADER.split(","))  # a space after every comma
    path = _csv(tmp_path, "\ufeff" + header + '\ne1,placed,o1,"Smith, ""J""",2025-01-10T10:00:00Z,15000,USD,web,"U\nS"\n')
    tiers, _ = classify_both(path)
    assert list(tiers["customer_id"]) == ['Smith, "J"']
    assert list(tiers["region"]) == ["U\nS"]


@pytest.mark.parametrize(("text", "says"), [
    (HEADER.replace(",", ";") + "\ne1;placed;o1;C1;2025-01-10;5;USD;web;US\n", "(is the file comma separated?)"),
    ("", "no header line (the file is empty)"),
    (HEADER + '\ne1,placed,o1,C1,2025-01-10,5,USD,web,US\ne2,placed,"o2,C2,2025-01-10,5,USD,web,US\n'
     "e3,placed,o3,C3,2025-01-10,5,USD,web,US\n", "the quote opened on line 3 is never closed"),
    (HEADER.encode() + b"\ne1,placed,o1,C\xe91,2025-01-10,5,USD,web,US\n", "(the file is not UTF-8 text)"),
])
def test_a_file_no_reader_can_trust_stops_every_engine_alike(tmp_path: Path, text: str | bytes, says: str) -> None:
    assert says in error_of_both(_csv(tmp_path, text))


def test_a_header_alone_or_an_empty_json_lines_file_classifies_nobody(tmp_path: Path) -> None:
    for path in (_csv(tmp_path, HEADER + "\n"), _csv(tmp_path, "\n", name="events.jsonl")):
        tiers, rejects = classify_both(path)
        assert tiers.empty and rejects.empty


def _rows(ids: list[object]) -> list[dict[str, object]]:
    return [{"event_id": f"e{i}", "event_type": "placed", "order_id": f"o{i}", "customer_id": customer,
             "occurred_at": "2025-01-10T10:00:00Z", "amount": 15000, "currency": "USD"}
            for i, customer in enumerate(ids)]


def _parquet(tmp_path: Path, ids: list[object], column: str, values: pa.Array) -> Path:
    """Rows of ``_rows(ids)`` as Parquet, with ``column`` typed as ``values``."""
    table = pa.Table.from_pylist(_rows(ids))
    path = tmp_path / "events.parquet"
    pq.write_table(table.set_column(table.column_names.index(column), column, values), path)
    return path


def test_integer_ids_keep_their_digits_next_to_a_missing_one(tmp_path: Path) -> None:
    """Two ids a double cannot tell apart, and a null: read as floats, they became one customer."""
    ids: list[object] = [9007199254740993, 9007199254740992, None]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in _rows(ids)))
    parquet = _parquet(tmp_path, ids, "customer_id", pa.array(ids, pa.int64()))
    for path in (jsonl, parquet):
        tiers, rejects = classify_both(path)
        assert list(tiers["customer_id"]) == ["9007199254740992", "9007199254740993"]
        assert list(tiers["qualifying_spend"]) == ["15000.00", "15000.00"]
        assert list(rejects["reason"]) == ["missing_field"]


def test_a_bad_json_line_is_named_by_every_engine(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = [json.dumps(row) for row in _rows(["C1", "C2"])]
    path.write_text(f"{good[0]}\nnot json\n{good[1]}\n")
    assert "line 2 is not JSON" in error_of_both(path)
    path.write_text(f"{good[0]}\n[1, 2]\n")
    assert "line 2 is not a JSON object" in error_of_both(path)


def test_nanoseconds_are_cut_off_like_text_times(tmp_path: Path) -> None:
    """An order 999 ns after the last whole microsecond before as_of is before as_of."""
    times = pd.to_datetime(["2025-12-31T23:59:59.000000999Z", "2025-01-10T10:00:00.123456789Z"])
    path = _parquet(tmp_path, ["A", "B"], "occurred_at", pa.array(times, pa.timestamp("ns", "UTC")))
    tiers, _ = classify_both(path)
    assert list(zip(tiers["customer_id"], tiers["last_order_at"], strict=True)) == [
        ("A", "2025-12-31T23:59:59Z"), ("B", "2025-01-10T10:00:00.123456Z")]


def test_a_nan_amount_is_not_a_number_on_every_engine(tmp_path: Path) -> None:
    path = _parquet(tmp_path, ["A", "B", "C"], "amount", pa.array([15000.0, float("nan"), None]))
    _, rejects = classify_both(path)
    assert list(zip(rejects["row"], rejects["reason"], strict=True)) == [
        ("2", "unparseable_amount"), ("3", "missing_field")]


def test_a_quote_inside_an_unquoted_field_is_text(tmp_path: Path) -> None:
    """An odd count of quotes is not always a quote left open: here it is a literal one."""
    path = _csv(tmp_path, f'{HEADER}\ne1,placed,o1,C1,2025-01-10,5,USD,web 5" tv,US\ne2,placed,o2,C2,2025-01-10,5,USD,web,US\n')
    tiers, rejects = classify_both(path)
    assert list(tiers["customer_id"]) == ["C1", "C2"] and rejects.empty
