"""The campaign selection as a pure function: threshold, tiers, cooldown, seeded control group."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tier_ml.money import MICROS_PER_DAY
from tier_ml.notify.campaigns import ScoresError, normalize_scores, select_for_campaign
from tier_ml.notify.config import CampaignSettings

NOW = 1_760_000_000_000_000


def scores(n: int = 1_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in range(n)],
            "tier": rng.choice(["Silver", "Gold", "VIP"], size=n, p=[0.5, 0.4, 0.1]),
            "churn_probability": rng.random(n),
            "model_version": "7",
        }
    )


def settings(**values) -> CampaignSettings:
    return CampaignSettings(
        **{"threshold": 0.6, "cooldown_days": 30, "control_share": 0.1, **values}
    )


def test_only_targeted_tiers_at_or_above_the_threshold_are_selected() -> None:
    frame = scores()
    selection = select_for_campaign(frame, settings(), {}, NOW).set_index("customer_id")
    expected = frame[(frame["tier"] == "Gold") & (frame["churn_probability"] >= 0.6)]
    chosen = selection[selection["status"].isin(["treated", "control"])]
    assert sorted(chosen.index) == sorted(expected["customer_id"])
    assert set(selection.loc[frame.loc[frame["tier"] != "Gold", "customer_id"], "status"]) == {
        "not_targeted"
    }


def test_the_threshold_is_inclusive() -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c"],
            "tier": ["Gold"] * 3,
            "churn_probability": [0.5999, 0.6, 0.61],
            "model_version": ["1"] * 3,
        }
    )
    selection = select_for_campaign(frame, settings(control_share=0.0), {}, NOW)
    assert selection["status"].tolist() == ["below_threshold", "treated", "treated"]


def test_control_share_is_exact_seeded_and_independent_of_row_order() -> None:
    frame = scores()
    one = select_for_campaign(frame, settings(control_share=0.2, seed=5), {}, NOW)
    eligible = int(one["status"].isin(["treated", "control"]).sum())
    assert int(one["control"].sum()) == round(0.2 * eligible)
    shuffled = frame.sample(frac=1.0, random_state=1)
    again = select_for_campaign(shuffled, settings(control_share=0.2, seed=5), {}, NOW)
    pd.testing.assert_frame_equal(one, again)
    other = select_for_campaign(frame, settings(control_share=0.2, seed=6), {}, NOW)
    assert set(one.loc[one["control"], "customer_id"]) != set(
        other.loc[other["control"], "customer_id"]
    )
    assert not select_for_campaign(frame, settings(control_share=0.0), {}, NOW)["control"].any()


def test_cooldown_skips_customers_selected_within_n_days() -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ["recent", "edge", "old", "fresh"],
            "tier": ["Gold"] * 4,
            "churn_probability": [0.9] * 4,
            "model_version": ["1"] * 4,
        }
    )
    last = {
        "recent": NOW - 29 * MICROS_PER_DAY,
        "edge": NOW - 30 * MICROS_PER_DAY,  # exactly 30 days ago: free again
        "old": NOW - 90 * MICROS_PER_DAY,
    }
    selection = select_for_campaign(frame, settings(control_share=0.0), last, NOW)
    assert selection.set_index("customer_id")["status"].to_dict() == {
        "edge": "treated",
        "fresh": "treated",
        "old": "treated",
        "recent": "cooling_down",
    }
    no_cooldown = select_for_campaign(
        frame, settings(control_share=0.0, cooldown_days=0), last, NOW
    )
    assert set(no_cooldown["status"]) == {"treated"}


def test_scores_are_checked_with_clear_reasons() -> None:
    good = scores(5)
    with pytest.raises(ScoresError, match="lack columns"):
        normalize_scores(good.drop(columns=["tier"]))
    with pytest.raises(ScoresError, match="repeat customer_id 'c00000'"):
        normalize_scores(pd.concat([good, good.head(1)]))
    bad = good.assign(churn_probability=[0.1, 1.2, "x", 0.3, 0.4])
    with pytest.raises(ScoresError, match="2 rows are not"):
        normalize_scores(bad)
    renamed = normalize_scores(good.rename(columns={"model_version": "churn_model_version"}))
    assert renamed["model_version"].tolist() == ["7"] * 5


def test_no_scores_select_nobody() -> None:
    empty = pd.DataFrame(columns=["customer_id", "tier", "churn_probability", "model_version"])
    selection = select_for_campaign(empty, settings(), {}, NOW)
    assert selection.empty and {"status", "control"} <= set(selection.columns)
