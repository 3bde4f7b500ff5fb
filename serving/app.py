"""The FastAPI application: :func:`create_app` builds it from :class:`ServingSettings`.

Nothing happens at import time. The lifespan opens the store (migrating its
schema), loads the models from the MLflow registry (a missing model is not fatal:
predictions answer 503, tiers keep serving), prepares the API keys and the job
runner, and closes them on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from serving.auth import KeyRing
from serving.customer_paths import CustomerPathMiddleware
from serving.deps import Services
from serving.errors import BodyLimitMiddleware, install_error_handlers
from serving.jobs import JobRunner
from serving.metrics import LatencyMiddleware, Metrics
from serving.models import ModelHolder, settle_heap
from serving.nul_guard import refuse_nul_characters, refuse_nul_in_path_and_query
from serving.routers import (
    audit,
    customers,
    events,
    ops,
    outbox,
    policy,
    predictions,
    rejects,
    segments,
)
from serving.scoring import AtRiskCache
from serving.settings import ServingSettings, load_settings
from tier_ml.store import jobs as job_store
from tier_ml.store.service import open_store

log = logging.getLogger("serving")

DESCRIPTION = """
Customer tiers (VIP, Gold, Silver, ...) from buffered spend, and churn and
tier-change predictions, over HTTP.

**Auth**: send an API key as `X-API-Key: <key>` or `Authorization: Bearer <key>`.
Each endpoint needs one scope: `events:write`, `tiers:read`, `predictions:read`,
`admin` or `audit:read`. 401 without a valid key, 403 without the scope.

**Errors** are `application/problem+json` with `errors: [{field, in, reason}]`.

**Money** is in the policy's base currency, rounded to cents; **instants** are
ISO 8601 UTC.
"""

TAGS = [
    {"name": "orders", "description": "Order events in (canonical or channel payloads)."},
    {"name": "customers", "description": "Tiers for CRM and the customer portal; overrides."},
    {"name": "predictions", "description": "Churn and tier-change probabilities with reasons."},
    {"name": "segments", "description": "Lists for campaigns and support (JSON pages or CSV)."},
    {"name": "policy and jobs", "description": "The tier policy; reclassification jobs."},
    {"name": "audit", "description": "The audit log for compliance."},
    {"name": "outbox", "description": "Tier-change messages out: delivery state, dead letters."},
    {"name": "operations", "description": "Health, readiness, metrics, model reload."},
]


def build_services(settings: ServingSettings, metrics: Metrics) -> Services:
    """Open the store and load keys and models (the lifespan's start-up work)."""
    engine = open_store(settings.database_url)
    keys = KeyRing(engine, settings.api_keys, settings.auth_disabled, settings.key_cache_seconds)
    services = Services(settings, engine, metrics, ModelHolder(settings), keys, None)
    services.jobs = JobRunner(engine, services.now_us)
    services.caches["at_risk"] = AtRiskCache(settings.at_risk_cache_seconds)
    if settings.fail_interrupted_jobs:
        job_store.fail_interrupted(engine, services.now_us())
    if settings.auth_disabled:
        log.warning(
            "authentication is DISABLED (TIER_ML_AUTH_DISABLED=1): every request has every scope"
        )
    elif not keys.any_configured():
        log.warning(
            "no API keys configured: every protected endpoint answers 401 until you run "
            "`tier-ml apikey create` or set TIER_ML_API_KEYS"
        )
    if settings.load_models:
        services.models.reload()
    ops.publish_model_versions(services)
    return services


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """The service, configured by ``settings`` (default: from the environment)."""
    settings = settings if settings is not None else load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, metrics)
        app.state.services = services
        settle_heap()  # after start-up's allocations: see serving.models.settle_heap
        try:
            yield
        finally:
            services.jobs.shutdown()
            services.engine.dispose()

    app = FastAPI(
        title="tier-ml",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in (
        events.router,
        rejects.router,
        customers.router,
        predictions.router,
        segments.router,
        policy.router,
        audit.router,
        outbox.router,
        ops.router,
    ):
        # events are rejected one by one by the store (a NUL too): the good ones are applied
        guard = refuse_nul_in_path_and_query if router is events.router else refuse_nul_characters
        app.include_router(router, dependencies=[Depends(guard)])
    from serving.web import install as install_dashboard  # CRM pages: router + /static

    install_dashboard(app)
    app.add_middleware(CustomerPathMiddleware)  # ids holding a slash, sent encoded
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app
