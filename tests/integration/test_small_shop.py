"""Small-shop mode: 200 simulated customers with 90 days of history get the BTYD fallback,
marked in the run, the registry and the API, with churn intervals that cover the
simulator's true churn rate at about their nominal level (docs/training.md)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from typer.testing import CliRunner

from tier_ml.cli import app
from tier_ml.policy import load_policy
from tier_ml.simulate import (
    SimulationConfig,
    oracle_churn_probability,
    simulate,
    write_simulation,
)
from training.small_shop import BTYD_FALLBACK, MODEL_KIND_TAG

AS_OF = datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC)
AS_OF_TEXT = "2025-06-30T23:59:59Z"
START = "2025-04-02"  # 90 days of history before AS_OF
HORIZON = 90.0
NAMES = ("tier-ml-churn", "tier-ml-tier-change")


def small_config(seed: int) -> SimulationConfig:
    return SimulationConfig(customers=200, start=START, end="2025-06-30", seed=seed)


@dataclass(frozen=True)
class SmallShop:
    events: Path
    tracking_uri: str
    output: str


@pytest.fixture(scope="module")
def small_shop(tmp_path_factory: pytest.TempPathFactory) -> SmallShop:
    """`tier-ml train` on 200 customers x 90 days, default thresholds: the fallback."""
    folder = tmp_path_factory.mktemp("small-shop")
    written = write_simulation(simulate(small_config(3)), folder / "events.parquet")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = CliRunner().invoke(
        app,
        ["train", "--events", str(written.events), "--as-of", AS_OF_TEXT,
         "--tracking-uri", uri, "--experiment", "small"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return SmallShop(written.events, uri, result.output)


@pytest.mark.slow  # the module fixture trains through the CLI (about 20 s)
def test_training_falls_back_and_says_so(small_shop: SmallShop) -> None:
    output = " ".join(small_shop.output.split())
    assert "small-shop mode" in output and "BG/NBD" in output
    assert "customers with an order < 500" in output and "days of history < 180" in output
    client = MlflowClient(small_shop.tracking_uri, small_shop.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("small").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags[MODEL_KIND_TAG] == BTYD_FALLBACK
    assert "customers with an order" in parent.data.tags["tier_ml.fallback_reason"]
    assert int(parent.data.params["data_customers"]) == 200
    assert float(parent.data.params["data_history_days"]) < 91
    assert parent.data.params["model_kind"] == BTYD_FALLBACK
    for name in NAMES:
        version = client.get_model_version_by_alias(name, "champion")
        assert version.tags[MODEL_KIND_TAG] == BTYD_FALLBACK
        assert "fallback_reason" in " ".join(version.tags)


def _features(events: Path) -> pd.DataFrame:
    from features import build_features

    return build_features(events, load_policy(), AS_OF)


def test_fallback_models_keep_the_output_contract(small_shop: SmallShop) -> None:
    mlflow.set_tracking_uri(small_shop.tracking_uri)
    mlflow.set_registry_uri(small_shop.tracking_uri)
    churn = mlflow.pyfunc.load_model("models:/tier-ml-churn@champion")
    change = mlflow.pyfunc.load_model("models:/tier-ml-tier-change@champion")
    assert churn.metadata.metadata[MODEL_KIND_TAG] == BTYD_FALLBACK
    frame = _features(small_shop.events)
    plain = churn.predict(frame[[c for c in frame.columns if c not in ("customer_id", "cutoff")]])
    assert list(plain.columns) == [
        "churn_probability", "churn_probability_low", "churn_probability_high",
    ]  # fmt: skip
    p, low, high = (plain[c].to_numpy() for c in plain.columns)
    assert np.all((low >= 0) & (low <= p) & (p <= high) & (high <= 1))
    assert (high - low).mean() > 0.01  # 200 customers, 90 days: visibly uncertain
    explained = churn.predict(frame, params={"top_reasons": 2})
    reasons = json.loads(explained["reasons"].iloc[0])
    assert len(reasons) == 2 and {"feature", "value", "contribution"} <= set(reasons[0])
    chances = change.predict(frame, params={"top_reasons": 1})
    total = chances[["p_down", "p_same", "p_up"]].sum(axis=1)
    assert np.allclose(total, 1.0)
    assert (chances[["p_down", "p_same", "p_up"]] >= 0).all().all()
    assert json.loads(chances["reasons"].iloc[0]) == []
    top = frame["spend_to_next_tier"].isna().to_numpy()
    assert np.all(chances["p_up"].to_numpy()[top] < 1e-3)  # the top tier cannot go up


def test_score_works_unchanged_with_the_fallback(small_shop: SmallShop, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        app,
        ["score", "--events", str(small_shop.events), "--as-of", AS_OF_TEXT, "--out", str(out),
         "--tracking-uri", small_shop.tracking_uri],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out)
    assert list(scores.columns)[:7] == [
        "customer_id", "tier", "churn_probability", "p_upgrade", "p_downgrade",
        "churn_model_version", "tier_change_model_version",
    ]  # fmt: skip
    assert (scores["churn_model_kind"] == BTYD_FALLBACK).all()
    assert (scores["churn_probability_low"] <= scores["churn_probability"]).all()
    assert (scores["churn_probability"] <= scores["churn_probability_high"]).all()


# --- the intervals against the simulator's truth --------------------------------------------------


def group_coverage(scored: pd.DataFrame, low: str, high: str, groups: int = 5) -> float:
    """Share of predicted-probability groups whose true churn rate (the mean oracle
    probability of the group's customers) lies inside the group's interval (mean bounds)."""
    rank = scored["churn_probability"].rank(method="first")
    by_group = scored.assign(group=pd.qcut(rank, groups, labels=False)).groupby("group")
    means = by_group[[low, high, "oracle"]].mean()
    inside = (means[low] <= means["oracle"]) & (means["oracle"] <= means[high])
    return float(inside.mean())


@pytest.fixture(scope="module")
def scored_seeds() -> list[pd.DataFrame]:
    """Six simulated small shops (seeds 1-6): fallback predictions and the oracle."""
    from features import build_features
    from training.fallback import fit_btyd

    frames = []
    for seed in range(1, 7):
        sim = simulate(small_config(seed))
        features = build_features(sim.events, load_policy(), AS_OF)
        churn, _, _ = fit_btyd(features, HORIZON, seed)
        scored = churn.predict(None, features)
        oracle = oracle_churn_probability(sim.truth, AS_OF, HORIZON)
        frames.append(scored.assign(oracle=oracle.reindex(features["customer_id"]).to_numpy()))
    return frames


def test_intervals_cover_the_true_churn_rate_at_about_their_level(
    scored_seeds: list[pd.DataFrame],
) -> None:
    coverage = np.mean(
        [group_coverage(s, "churn_probability_low", "churn_probability_high") for s in scored_seeds]
    )
    # nominal 90 %: 30 groups, so anything from 0.7 to 1.0 is "about" it
    assert 0.7 <= coverage <= 1.0, coverage
    whole = [
        s["churn_probability_low"].mean() <= s["oracle"].mean() <= s["churn_probability_high"].mean()
        for s in scored_seeds
    ]
    assert sum(whole) >= 5, whole


def test_too_narrow_intervals_fail_the_coverage_check(scored_seeds: list[pd.DataFrame]) -> None:
    """The check has teeth: point estimates (zero width) and intervals shrunk to a fifth of
    their width around the point cover far less often."""
    zero = np.mean(
        [
            group_coverage(s.assign(point=s["churn_probability"]), "point", "churn_probability")
            for s in scored_seeds
        ]
    )
    shrunk = []
    for s in scored_seeds:
        p = s["churn_probability"]
        narrow = s.assign(
            lo=p - (p - s["churn_probability_low"]) / 5, hi=p + (s["churn_probability_high"] - p) / 5
        )
        shrunk.append(group_coverage(narrow, "lo", "hi"))
    assert zero < 0.2, zero
    assert np.mean(shrunk) < 0.5, shrunk


# --- the API --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(small_shop: SmallShop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from serving.app import create_app
    from tests.e2e import serving_support as support

    url = support.build_store(tmp_path_factory.mktemp("small-store") / "store.sqlite",
                              small_shop.events)  # fmt: skip
    settings = support.settings_for(url, small_shop.tracking_uri, at_risk_tier="Silver")
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_api_names_the_fallback_and_gives_intervals(api: TestClient) -> None:
    from tests.e2e import serving_support as support

    headers = support.headers()
    at_risk = api.get("/v1/segments/gold-at-risk?min_probability=0", headers=headers)
    assert at_risk.status_code == 200, at_risk.text
    body = at_risk.json()
    assert body["model_kinds"] == {"churn": BTYD_FALLBACK, "tier_change": BTYD_FALLBACK}
    assert body["items"], "the at-risk tier (Silver here) has customers"
    customer = body["items"][0]["customer_id"]
    for item in body["items"]:
        assert item["churn_probability_low"] <= item["churn_probability"]
        assert item["churn_probability"] <= item["churn_probability_high"]
    csv = api.get("/v1/segments/gold-at-risk?min_probability=0&format=csv", headers=headers)
    assert "churn_probability_low,churn_probability_high" in csv.text.splitlines()[0]
    one = api.get(f"/v1/customers/{customer}/predictions", headers=headers)
    assert one.status_code == 200, one.text
    single = one.json()
    assert single["model_kinds"]["churn"] == BTYD_FALLBACK
    assert single["churn_probability_low"] <= single["churn_probability"]
    assert single["churn_probability"] <= single["churn_probability_high"]
    assert single["p_keep_tier_low"] <= single["p_keep_tier"] <= single["p_keep_tier_high"]
    assert single["p_reach_next_tier_low"] <= single["p_reach_next_tier"]
    batch = api.post("/v1/predictions", json={"customer_ids": [customer]}, headers=headers)
    assert batch.status_code == 200, batch.text
    assert batch.json()["model_kinds"]["churn"] == BTYD_FALLBACK
    row = batch.json()["predictions"][0]
    assert row["churn_probability_low"] == pytest.approx(single["churn_probability_low"])


def test_the_dashboard_shows_intervals_chances_and_the_fallback(api: TestClient) -> None:
    from tests.e2e import serving_support as support

    token = re.compile(r'name="csrf_token" value="([^"]+)"')
    login = api.get("/login")
    found = token.search(login.text)
    assert found
    api.post("/login", data={"api_key": support.ALL_KEY, "csrf_token": found.group(1),
                             "next": "/dashboard"})  # fmt: skip
    listing = api.get("/dashboard/at-risk?min_probability=0")
    assert listing.status_code == 200, listing.text
    assert "90% interval" in listing.text and 'id="small-shop-note"' in listing.text
    customer = re.search(r'data-customer="([^"]+)"', listing.text)
    assert customer
    page = api.get(f"/dashboard/customers/{customer.group(1)}")
    assert page.status_code == 200, page.text
    assert 'id="churn-interval"' in page.text and 'id="chance-keep"' in page.text
    assert "btyd_fallback" in page.text


# --- promote between kinds ------------------------------------------------------------------------


@pytest.mark.slow
def test_promote_compares_a_fallback_with_a_lightgbm_champion(trained_models, tmp_path: Path) -> None:
    """A BTYD challenger against the session's LightGBM champion: same holdout, same rule,
    the kinds named in the reason and logged."""
    from training.promote import promote
    from training.small_shop import SmallShopThresholds
    from training.train import train_models

    source = Path(trained_models.tracking_uri.removeprefix("sqlite:///"))
    shutil.copyfile(source, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = trained_models.data
    result = train_models(data.events, data.policy, data.as_of, HORIZON, "promote-kinds", uri,
                          small_shop=SmallShopThresholds(mode="force"))  # fmt: skip
    assert result.model_kind == BTYD_FALLBACK
    assert result.metrics["churn"]["val_roc_auc"] > 0.5  # judged on the latest labelled cutoff
    decisions = promote(data.events, data.policy, data.as_of, HORIZON, "promote-kinds", uri,
                        kinds=("churn",))  # fmt: skip
    (decision,) = decisions
    assert (decision.challenger_kind, decision.champion_kind) == (BTYD_FALLBACK, "lightgbm")
    assert "btyd_fallback challenger vs lightgbm champion" in decision.reason
    better = decision.challenger_metrics["val_roc_auc"] > decision.champion_metrics["val_roc_auc"]
    assert decision.promoted == (
        better and decision.challenger_metrics["val_ece"] <= decision.champion_metrics["val_ece"]
    )
    run = MlflowClient(uri).get_run(decision.run_id)
    assert run.data.params["challenger_model_kind"] == BTYD_FALLBACK


def test_promote_without_a_labelled_window_says_why(small_shop: SmallShop) -> None:
    from training.data import TrainingDataError
    from training.promote import holdout

    with pytest.raises(TrainingDataError, match="no labelled holdout yet"):
        holdout(small_shop.events, load_policy(), AS_OF, HORIZON)
