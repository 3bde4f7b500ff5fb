"""Dependencies shared by the routers: the app's services, the clock, the store, the policy,
the models and the caller's scopes, each declared once and typed with ``Annotated``.

They are ``async``: FastAPI runs plain ``def`` dependencies on its thread pool, and
four thread hops per request cost more than these functions themselves. The one
that may touch the database (a store key not in the key cache) does so rarely.

:class:`Services` is built by the app factory's lifespan and kept on ``app.state``;
handlers never build engines or read the environment themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from serving.auth import KeyRing, Principal, disabled_principal
from serving.errors import Problem
from serving.metrics import Metrics
from serving.models import ModelHolder, ModelSet
from serving.settings import ServingSettings
from tier_ml.money import instant_to_micros
from tier_ml.policy import Policy, load_policy
from tier_ml.store.service import active_policy

T = TypeVar("T")


@dataclass
class Services:
    """Everything a request may need, built once per app."""

    settings: ServingSettings
    engine: Engine
    metrics: Metrics
    models: ModelHolder
    keys: KeyRing
    jobs: Any  # serving.jobs.JobRunner
    caches: dict[str, Any] = field(default_factory=dict)

    def now_us(self) -> int:
        """The service's clock (``TIER_ML_NOW`` when set): the one place time is read."""
        now = self.settings.now if self.settings.now is not None else datetime.now(UTC)
        return instant_to_micros(now)

    def policy(self) -> Policy:
        """The store's active policy; for an empty store, the one it will start with."""
        active = active_policy(self.engine)
        if active is not None:
            return active.policy
        return load_policy(self.settings.policy_path)


async def run_scoring(services: Services, work: Callable[[], T]) -> T:
    """Run model scoring on a worker thread, at most ``scoring_concurrency`` at a time.

    Why: scoring is CPU work in Python, pandas and LightGBM. Fifty requests scoring on
    fifty threads share the same cores and the GIL: each takes about three times the CPU
    it takes alone and all of them finish late. Waiting for a slot (asynchronously: the
    event loop keeps serving lookups meanwhile) gives the same throughput at a fraction
    of the latency.
    """
    limiter = services.caches.get("scoring_limiter")
    if limiter is None:  # created on first use, inside the event loop it belongs to
        limiter = anyio.CapacityLimiter(services.settings.scoring_concurrency)
        services.caches["scoring_limiter"] = limiter
    return await anyio.to_thread.run_sync(work, limiter=limiter)


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_now_us(services: ServicesDep) -> int:
    return services.now_us()


async def get_engine(services: ServicesDep) -> Engine:
    return services.engine


async def get_models(services: ServicesDep) -> ModelSet:
    return services.models.current


async def get_ready_models(services: ServicesDep) -> ModelSet:
    """The loaded models, or 503 with the reason (tier endpoints do not depend on this)."""
    models = services.models.current
    if not models.ready:
        raise Problem(503, models.unavailable_reason(), headers={"Retry-After": "60"})
    return models


NowDep = Annotated[int, Depends(get_now_us)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ReadyModelsDep = Annotated[ModelSet, Depends(get_ready_models)]

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key (or use Authorization: Bearer)."
)
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>.")


async def get_principal(
    services: ServicesDep,
    api_key: Annotated[str | None, Security(api_key_header)] = None,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> Principal:
    """The caller, from their key; 401 when there is none or it is unknown."""
    if services.keys.disabled:
        return disabled_principal()
    key = api_key or (credentials.credentials if credentials is not None else None)
    challenge = {"WWW-Authenticate": 'Bearer realm="tier-ml"'}
    if not key:
        if not services.keys.any_configured():
            raise Problem(
                401,
                "no API keys are configured: create one with `tier-ml apikey create --name NAME "
                "--scopes all` or set TIER_ML_API_KEYS (TIER_ML_AUTH_DISABLED=1 for a local demo)",
                headers=challenge,
            )
        raise Problem(
            401,
            "an API key is required: send X-API-Key or Authorization: Bearer",
            headers=challenge,
        )
    principal = services.keys.authenticate(key)
    if principal is None:
        raise Problem(401, "the API key is not valid (unknown or revoked)", headers=challenge)
    return principal


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets a caller through only with ``scope`` (403 otherwise)."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if scope not in principal.scopes:
            raise Problem(
                403,
                f"the key {principal.name!r} lacks the scope {scope!r} "
                f"(it has: {', '.join(sorted(principal.scopes)) or 'none'})",
            )
        return principal

    check.__name__ = f"require_{scope.replace(':', '_')}"
    return check


EventsWriter = Annotated[Principal, Depends(require("events:write"))]
TiersReader = Annotated[Principal, Depends(require("tiers:read"))]
PredictionsReader = Annotated[Principal, Depends(require("predictions:read"))]
Admin = Annotated[Principal, Depends(require("admin"))]
AuditReader = Annotated[Principal, Depends(require("audit:read"))]
