"""Retention campaigns: pick at-risk customers for an offer, hold out a control group, record it.

:func:`select_for_campaign` is the whole decision as a pure function of a
scores frame (``customer_id, tier, churn_probability, model_version``), the
campaign settings, when each customer was last selected, and ``now``:

1. targeted: the customer's tier is one of ``settings.tiers`` (Gold);
2. at risk: ``churn_probability >= threshold``;
3. not cooling down: not selected by this campaign in the last
   ``cooldown_days`` (control customers count as selected, so the control
   group is not offered next week what it was held out from today);
4. of the rest, ``round(control_share * n)`` customers, drawn with
   ``numpy.random.default_rng(seed)`` from the customer_id-sorted list, form
   the control group (recorded, never sent anything); the others are treated.

Every customer gets a ``status``: ``treated``, ``control``, ``cooling_down``,
``below_threshold`` or ``not_targeted``. :func:`record_campaign_run` writes
the run, the selected customers (score, model version, control flag), the
``retention_offer`` outbox messages of the treated and the cooldown clock, in
the transaction the caller opened, so marketing can measure uplift later by
comparing treated and control outcomes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table, insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tier_ml.money import MICROS_PER_DAY, days_to_micros
from tier_ml.notify.config import CampaignSettings
from tier_ml.store.models import (
    CampaignCooldownRow,
    CampaignRunRow,
    CampaignSelectionRow,
    OutboxRow,
    TierStateRow,
)
from tier_ml.store.service import iso_instant

RUNS: Table = CampaignRunRow.__table__  # type: ignore[assignment]
SELECTIONS: Table = CampaignSelectionRow.__table__  # type: ignore[assignment]
COOLDOWNS: Table = CampaignCooldownRow.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
STATES: Table = TierStateRow.__table__  # type: ignore[assignment]

KIND = "retention_offer"
SCORE_COLUMNS = ("customer_id", "tier", "churn_probability", "model_version")
TREATED, CONTROL, COOLING_DOWN, BELOW_THRESHOLD, NOT_TARGETED = (
    "treated",
    "control",
    "cooling_down",
    "below_threshold",
    "not_targeted",
)
SELECTED = (TREATED, CONTROL)


class ScoresError(ValueError):
    """A scores table the campaign cannot use, with the reason."""


def normalize_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """The four score columns, checked: ids unique, probabilities numbers in [0, 1].

    ``churn_model_version`` (the column ``training.scoring.score`` writes) is
    accepted for ``model_version``.
    """
    frame = scores
    if "model_version" not in frame.columns and "churn_model_version" in frame.columns:
        frame = frame.rename(columns={"churn_model_version": "model_version"})
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise ScoresError(
            f"scores lack columns {missing}; need {list(SCORE_COLUMNS)} "
            "(churn_model_version is accepted for model_version)"
        )
    frame = frame[list(SCORE_COLUMNS)].copy()
    if frame["customer_id"].isna().any():
        raise ScoresError("scores have rows without a customer_id")
    frame["customer_id"] = frame["customer_id"].astype(str)
    duplicated = frame["customer_id"][frame["customer_id"].duplicated()]
    if len(duplicated):
        raise ScoresError(
            f"scores repeat customer_id {duplicated.iloc[0]!r} (and {len(duplicated) - 1} more)"
        )
    probability = pd.to_numeric(frame["churn_probability"], errors="coerce")
    bad = probability.isna() | (probability < 0) | (probability > 1)
    if bad.any():
        first = frame.loc[bad, "customer_id"].iloc[0]
        raise ScoresError(
            f"churn_probability must be a number in [0, 1]: {int(bad.sum())} rows are not "
            f"(first: customer {first!r}, value {frame.loc[bad, 'churn_probability'].iloc[0]!r})"
        )
    frame["churn_probability"] = probability.astype(float)
    frame["tier"] = frame["tier"].astype(object).where(frame["tier"].notna(), None)
    frame["model_version"] = (
        frame["model_version"].astype(object).where(frame["model_version"].notna(), None)
    )
    frame["model_version"] = frame["model_version"].map(lambda v: None if v is None else str(v))
    return frame.sort_values("customer_id", kind="stable").reset_index(drop=True)


def select_for_campaign(
    scores: pd.DataFrame,
    settings: CampaignSettings,
    last_selected_us: Mapping[str, int],
    now_us: int,
) -> pd.DataFrame:
    """Every scored customer with a ``status`` and a ``control`` flag (see the module docstring)."""
    frame = normalize_scores(scores)
    targeted = frame["tier"].isin(list(settings.tiers))
    at_risk = targeted & (frame["churn_probability"] >= settings.threshold)
    last = frame["customer_id"].map(last_selected_us)
    cooldown_us = settings.cooldown_days * MICROS_PER_DAY
    cooling = at_risk & last.notna() & ((now_us - last.fillna(0)) < cooldown_us)
    eligible = np.flatnonzero((at_risk & ~cooling).to_numpy())
    control_count = math.floor(settings.control_share * len(eligible) + 0.5)
    rng = np.random.default_rng(settings.seed)
    control_rows = eligible[rng.permutation(len(eligible))[:control_count]]
    status = np.full(len(frame), NOT_TARGETED, dtype=object)
    status[targeted.to_numpy()] = BELOW_THRESHOLD
    status[cooling.to_numpy()] = COOLING_DOWN
    status[eligible] = TREATED
    status[control_rows] = CONTROL
    frame["status"] = status
    frame["control"] = frame["status"] == CONTROL
    return frame


def offer_key(campaign: str, run_id: int, customer_id: str) -> str:
    return hashlib.sha256(f"{KIND}|{campaign}|{run_id}|{customer_id}".encode()).hexdigest()[:32]


def last_selected(connection: Connection, campaign: str) -> dict[str, int]:
    """When this campaign last selected each customer (treated or control)."""
    query = select(COOLDOWNS.c.customer_id, COOLDOWNS.c.last_selected_at_us).where(
        COOLDOWNS.c.campaign == campaign
    )
    return {row.customer_id: int(row.last_selected_at_us) for row in connection.execute(query)}


def store_tiers(connection: Connection, customer_ids: list[str]) -> dict[str, str | None]:
    """The store's effective tier of the given customers (those it knows)."""
    found: dict[str, str | None] = {}
    for start in range(0, len(customer_ids), 5_000):
        chunk = customer_ids[start : start + 5_000]
        query = select(STATES.c.customer_id, STATES.c.tier).where(STATES.c.customer_id.in_(chunk))
        found.update({row.customer_id: row.tier for row in connection.execute(query)})
    return found


