"""Retention campaign runs on a real store (SQLite and PostgreSQL): what is recorded, what is
queued, cooldowns across runs, and the offer email rendered by a real SMTP round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.integration.notify_support import DAY, POLICY, T0, MailReceiver, placed
from tests.integration.store import conftest as store_fixtures
from tier_ml.notify.config import CampaignSettings, parse_channels
from tier_ml.notify.service import (
    campaign_runs,
    campaign_selections,
    dispatch_due,
    outbox_list,
    run_campaign,
)
from tier_ml.store import service

# the store tests' fixtures: every test here runs on SQLite and PostgreSQL
backend = store_fixtures.backend
new_store_url = store_fixtures.new_store_url
postgres_schema_url = store_fixtures.postgres_schema_url
store_url = store_fixtures.store_url
engine = store_fixtures.engine

SETTINGS = CampaignSettings(
    threshold=0.5,
    cooldown_days=30,
    control_share=0.1,
    seed=4,
    offer={"code": "STAYGOLD", "description": "15% off your next order", "valid_days": 21},
)


def gold_scores(n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(8)
    return pd.DataFrame(
        {
            "customer_id": [f"g{i:03d}" for i in range(n)],
            "tier": "Gold",
            "churn_probability": rng.random(n).round(4),
            "model_version": "3",
        }
    )


def test_run_records_selection_queues_offers_and_respects_cooldown(engine) -> None:
    service.apply_events(engine, [placed("ann", "a1", 1500, T0)], T0, POLICY)  # Gold in the store
    service.apply_events(engine, [placed("sil", "s1", 10, T0)], T0)  # Silver in the store
    scores = pd.concat(
        [
            gold_scores(),
            pd.DataFrame(
                {
                    "customer_id": ["ann", "sil"],
                    "tier": ["Silver", "Gold"],  # stale tiers: the store's tier counts
                    "churn_probability": [0.95, 0.95],
                    "model_version": ["3", "3"],
                }
            ),
        ]
    )
    now = T0 + DAY
    first = run_campaign(
        engine, scores, "gold_retention", SETTINGS, now, actor="mia", source="test"
    )
    counts = first.counts()
    status = first.selection.set_index("customer_id")["status"]
    assert status["ann"] in {"treated", "control"} and status["sil"] == "not_targeted"
    eligible = counts["treated"] + counts["control"]
    assert eligible == int((scores["churn_probability"] >= 0.5).sum()) - 1  # sil is not Gold
    assert counts["control"] == round(0.1 * eligible) > 0

    [run] = campaign_runs(engine)
    assert (run["id"], run["treated"], run["control"], run["model_version"]) == (
        first.run_id,
        counts["treated"],
        counts["control"],
        "3",
    )
    assert (run["threshold"], run["control_share"], run["seed"], run["actor"]) == (
        0.5,
        0.1,
        4,
        "mia",
    )
    chosen = campaign_selections(engine, first.run_id)
    assert len(chosen) == eligible and set(chosen["model_version"]) == {"3"}
    assert chosen["outbox_id"].isna().tolist() == chosen["control"].tolist()
    offers = outbox_list(engine, kind="retention_offer", limit=1_000)
    assert sorted(o["customer_id"] for o in offers) == sorted(
        chosen.loc[~chosen["control"], "customer_id"]
    )
    offer = offers[0]["payload"]
    assert offer["offer"]["code"] == "STAYGOLD" and offer["run_id"] == first.run_id
    assert offer["valid_until"] == service.iso_instant(now + 21 * DAY)

    again = run_campaign(engine, scores, "gold_retention", SETTINGS, now + 10 * DAY, actor="mia")
    assert again.counts()["cooling_down"] == eligible  # control customers cool down too
    assert again.counts()["treated"] == again.counts()["control"] == 0
    later = run_campaign(engine, scores, "gold_retention", SETTINGS, now + 30 * DAY, actor="mia")
    assert later.counts()["treated"] + later.counts()["control"] == eligible
    assert len(campaign_runs(engine)) == 3


def test_dry_run_records_nothing(engine) -> None:
    result = run_campaign(
        engine, gold_scores(), "gold_retention", SETTINGS, T0, actor="mia", dry_run=True
    )
    assert result.run_id is None and result.counts()["treated"] > 0
    assert campaign_runs(engine) == [] and outbox_list(engine) == []


def test_a_run_with_nobody_to_score_is_recorded(engine) -> None:
    empty = gold_scores().head(0)
    result = run_campaign(engine, empty, "gold_retention", SETTINGS, T0, actor="mia")
    [run] = campaign_runs(engine)
    assert run["id"] == result.run_id
    assert (run["scored"], run["treated"], run["control"]) == (0, 0, 0)


def test_offer_email_shows_the_code_and_perks(engine) -> None:
    service.apply_events(engine, [placed("ann", "a1", 1500, T0)], T0, POLICY)
    scores = pd.DataFrame(
        {
            "customer_id": ["ann"],
            "tier": ["Gold"],
            "churn_probability": [0.9],
            "model_version": ["3"],
        }
    )
    settings = SETTINGS.model_copy(update={"control_share": 0.0})
    run_campaign(engine, scores, "gold_retention", settings, T0 + DAY, actor="mia")
    with MailReceiver() as mail:
        config = parse_channels(
            {
                "email": mail.email_channel(
                    address_template="{{ customer_id }}@example.test",
                    events=["retention_offer"],
                )
            }
        )
        _, delivered = dispatch_due(engine, config, T0 + DAY, warnings=False)
        assert delivered.delivered == 2  # the welcome (no email for it) and the offer
        [email] = mail.messages
    text = email.get_body(("plain",)).get_content()
    assert "15% off your next order: use code STAYGOLD" in text
    assert "Free shipping" in text and "Discount 5%" in text
    assert "0.9" not in text  # the churn score is for marketing, never shown to the customer
