"""Grandfathering in the store: the floors a policy change grants, and who a policy moves.

When a policy version is applied with ``grandfather_until``, every current
member above the default tier gets a *floor* (``evaluation.Floor``): until that
date nobody drops below the tier they had; from that date on the tier is what
the new policy alone gives (``evaluation.with_floor`` / the sweep). This module
holds the floor rows' queries and the frame-wide steps ``apply_policy`` and
``preview_policy`` use; the per-customer rule is in ``evaluation``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from sqlalchemy import Table, select, update

from tier_ml.ledger import iso
from tier_ml.money import micros_to_money
from tier_ml.policy import Policy
from tier_ml.store.evaluation import Floor, Transition
from tier_ml.store.models import GrandfatherRow, PolicyVersion
from tier_ml.store.repository import Repository

FLOORS: Table = GrandfatherRow.__table__  # type: ignore[assignment]
POLICIES: Table = PolicyVersion.__table__  # type: ignore[assignment]
IN_CHUNK = 5_000

#: Columns of the movers file (``policy apply --movers``).
MOVER_COLUMNS = (
    "customer_id",
    "old_tier",
    "new_tier",
    "direction",
    "grandfathered_until",
    "old_qualifying_spend",
    "new_qualifying_spend",
    "revenue",
)


class GrandfatherError(ValueError):
    """Grandfathering that cannot be done as asked."""


# --- floor rows --------------------------------------------------------------------------------


def _floor(row: Mapping[str, Any]) -> Floor:
    return Floor(
        row["customer_id"],
        row["tier"],
        row["since_us"],
        row["set_at_us"],
        row["until_us"],
        row["policy_version"],
    )


def open_floors(repo: Repository, customer_ids: Sequence[str]) -> dict[str, Floor]:
    """Each customer's latest floor (it may have ended: the caller checks the dates)."""
    found: dict[str, Floor] = {}
    ids = sorted(set(customer_ids))
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        query = select(FLOORS).where(FLOORS.c.customer_id.in_(chunk)).order_by(FLOORS.c.id)
        for row in repo.connection.execute(query):
            found[row.customer_id] = _floor(row._mapping)
    return found


def all_floors(repo: Repository) -> dict[str, Floor]:
    query = select(FLOORS).order_by(FLOORS.c.id)
    return {row.customer_id: _floor(row._mapping) for row in repo.connection.execute(query)}


def floors_frame(repo: Repository) -> pd.DataFrame:
    """Every floor row ever granted, oldest first."""
    rows = [dict(r._mapping) for r in repo.connection.execute(select(FLOORS).order_by(FLOORS.c.id))]
    return pd.DataFrame(rows, columns=[c.name for c in FLOORS.columns])


def add_floors(repo: Repository, floors: Sequence[Floor], actor: str, note: str | None) -> None:
    rows = [
        {
            "customer_id": f.customer_id,
            "tier": f.tier,
            "since_us": f.since_us,
            "set_at_us": f.set_at_us,
            "until_us": f.until_us,
            "policy_version": f.policy_version,
            "actor": actor,
            "note": note,
        }
        for f in floors
    ]
    for start in range(0, len(rows), 50_000):
        repo.connection.execute(FLOORS.insert(), rows[start : start + 50_000])


def record_choice(repo: Repository, version: int, until_us: int | None, note: str | None) -> None:
    """Store the grandfathering choice made with a policy version (NULL until: none)."""
    repo.connection.execute(
        update(POLICIES)
        .where(POLICIES.c.version == version)
        .values(grandfather_until_us=until_us, note=note)
    )


def policy_choices(repo: Repository) -> dict[int, dict[str, Any]]:
    query = select(POLICIES.c.version, POLICIES.c.grandfather_until_us, POLICIES.c.note)
    return {row.version: dict(row._mapping) for row in repo.connection.execute(query)}


# --- policy plans --------------------------------------------------------------------------


def _rank(policy: Policy, tier: Any) -> int:
    names = policy.tier_names
    return names.index(tier) if isinstance(tier, str) and tier in names else -1


def new_floors(
    current: pd.DataFrame, policy: Policy, now_us: int, until_us: int, version: int
) -> list[Floor]:
    """Floors for every current member (``current``: stored states at ``now_us``) above the
    new policy's default tier.

    The floor is the customer's *rules* tier (under an active override, the
    tier they earned, not the one given by hand), kept since their tier_since.
    """
    if until_us <= now_us:
        raise GrandfatherError(
            f"--grandfather-until {_iso(until_us)} must be after the policy's start ({_iso(now_us)})"
        )
    members = current[current["rules_tier"].notna()]
    unknown = sorted(set(members["rules_tier"]) - set(policy.tier_names))
    if unknown:
        raise GrandfatherError(
            f"cannot grandfather tiers the new policy does not have: {unknown}; "
            f"its tiers are {policy.tier_names}"
        )
    floors = []
    for customer_id, tier, since in zip(
        members["customer_id"], members["rules_tier"], members["tier_since_us"], strict=True
    ):
        if _rank(policy, tier) > 0:
            since_us = now_us if since is None or since is pd.NA else int(since)
            floors.append(Floor(customer_id, tier, since_us, now_us, until_us, version))
    return floors


