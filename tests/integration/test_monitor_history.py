"""Score history: every kept run partitioned by date, and a repeated run replaces its own file
instead of duplicating rows (the ``tier-ml score --keep-history`` command is tested in
``test_monitor.py``, which has the trained models)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from training.score_history import append_scores, history_file, read_history


def _scores(customers: list[str], version: str, churn: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": customers,
            "tier": "Gold",
            "churn_probability": churn,
            "p_upgrade": 0.1,
            "p_downgrade": 0.2,
            "churn_model_version": version,
            "tier_change_model_version": "1",
        }
    )


def test_runs_are_kept_by_date_and_version_and_a_rerun_replaces_its_file(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    june = datetime(2025, 6, 1, tzinfo=UTC)
    july = datetime(2025, 7, 1, tzinfo=UTC)
    ran = datetime(2025, 7, 1, 6, 30, tzinfo=UTC)
    append_scores(_scores(["a", "b"], "1", 0.2), folder, june, ran)
    append_scores(_scores(["a", "b"], "1", 0.3), folder, july, ran)
    append_scores(_scores(["a", "b"], "2", 0.4), folder, july, ran)  # a challenger, same day
    append_scores(_scores(["a", "b"], "2", 0.5), folder, july, ran)  # the same run again
    assert sorted(p.name for p in folder.iterdir()) == ["date=2025-06-01", "date=2025-07-01"]
    history = read_history(folder)
    assert len(history) == 6
    assert history.groupby(["date", "model_version"]).size().to_dict() == {
        ("2025-06-01", "1"): 2, ("2025-07-01", "1"): 2, ("2025-07-01", "2"): 2,
    }  # fmt: skip
    latest = history[(history["model_version"] == "2")]
    assert set(latest["churn_probability"]) == {0.5}  # the rerun replaced its file
    assert (history["scored_at"] == pd.Timestamp(ran)).all()
    assert list(read_history(folder, since=july)["as_of"].unique()) == [pd.Timestamp(july)]
    assert not list(folder.rglob("*.tmp"))


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        history_file(tmp_path, datetime(2025, 6, 1), "1")
    mixed = pd.concat([_scores(["a"], "1", 0.1), _scores(["b"], "2", 0.1)])
    with pytest.raises(ValueError, match="one model version"):
        append_scores(mixed, tmp_path, datetime(2025, 6, 1, tzinfo=UTC), datetime.now(UTC))
    assert read_history(tmp_path / "nothing").empty
