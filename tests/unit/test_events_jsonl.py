"""JSON lines with UTF-16 surrogate escapes: an unpaired one is refused, naming its line, on
every path (pandas' reader used to drop it silently: ``"c\\ud8006"`` became customer ``c6``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tier_ml.batch import classify_to_files
from tier_ml.events import EventReadError, parse_instant, read_events
from tier_ml.policy import load_policy

AS_OF = parse_instant("2025-12-31T00:00:00Z")


def _line(customer_json: str, n: int) -> str:
    """One placed event whose ``customer_id`` is the JSON string literal ``customer_json``."""
    fields = {
        "event_id": f"e{n}", "event_type": "placed", "order_id": f"o{n}",
        "occurred_at": "2025-01-01T00:00:00Z", "amount": "10", "currency": "USD",
        "channel": "web", "region": "US",
    }
    return json.dumps(fields)[:-1] + f', "customer_id": {customer_json}}}'


def _write(path: Path, customers: list[str], prefix: str = "") -> Path:
    path.write_text(prefix + "\n".join(_line(c, n) for n, c in enumerate(customers)) + "\n")
    return path


@pytest.mark.parametrize("escape", [r"\ud800", r"\uDBFF", r"\udc00", r"\ude00\ud83d"])
def test_an_unpaired_surrogate_is_refused_naming_its_line(tmp_path: Path, escape: str) -> None:
    path = _write(tmp_path / "events.jsonl", ['"c1"', f'"c{escape}6"', '"c3"'])
    with pytest.raises(EventReadError, match=r"line 2 holds an unpaired UTF-16 surrogate"):
        read_events(path)
    with pytest.raises(EventReadError):  # the batch path refuses the file too
        classify_to_files(load_policy(None), path, AS_OF, tmp_path / "t.csv")


def test_an_escape_cut_by_the_search_pieces_is_found(tmp_path: Path) -> None:
    padding = " " * ((1 << 20) - len('{"pad": "') - 3)  # the escape straddles the first MiB
    prefix = json.dumps({"pad": padding})[:-2] + '\\ud800"}\n'
    assert prefix.index("\\ud800") < 1 << 20 < prefix.index("\\ud800") + 6
    path = _write(tmp_path / "events.jsonl", ['"c1"'], prefix=prefix)
    with pytest.raises(EventReadError, match="line 1 "):
        read_events(path)


def test_paired_surrogates_and_an_escaped_backslash_are_text(tmp_path: Path) -> None:
    path = _write(tmp_path / "events.jsonl", [r'"c\ud83d\ude00"', r'"c\\ud800"', '"c3"'])
    frame = read_events(path)
    assert frame["customer_id"].tolist() == ["c\U0001f600", "c\\ud800", "c3"]
    classify_to_files(load_policy(None), path, AS_OF, tmp_path / "tiers.csv")
    tiers = pd.read_csv(tmp_path / "tiers.csv", dtype=str, encoding="utf-8")
    assert sorted(tiers["customer_id"]) == sorted(frame["customer_id"])
