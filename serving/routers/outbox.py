"""The outbox (admin): tier-change messages awaiting delivery, delivered, or dead letters,
and putting dead letters back in line — what `tier-ml outbox list/retry` does, over HTTP."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from serving.deps import Admin, NowDep, ServicesDep
from serving.errors import Problem, problem_responses
from tier_ml.notify.service import NotifyError, outbox_counts, outbox_list, outbox_retry

router = APIRouter(tags=["outbox"])
#: Outbox ids are 64-bit integers: a larger one is a 422 on its field, not a database overflow.
MAX_ID = 2**63 - 1
OutboxId = Annotated[int, Field(ge=1, le=MAX_ID)]


class OutboxPage(BaseModel):
    """Messages oldest first; pass the last ``id`` as ``after_id`` for the next page."""

    counts: dict[str, int] = Field(description="Messages per status in the whole outbox.")
    messages: list[dict[str, Any]]


class RetryIn(BaseModel):
    # a misspelt "ids" must not be read as "omitted", which retries every dead letter
    model_config = ConfigDict(extra="forbid")

    ids: list[OutboxId] | None = Field(
        default=None,
        max_length=10_000,
        description="Outbox ids to retry; omit to retry every dead letter.",
        examples=[[41, 42]],
    )


class RetryOut(BaseModel):
    retried: list[int]
    already_delivered: list[int]
    not_found: list[int]


@router.get(
    "/v1/outbox",
    response_model=OutboxPage,
    summary="Outbox messages by status (pending, delivered, dead), oldest first (admin)",
    responses=problem_responses(401, 403, 422),
)
def get_outbox(
    principal: Admin,
    services: ServicesDep,
    status: Annotated[Literal["pending", "delivered", "dead"] | None, Query()] = None,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    kind: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    after_id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> OutboxPage:
    try:
        messages = outbox_list(
            services.engine,
            status,
            customer_id=customer_id,
            kind=kind,
            limit=limit,
            after_id=after_id,
        )
    except NotifyError as exc:  # the other parameters are checked by their types above
        raise Problem(422, str(exc), field="kind", location="query") from None
    return OutboxPage(counts=outbox_counts(services.engine), messages=messages)


@router.post(
    "/v1/outbox/retry",
    response_model=RetryOut,
    summary="Put dead letters (or the given ids) back in line with a fresh attempt budget (admin)",
    responses=problem_responses(401, 403, 415, 422),
)
def post_retry(
    body: RetryIn, principal: Admin, services: ServicesDep, now_us: NowDep
) -> RetryOut:
    result = outbox_retry(services.engine, body.ids, now_us)
    return RetryOut(**asdict(result))