def customers_in_tiers(connection: Connection, tiers: list[str]) -> list[str]:
    query = (
        select(STATES.c.customer_id).where(STATES.c.tier.in_(tiers)).order_by(STATES.c.customer_id)
    )
    return list(connection.execute(query).scalars())


def record_campaign_run(
    connection: Connection,
    campaign: str,
    settings: CampaignSettings,
    selection: pd.DataFrame,
    now_us: int,
    *,
    actor: str,
    source: str | None,
    policy_version: int | None,
    recorded_at_us: int | None = None,
) -> int:
    """Write the run, its selections, the offers of the treated and the cooldowns; the run id."""
    counts = selection["status"].value_counts()
    chosen = selection[selection["status"].isin(SELECTED)]
    versions = sorted({str(v) for v in selection["model_version"] if v is not None})
    run_id = connection.execute(
        insert(RUNS)
        .values(
            campaign=campaign,
            run_at_us=now_us,
            recorded_at_us=recorded_at_us if recorded_at_us is not None else now_us,
            model_version=",".join(versions) or None,
            threshold=settings.threshold,
            control_share=settings.control_share,
            cooldown_days=settings.cooldown_days,
            seed=settings.seed,
            scored=len(selection),
            above_threshold=int(sum(counts.get(s, 0) for s in (TREATED, CONTROL, COOLING_DOWN))),
            cooling_down=int(counts.get(COOLING_DOWN, 0)),
            treated=int(counts.get(TREATED, 0)),
            control=int(counts.get(CONTROL, 0)),
            actor=actor,
            source=source,
        )
        .returning(RUNS.c.id)
    ).scalar_one()
    valid_until = iso_instant(now_us + days_to_micros(settings.offer.valid_days))
    offer = settings.offer.model_dump(mode="json")
    selections = []
    for row in chosen.itertuples(index=False):
        outbox_id = None
        if not row.control:
            key = offer_key(campaign, run_id, row.customer_id)
            payload = _offer_payload(
                row, campaign, run_id, offer, valid_until, now_us, policy_version, key
            )
            outbox_id = connection.execute(
                insert(OUTBOX)
                .values(
                    idempotency_key=key,
                    kind=KIND,
                    customer_id=row.customer_id,
                    payload=json.dumps(payload, sort_keys=True),
                    created_at_us=now_us,
                )
                .returning(OUTBOX.c.id)
            ).scalar_one()
        selections.append(
            {
                "run_id": run_id,
                "customer_id": row.customer_id,
                "tier": row.tier,
                "churn_probability": float(row.churn_probability),
                "model_version": row.model_version,
                "control": bool(row.control),
                "outbox_id": outbox_id,
            }
        )
    if selections:
        connection.execute(insert(SELECTIONS), selections)
        _touch_cooldowns(
            connection, campaign, [s["customer_id"] for s in selections], now_us, run_id
        )
    return int(run_id)


