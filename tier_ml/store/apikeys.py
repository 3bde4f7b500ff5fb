"""API keys of the HTTP service, kept in the store: hashed at rest, scoped, revocable.

A key is ``tml_`` plus 32 random URL-safe bytes, shown once when created. The
store keeps its SHA-256 (a key is random and long, so a fast hash is enough: no
dictionary to guess from), its name (the actor the audit log records for what
the key does) and its scopes. Time is passed in, as everywhere in the store.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, Table, select, update

from tier_ml.store.models import ApiKeyRow
from tier_ml.store.storable import refusal
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction

API_KEYS: Table = ApiKeyRow.__table__  # type: ignore[assignment]

#: Every scope a key may hold, and what it allows.
SCOPES = {
    "events:write": "send order events and channel payloads",
    "tiers:read": "read customers' tiers, segments, the support queue and the policy",
    "predictions:read": "read churn and tier-change predictions and the at-risk lists",
    "admin": "overrides, policy changes, reclassification jobs, model reloads",
    "audit:read": "export the audit log (compliance)",
}
KEY_PREFIX = "tml_"


class ApiKeyError(ValueError):
    """A key request the store refuses (unknown scope, empty name), with a clear message."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never the key itself)."""

    id: int
    name: str
    scopes: frozenset[str]
    created_at_us: int
    last_used_at_us: int | None
    revoked_at_us: int | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes, validated (``all`` means every scope), for every way a key is made (the
    CLI, ``TIER_ML_API_KEYS``). Spaces around a name are fine; an empty name (``a,,b``, a
    trailing comma) is refused like an unknown one: a slip in a list that grants access
    should be read back, not guessed."""
    names = [scope.strip() for scope in scopes]
    valid = f"{', '.join(SCOPES)} (or all)"
    if not any(names):
        raise ApiKeyError(f"give at least one scope: {valid}")
    for position, name in enumerate(names, start=1):
        if not name:
            raise ApiKeyError(f"scope {position} is empty (a stray comma?); valid scopes: {valid}")
        if name != "all" and name not in SCOPES:
            raise ApiKeyError(f"unknown scope {name!r}; valid scopes: {valid}")
    return frozenset(SCOPES) if "all" in names else frozenset(names)


def create_key(engine: Engine, name: str, scopes: Iterable[str], now_us: int) -> tuple[str, ApiKey]:
    """A new key: the key (to show once) and what the store keeps of it."""
    if not name or not name.strip():
        raise ApiKeyError("a key needs a name (it is the actor in the audit log)")
    if (message := refusal("the key's name", name)) is not None:
        raise ApiKeyError(message)
    granted = check_scopes(scopes)
    key = KEY_PREFIX + secrets.token_urlsafe(32)

    def work(uow: UnitOfWork) -> int:
        return uow.repo.connection.execute(
            API_KEYS.insert()
            .values(
                name=name.strip(),
                key_hash=hash_key(key),
                scopes=",".join(sorted(granted)),
                created_at_us=now_us,
            )
            .returning(API_KEYS.c.id)
        ).scalar_one()

    key_id = run_in_transaction(engine, work)
    return key, ApiKey(key_id, name.strip(), granted, now_us, None, None)


def _api_key(row: object) -> ApiKey:
    return ApiKey(
        row.id,  # type: ignore[attr-defined]
        row.name,  # type: ignore[attr-defined]
        frozenset(filter(None, row.scopes.split(","))),  # type: ignore[attr-defined]
        row.created_at_us,  # type: ignore[attr-defined]
        row.last_used_at_us,  # type: ignore[attr-defined]
        row.revoked_at_us,  # type: ignore[attr-defined]
    )


def find_key(engine: Engine, key: str) -> ApiKey | None:
    """The live (not revoked) stored key with this value, if any."""
    query = select(API_KEYS).where(
        API_KEYS.c.key_hash == hash_key(key), API_KEYS.c.revoked_at_us.is_(None)
    )
    row = run_in_transaction(
        engine, lambda uow: uow.repo.connection.execute(query).first(), read_only=True
    )
    return None if row is None else _api_key(row)


def list_keys(engine: Engine) -> list[ApiKey]:
    query = select(API_KEYS).order_by(API_KEYS.c.id)
    rows = run_in_transaction(
        engine, lambda uow: uow.repo.connection.execute(query).fetchall(), read_only=True
    )
    return [_api_key(row) for row in rows]


def count_live_keys(engine: Engine) -> int:
    return sum(1 for key in list_keys(engine) if key.revoked_at_us is None)


def revoke_key(engine: Engine, name: str, now_us: int) -> int:
    """Revoke every live key with this name; how many were revoked."""
    statement = (
        update(API_KEYS)
        .where(API_KEYS.c.name == name, API_KEYS.c.revoked_at_us.is_(None))
        .values(revoked_at_us=now_us)
    )
    return run_in_transaction(engine, lambda uow: uow.repo.connection.execute(statement).rowcount)
