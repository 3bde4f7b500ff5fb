"""API-key authentication and scopes.

A request names its key in ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.
Keys come from the environment (``TIER_ML_API_KEYS="name:key:scope1,scope2;..."``)
or from the store (``tier-ml apikey create``, kept as SHA-256 hashes). Each key
has a name (the actor the audit log records for overrides and policy changes)
and scopes:

- ``events:write``, ``tiers:read``, ``predictions:read``, ``admin``, ``audit:read``.

No key: 401 (with ``WWW-Authenticate``); a key without the endpoint's scope:
403. Scopes do not imply each other (an admin key does not read the audit log
unless it has ``audit:read``), so compliance access stays explicit.

When no key is configured at all, every protected endpoint answers 401 saying
how to create one: the service is never open by accident. For a local demo
``TIER_ML_AUTH_DISABLED=1`` grants every scope to every request (actor
``anonymous``) and logs a warning at start-up and in ``/readyz``.

Store lookups are cached per key for a few seconds (``TIER_ML_KEY_CACHE_SECONDS``),
so a revoked key stops working within that time.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine

from tier_ml.store.apikeys import (
    SCOPES,
    ApiKeyError,
    check_scopes,
    count_live_keys,
    find_key,
    hash_key,
)

log = logging.getLogger("serving.auth")
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name (the audit actor) and its scopes."""

    name: str
    scopes: frozenset[str]
    source: str  # env | store | disabled


def parse_env_keys(text: str) -> dict[str, Principal]:
    """``name:key:scope,scope;...`` as principals by the SHA-256 of their key."""
    keys: dict[str, Principal] = {}
    for number, entry in enumerate(filter(None, (e.strip() for e in text.split(";"))), start=1):
        parts = entry.split(":", 2)  # scopes contain ":" themselves
        if len(parts) != 3 or not parts[0].strip() or not parts[1].strip():
            raise ApiKeyError(
                f"TIER_ML_API_KEYS entry {number} needs three fields separated by colons: a name, the key, "
                f"comma-separated scopes ({', '.join(SCOPES)}, or all)"
            )
        name, key, scopes = (p.strip() for p in parts)
        keys[hash_key(key)] = Principal(name, check_scopes(scopes.split(",")), "env")
    return keys


class KeyRing:
    """Resolves a presented key to a :class:`Principal` (env keys first, then the store)."""

    def __init__(self, engine: Engine, env_keys: str, disabled: bool, cache_seconds: float) -> None:
        self.engine = engine
        self.env = parse_env_keys(env_keys)
        self.disabled = disabled
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._configured: tuple[float, bool] = (0.0, False)
        self._lock = threading.Lock()

    def authenticate(self, key: str) -> Principal | None:
        digest = hash_key(key)
        for known, principal in self.env.items():
            if hmac.compare_digest(known, digest):
                return principal
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        stored = find_key(self.engine, key)
        principal = None if stored is None else Principal(stored.name, stored.scopes, "store")
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_seconds, principal)
        return principal

    def any_configured(self) -> bool:
        """Whether any key exists (env or store); cached like key lookups."""
        if self.env:
            return True
        now = time.monotonic()
        until, configured = self._configured
        if until > now:
            return configured
        configured = count_live_keys(self.engine) > 0
        self._configured = (now + self.cache_seconds, configured)
        return configured


def disabled_principal() -> Principal:
    return Principal(ANONYMOUS, frozenset(SCOPES), "disabled")