def _offer_payload(
    row: Any,
    campaign: str,
    run_id: int,
    offer: dict[str, Any],
    valid_until: str,
    now_us: int,
    policy_version: int | None,
    key: str,
) -> dict[str, Any]:
    return {
        "kind": KIND,
        "customer_id": row.customer_id,
        "tier": row.tier,
        "campaign": campaign,
        "run_id": run_id,
        "churn_probability": round(float(row.churn_probability), 6),
        "model_version": row.model_version,
        "offer": offer,
        "valid_until": valid_until,
        "at": iso_instant(now_us),
        "policy_version": policy_version,
        "idempotency_key": key,
    }


def _touch_cooldowns(
    connection: Connection, campaign: str, customer_ids: list[str], now_us: int, run_id: int
) -> None:
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    rows = [
        {
            "campaign": campaign,
            "customer_id": c,
            "last_selected_at_us": now_us,
            "last_run_id": run_id,
        }
        for c in customer_ids
    ]
    statement = dialect_insert(COOLDOWNS)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["campaign", "customer_id"],
            set_={
                "last_selected_at_us": statement.excluded.last_selected_at_us,
                "last_run_id": statement.excluded.last_run_id,
            },
        ),
        rows,
    )


def runs(
    connection: Connection, campaign: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Recorded runs, newest first, times as ISO instants."""
    query = select(RUNS).order_by(RUNS.c.id.desc()).limit(limit)
    if campaign is not None:
        query = query.where(RUNS.c.campaign == campaign)
    out = []
    for row in connection.execute(query).mappings():
        entry = dict(row)
        entry["run_at"] = iso_instant(entry.pop("run_at_us"))
        entry["recorded_at"] = iso_instant(entry.pop("recorded_at_us"))
        out.append(entry)
    return out


def selections(connection: Connection, run_id: int) -> pd.DataFrame:
    """The customers a run selected (treated and control)."""
    query = (
        select(SELECTIONS).where(SELECTIONS.c.run_id == run_id).order_by(SELECTIONS.c.customer_id)
    )
    rows = [dict(r) for r in connection.execute(query).mappings()]
    columns = [c.name for c in SELECTIONS.columns]
    return pd.DataFrame(rows, columns=columns)
