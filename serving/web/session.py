"""Dashboard sessions: log in once with an API key, then a signed session cookie.

The cookie holds no key: only the SHA-256 of the key the user logged in with
(the same digest the store keeps), the key's name, a per-session CSRF token and
when it was issued, signed with the server secret (itsdangerous). Every request
resolves the digest to the key again, so a revoked key (or a key removed from
``TIER_ML_API_KEYS``) ends its sessions at once, and a changed scope applies at once.

The secret comes from ``TIER_ML_SESSION_SECRET``. Without it a random secret is
made per process (with a warning): sessions then end when the process restarts
and are not shared between worker processes.

Forms carry the session's CSRF token in a hidden field, checked on every POST
(cookies are also ``SameSite=Lax`` and ``HttpOnly``). Requests that send the key
itself (``X-API-Key`` or ``Authorization: Bearer``) need no cookie and no token:
a browser never adds those headers to a cross-site request.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from serving.auth import Principal, disabled_principal
from tier_ml.store.apikeys import API_KEYS, hash_key
from tier_ml.store.unit_of_work import run_in_transaction

log = logging.getLogger("serving.web")

COOKIE = "tier_ml_session"
SECRET_ENV = "TIER_ML_SESSION_SECRET"
MAX_AGE_ENV = "TIER_ML_SESSION_MAX_AGE"
DEFAULT_MAX_AGE = 8 * 3600
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Session:
    """What the cookie says: who logged in (a key digest, or nobody yet) and the CSRF token."""

    csrf: str
    key_digest: str | None = None
    name: str | None = None
    issued_at: float = 0.0

    @property
    def logged_in(self) -> bool:
        return self.key_digest is not None


def new_session(key_digest: str | None = None, name: str | None = None) -> Session:
    """A fresh session with a new CSRF token (a login always gets a new one)."""
    return Session(secrets.token_urlsafe(32), key_digest, name, time.time())


def session_secret(environ: dict[str, str] | None = None) -> str:
    """The signing secret: ``TIER_ML_SESSION_SECRET``, else a random one for this process."""
    environ = os.environ if environ is None else environ
    secret = environ.get(SECRET_ENV, "").strip()
    if secret:
        if len(secret) < 16:
            log.warning("%s is shorter than 16 characters: use a long random value", SECRET_ENV)
        return secret
    log.warning(
        "%s is not set: dashboard sessions use a random secret made for this process "
        "(they end on restart and are not shared between workers)",
        SECRET_ENV,
    )
    return secrets.token_urlsafe(48)


def session_max_age(environ: dict[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    text = environ.get(MAX_AGE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_AGE
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{MAX_AGE_ENV} must be a number of seconds, not {text!r}") from None
    if value <= 0:
        raise ValueError(f"{MAX_AGE_ENV} must be positive, not {value}")
    return value


class SessionCodec:
    """Signs sessions into cookies and reads them back (expired or forged: no session)."""

    def __init__(self, secret: str, max_age: int = DEFAULT_MAX_AGE) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt="tier-ml-dashboard-session")
        self.max_age = max_age

    def read(self, request: Request) -> Session | None:
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            data = self.serializer.loads(value, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        return Session(data["csrf"], data.get("key"), data.get("name"), float(data.get("at", 0)))

    def write(self, request: Request, response: Response, session: Session) -> None:
        payload = {"csrf": session.csrf, "key": session.key_digest, "name": session.name}
        payload["at"] = session.issued_at
        response.set_cookie(
            COOKIE,
            self.serializer.dumps(payload),
            max_age=self.max_age,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/")


def csrf_ok(session: Session | None, token: str | None) -> bool:
    """Whether a form's token is this session's (constant-time)."""
    if session is None or not token:
        return False
    return hmac.compare_digest(session.csrf.encode(), token.encode())


def principal_for_digest(services: Any, digest: str) -> Principal | None:
    """The key behind a session, looked up again (env keys, then live stored keys)."""
    for known, principal in services.keys.env.items():
        if hmac.compare_digest(known, digest):
            return principal
    query = select(API_KEYS.c.name, API_KEYS.c.scopes).where(
        API_KEYS.c.key_hash == digest, API_KEYS.c.revoked_at_us.is_(None)
    )
    row = run_in_transaction(
        services.engine, lambda uow: uow.repo.connection.execute(query).first(), read_only=True
    )
    if row is None:
        return None
    return Principal(row.name, frozenset(filter(None, row.scopes.split(","))), "store")


def header_key(request: Request) -> str | None:
    """The API key sent in ``X-API-Key`` or ``Authorization: Bearer``, if any."""
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Visitor:
    """Who is looking at a page: the principal (None: not logged in) and their session."""

    principal: Principal | None
    session: Session | None
    by_header: bool = False

    def can(self, scope: str) -> bool:
        return self.principal is not None and scope in self.principal.scopes


def identify(request: Request, services: Any, codec: SessionCodec) -> Visitor:
    """The caller of a dashboard page: auth disabled, a key header, or the session cookie."""
    session = codec.read(request)
    if services.keys.disabled:
        return Visitor(disabled_principal(), session)
    key = header_key(request)
    if key:
        return Visitor(services.keys.authenticate(key), session, by_header=True)
    if session is None or session.key_digest is None:
        return Visitor(None, session)
    principal = principal_for_digest(services, session.key_digest)
    if principal is None:  # revoked or removed since the login
        return Visitor(None, replace(session, key_digest=None, name=None))
    return Visitor(principal, session)


def login(services: Any, key: str) -> tuple[Principal, Session] | None:
    """Check a key typed into the login form; a new logged-in session for it."""
    key = key.strip()
    if not key:
        return None
    principal = services.keys.authenticate(key)
    if principal is None:
        return None
    return principal, new_session(hash_key(key), principal.name)
