"""Prometheus metrics of the service: request latency, events ingested, tier changes, model
versions, predictions. One registry per app (tests build many apps in one process).

The latency middleware is plain ASGI (no per-request task or body copy) and labels by
route template (``/v1/customers/{customer_id}``), never by raw path, so label sets stay
bounded.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The service's metrics, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "tier_ml_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events_ingested = Counter(
            "tier_ml_events_ingested_total",
            "Order events received, by outcome (accepted, duplicate, rejected).",
            ["status"],
            registry=self.registry,
        )
        self.tier_changes = Counter(
            "tier_ml_tier_changes_total",
            "Changes of customers' effective tier written by the service (audit rows).",
            registry=self.registry,
        )
        self.predictions = Counter(
            "tier_ml_predictions_total",
            "Customers scored, by model.",
            ["model"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "tier_ml_model_version",
            "The registry version of each loaded model (0: not loaded).",
            ["model", "alias"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LatencyMiddleware:
    """Observe every HTTP request's duration in ``tier_ml_http_request_duration_seconds``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or "unmatched"
            self.metrics.request_seconds.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
