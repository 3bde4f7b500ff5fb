"""Orders in: canonical events (single or batch) and channel payloads through the adapters.

Idempotent by ``event_id``: a repeated event is answered ``duplicate`` and changes nothing.
Bad events are ``rejected`` with a reason while the good ones of the batch are applied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Header, Path, Query, Request

from serving.deps import EventsWriter, NowDep, Services, ServicesDep
from serving.errors import Problem, problem_responses
from serving.schemas import EventBatch, EventIn, EventResultOut, EventsOut
from tier_ml.adapters import AdapterContext, UnknownChannelError, channels, get_adapter
from tier_ml.store.service import StoreError, active_policy, apply_events, order_owners
from tier_ml.store.views import customer_tiers

router = APIRouter(tags=["orders"])
ERRORS = problem_responses(401, 403, 404, 409, 413, 415, 422)


def ingest(services: Services, rows: Sequence[Mapping[str, Any]], now_us: int) -> EventsOut:
    """Apply rows in one store transaction and describe what happened to each."""
    if not rows:
        raise Problem(422, "the request has no events", field="events", location="body")
    limit = services.settings.max_events_per_request
    if len(rows) > limit:
        raise Problem(
            413,
            f"{len(rows):,} events in one request; at most {limit:,} (split the batch)",
            field="events",
            location="body",
        )
    # an empty store starts with the configured policy; afterwards the store's own applies
    policy = None if active_policy(services.engine) is not None else services.policy()
    try:
        result = apply_events(services.engine, rows, now_us, policy)
    except StoreError as exc:
        raise Problem(409, str(exc)) from None
    for status, count in result.counts.items():
        if count:
            services.metrics.events_ingested.labels(status).inc(count)
    if result.transitions:
        services.metrics.tier_changes.inc(result.transitions)
    customers = sorted({str(r.get("customer_id")) for r in rows if r.get("customer_id")})
    tiers = customer_tiers(services.engine, customers, now_us) if customers else None
    tier_of = {} if tiers is None else dict(zip(tiers["customer_id"], tiers["tier"], strict=True))
    results = []
    for item in result.results:
        customer = rows[item.position].get("customer_id")
        customer = None if customer is None else str(customer).strip() or None
        results.append(
            EventResultOut(
                position=item.position,
                event_id=_echo(item.event_id),
                customer_id=_echo(customer),
                status=str(item.status),  # type: ignore[arg-type]
                reason=item.reason,
                detail=item.detail,
                tier=tier_of.get(customer) if customer else None,
            )
        )
    return EventsOut(
        policy_version=result.policy_version,
        counts=result.counts,
        customers=result.customers,
        tier_changes=result.transitions,
        results=results,
    )


def _echo(text: str | None) -> str | None:
    """An id as sent, for the answer; a lone surrogate (a channel's JSON can carry one, and
    the event is rejected as ``unsupported_character``) as its escape, since JSON output
    is UTF-8 and cannot hold it."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _raw(event: EventIn) -> dict[str, Any]:
    row = event.model_dump()
    if isinstance(row["amount"], float):
        row["amount"] = repr(row["amount"])
    return row


@router.post(
    "/v1/events",
    response_model=EventsOut,
    summary="Send canonical order events (one, a list, or {events: [...]})",
    responses=ERRORS,
)
def post_events(
    body: EventIn | list[EventIn] | EventBatch,
    principal: EventsWriter,
    services: ServicesDep,
    now_us: NowDep,
) -> EventsOut:
    if isinstance(body, EventIn):
        events = [body]
    elif isinstance(body, EventBatch):
        events = body.events
    else:
        events = body
    return ingest(services, [_raw(e) for e in events], now_us)


CSV_TYPES = ("text/csv", "text/plain", "application/csv")
CHANNEL_BODY = {
    "requestBody": {
        "required": True,
        "description": "The channel's own payload: a JSON document (Shopify order or refund "
        "webhook, marketplace feed, app events) or CSV text (POS export).",
        "content": {
            "application/json": {"schema": {}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "/v1/channels/{channel}/orders",
    response_model=EventsOut,
    summary="Send a channel's payload (shopify, pos, marketplace, app): converted by its adapter",
    responses=ERRORS,
    openapi_extra=CHANNEL_BODY,
)
async def post_channel_orders(
    request: Request,
    principal: EventsWriter,
    services: ServicesDep,
    now_us: NowDep,
    channel: Annotated[str, Path(max_length=64, description="shopify, pos, marketplace, app")],
    timezone: Annotated[
        str, Query(max_length=64, description="Time zone of local times in the payload (POS)")
    ] = "UTC",
    topic: Annotated[str | None, Query(max_length=64, description="Webhook topic")] = None,
    x_shopify_topic: Annotated[str | None, Header(max_length=64)] = None,
) -> EventsOut:
    from starlette.concurrency import run_in_threadpool

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise Problem(422, f"{timezone!r} is not an IANA time zone", field="timezone", location="query") from None
    try:
        adapter = get_adapter(channel)
    except UnknownChannelError:
        raise Problem(
            404,
            f"no adapter for channel {channel!r}; known: {', '.join(sorted(channels()))}",
            field="channel",
            location="path",
        ) from None
    payload = await _payload(request, channel)
    return await run_in_threadpool(
        _convert_and_ingest,
        services,
        adapter,
        payload,
        channel,
        timezone,
        topic or x_shopify_topic,
        now_us,
    )


async def _payload(request: Request, channel: str) -> Any:
    body = await request.body()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in CSV_TYPES:
        try:
            return body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Problem(
                422, "the CSV payload is not UTF-8 text", field="body", location="body"
            ) from None
    if media and media != "application/json" and not media.endswith("+json"):
        raise Problem(
            415,
            f"send application/json or text/csv, not {media}",
            field="content-type",
            location="header",
        )
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(
            422, f"the payload is not valid JSON: {exc}", field="body", location="body"
        ) from None
    except RecursionError:  # '[' nested a thousand deep: no channel sends that
        raise Problem(422, "the payload is nested too deeply", field="body", location="body") from None


def _convert_and_ingest(
    services: Services,
    adapter: Any,
    payload: Any,
    channel: str,
    timezone: str,
    topic: str | None,
    now_us: int,
) -> EventsOut:
    owners: dict[str, str] = {}

    def customer_of_order(order_id: str) -> str | None:
        if order_id not in owners:
            owners.update(order_owners(services.engine, [order_id]))
        return owners.get(order_id)

    context = AdapterContext(customer_of_order=customer_of_order, timezone=timezone, topic=topic)
    payloads = (
        payload
        if isinstance(payload, list) and channel not in {"app", "marketplace"}
        else [payload]
    )
    rows: list[dict[str, Any]] = []
    for item in payloads:
        try:
            converted = adapter(item, context)
        except (ValueError, TypeError, KeyError, AttributeError, LookupError) as exc:
            # the payload's shape is the sender's: any error reading it is a 422, never a 500
            raise Problem(
                422, f"not a valid {channel} payload: {exc}", field="body", location="body"
            ) from None
        for row in converted:
            if row.get("event_type") == "placed" and row.get("order_id") and row.get("customer_id"):
                owners[str(row["order_id"])] = str(row["customer_id"])
        rows.extend(converted)
    if not rows:  # test orders, anonymous sales: nothing to book, and nothing for the sender to retry
        active = active_policy(services.engine)
        return EventsOut(
            policy_version=0 if active is None else active.version,
            counts=dict.fromkeys(("accepted", "duplicate", "rejected"), 0),
            customers=0,
            tier_changes=0,
            results=[],
        )
    return ingest(services, rows, now_us)
