"""The pieces of the monitor that need no model: choosing cutoffs, telling tables apart,
sampling, quality per cutoff, and the reference sample a training logs."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from features import FEATURE_COLUMNS
from training.monitor import (
    MonitorError,
    quality_by_cutoff,
    read_table,
    sample_rows,
    select_cutoffs,
    table_kind,
)
from training.reference import reference_sample

JAN, FEB, MAR = (pd.Timestamp(f"2025-0{m}-01T23:59:59Z") for m in (1, 2, 3))


def _frame(cutoffs: list[pd.Timestamp], rows: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for cutoff in cutoffs:
        part = pd.DataFrame({c: rng.random(rows) for c in FEATURE_COLUMNS})
        part.insert(0, "cutoff", cutoff)
        part.insert(0, "customer_id", [f"C{i:03d}" for i in range(rows)])
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def test_select_cutoffs_latest_all_and_by_date() -> None:
    frame = _frame([JAN, FEB, MAR])
    assert set(select_cutoffs(frame, "latest", "--x")["cutoff"]) == {MAR}
    assert len(select_cutoffs(frame, "all", "--x")) == len(frame)
    assert set(select_cutoffs(frame, "2025-02-15", "--x")["cutoff"]) == {FEB}
    assert set(select_cutoffs(frame, "2025-02-01", "--x")["cutoff"]) == {FEB}  # a date means the whole day
    with pytest.raises(MonitorError, match="no cutoff at or before"):
        select_cutoffs(frame, "2024-12-31", "--x")
    with pytest.raises(MonitorError, match="--x 'soon'"):
        select_cutoffs(frame, "soon", "--x")
    no_cutoff = frame.drop(columns="cutoff")
    assert len(select_cutoffs(no_cutoff, "latest", "--x")) == len(frame)


def test_table_kind() -> None:
    assert table_kind(_frame([JAN])) == "features"
    assert table_kind(pd.DataFrame({"customer_id": ["a"], "churn_probability": [0.2]})) == "scores"
    with pytest.raises(MonitorError, match="feature table"):
        table_kind(pd.DataFrame({"a": [1]}))


def test_sample_rows_is_seeded_and_bounded() -> None:
    frame = _frame([JAN], rows=500)
    assert len(sample_rows(frame, 100, 0)) == 100
    assert sample_rows(frame, 100, 0).equals(sample_rows(frame, 100, 0))
    assert not sample_rows(frame, 100, 0).equals(sample_rows(frame, 100, 1))
    assert sample_rows(frame, 1000, 0) is frame


def test_quality_by_cutoff_follows_the_labels() -> None:
    frame = _frame([JAN, FEB], rows=400)
    rng = np.random.default_rng(3)
    frame["churned"] = rng.integers(0, 2, len(frame))
    good = frame["cutoff"] == JAN  # informative scores in January, noise in February
    frame["churn_probability"] = np.where(good, 0.8 * frame["churned"] + 0.2 * rng.random(len(frame)), rng.random(len(frame)))
    table = quality_by_cutoff(frame)
    assert list(table["cutoff"]) == [JAN, FEB]
    assert table["roc_auc"].iloc[0] > 0.95
    assert 0.35 < table["roc_auc"].iloc[1] < 0.65
    assert list(table["rows"]) == [400, 400]
    assert quality_by_cutoff(frame.drop(columns="churned")).empty


def test_read_table_refuses_what_it_cannot_read(tmp_path) -> None:
    with pytest.raises(MonitorError, match="no such file"):
        read_table(tmp_path / "missing.parquet")
    with pytest.raises(MonitorError, match=r"\.parquet or \.csv"):
        read_table(tmp_path / "features.xlsx")
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(MonitorError, match="cannot read"):
        read_table(broken)


def test_reference_sample_caps_rows_per_cutoff_and_names_parts() -> None:
    data = _frame([JAN, FEB, MAR], rows=50)
    data["churned"] = 0
    parts = {"train": [JAN.to_pydatetime()], "calibration": [FEB.to_pydatetime()],
             "validation": [datetime(2025, 3, 1, 23, 59, 59, tzinfo=UTC)]}  # fmt: skip
    sample = reference_sample(data, parts, rows_per_cutoff=20, seed=0)
    assert sample.groupby("cutoff").size().tolist() == [20, 20, 20]
    assert sample.groupby("cutoff")["part"].first().tolist() == ["train", "calibration", "validation"]
    assert sample.equals(reference_sample(data, parts, rows_per_cutoff=20, seed=0))
    assert list(sample.columns[:3]) == ["customer_id", "cutoff", "part"]
    assert "churned" in sample.columns