def apply_floors(
    states: pd.DataFrame,
    floors: Mapping[str, Floor],
    policy: Policy,
    now_us: int,
    current: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Proposed rules states with the floors in force at ``now_us`` applied (frame-wide
    ``evaluation.with_floor``): the higher tier, and a due time at the floor's end.

    A floor granted now keeps the customer's tier_since from when they got the
    tier; an earlier floor keeps the stored tier_since (``current``).
    """
    live = [f for f in floors.values() if f.active_at(now_us)]
    if not live:
        return states
    missing = sorted({f.tier for f in live} - set(policy.tier_names))
    if missing:
        raise GrandfatherError(
            f"customers are grandfathered at tiers the new policy does not have: {missing}"
        )
    ranks = {name: index for index, name in enumerate(policy.tier_names)}
    by_customer = {f.customer_id: f for f in live}
    ids = states["customer_id"]
    floor = [by_customer.get(c) for c in ids]
    has = pd.Series([f is not None for f in floor], index=states.index) & states["tier"].notna()
    if not has.any():
        return states
    until = pd.Series(
        [f.until_us if f else pd.NA for f in floor], index=states.index, dtype="Int64"
    )
    floor_tier = pd.Series([f.tier if f else None for f in floor], index=states.index, dtype=object)
    states = states.copy()
    due = states["next_due_at_us"].astype("Int64")
    later = has & (due.isna() | (due > until)).fillna(True)
    states["next_due_at_us"] = due.where(~later, until)
    lift = has & (states["tier"].map(ranks) < floor_tier.map(ranks)).fillna(False)
    if lift.any():
        kept = (
            {}
            if current is None
            else dict(zip(current["customer_id"], current["tier_since_us"], strict=True))
        )
        since = [
            f.since_us if f.set_at_us == now_us or pd.isna(kept.get(c)) else int(kept[c])
            for c, f in zip(ids[lift], (by_customer[c] for c in ids[lift]), strict=True)
        ]
        states.loc[lift, "tier"] = floor_tier[lift]
        states.loc[lift, "tier_since_us"] = pd.array(since, dtype="Int64")
    return states


def held_transitions(
    merged: pd.DataFrame, floors: Sequence[Floor], policy: Policy, actor: str, note: str | None
) -> list[Transition]:
    """One ``grandfathering`` audit row per customer the floor keeps above the new rules now."""
    rules = dict(zip(merged["customer_id"], merged["rules_tier"], strict=True))
    rows = []
    for floor in floors:
        new_rules = rules.get(floor.customer_id)
        if _rank(policy, new_rules) < _rank(policy, floor.tier):
            text = (
                f"kept at {floor.tier} until {_iso(floor.until_us)} "
                f"(policy version {floor.policy_version} alone gives {new_rules})"
            )
            rows.append(
                Transition(
                    floor.customer_id,
                    floor.set_at_us,
                    floor.tier,
                    floor.tier,
                    "grandfathering",
                    "policy",
                    actor,
                    text if not note else f"{text}; {note}",
                )
            )
    return rows


def movers_frame(merged: pd.DataFrame, policy: Policy, floors: Mapping[str, Floor]) -> pd.DataFrame:
    """Customers whose tier the new policy changes (plain application, overrides kept),
    largest revenue first, with the date grandfathering holds a downgrade until.

    Revenue is what the loyalty programme counts for the customer today
    (qualifying plus pending spend under the current policy).
    """
    old, new = merged["tier_old"], merged["plain_tier"]
    moved = merged[old.notna() & new.notna() & (old != new)]
    ranks_old = [_rank(policy, t) for t in moved["tier_old"]]
    ranks_new = [_rank(policy, t) for t in moved["plain_tier"]]
    held = [
        floors[c].until_us
        if c in floors and _rank(policy, n) < _rank(policy, floors[c].tier)
        else None
        for c, n in zip(moved["customer_id"], moved["plain_tier"], strict=True)
    ]
    qualifying_old = moved["qualifying_us_old"].fillna(0).astype("int64")
    revenue_us = qualifying_old + moved["pending_us_old"].fillna(0).astype("int64")
    frame = pd.DataFrame(
        {
            "customer_id": moved["customer_id"].astype(str).to_numpy(),
            "old_tier": moved["tier_old"].to_numpy(),
            "new_tier": moved["plain_tier"].to_numpy(),
            "direction": [
                "upgrade" if n > o else "downgrade"
                for o, n in zip(ranks_old, ranks_new, strict=True)
            ],
            "grandfathered_until": [_iso(u) for u in held],
            "old_qualifying_spend": [micros_to_money(int(v)) for v in qualifying_old],
            "new_qualifying_spend": [
                micros_to_money(int(v)) for v in moved["qualifying_us"].fillna(0)
            ],
            "revenue": [micros_to_money(int(v)) for v in revenue_us],
            "revenue_us": revenue_us.to_numpy(),
        }
    )
    frame = frame.sort_values(["revenue_us", "customer_id"], ascending=[False, True])
    return frame.reset_index(drop=True)


def _iso(micros: Any) -> str | None:
    return None if micros is None or micros is pd.NA else iso(int(micros))
