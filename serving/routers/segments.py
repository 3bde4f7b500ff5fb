"""Segments for campaigns and support: customers of a tier, the at-risk list of Gold
customers by churn probability, and the support queue ordered VIP > Gold > Silver then by
value. JSON pages (``?cursor=`` for the next) or a CSV download (``?format=csv`` or
``Accept: text/csv``; all rows unless ``limit`` is given)."""

from __future__ import annotations

import io
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from serving.deps import (
    NowDep,
    PredictionsReader,
    ReadyModelsDep,
    Services,
    ServicesDep,
    TiersReader,
)
from serving.errors import Problem, problem_responses
from serving.schemas import (
    AtRiskOut,
    AtRiskPage,
    PriorityOut,
    PriorityPage,
    SegmentPage,
    TierRowOut,
)
from tier_ml.store.service import iso_instant
from tier_ml.store.views import segment_page, support_priority

router = APIRouter(tags=["segments"])
Format = Annotated[
    Literal["json", "csv"] | None, Query(description="json (pages) or csv (download)")
]
Limit = Annotated[
    int | None, Query(ge=1, le=100_000, description="Rows per page (JSON default 100)")
]
CSV_RESPONSE = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}


def wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


def csv_response(frame: pd.DataFrame, filename: str) -> Response:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def resolve_tier(services: Services, name: str) -> str:
    """The policy's tier of that name (case-insensitive), or 404 listing the tiers."""
    tiers = services.policy().tier_names
    for tier in tiers:
        if tier.lower() == name.lower():
            return tier
    raise Problem(
        404,
        f"no tier {name!r}; the policy's tiers are {', '.join(tiers)}",
        field="tier",
        location="path",
    )


def _page_size(services: Services, limit: int | None) -> int:
    return min(limit or services.settings.page_size, services.settings.max_page_size)


@router.get(
    "/v1/segments/gold-at-risk",
    response_model=AtRiskPage,
    summary="Gold customers by churn probability (highest first), for retention campaigns",
    responses={**CSV_RESPONSE, **problem_responses(401, 403, 404, 422, 503)},
)
def get_gold_at_risk(
    request: Request,
    principal: PredictionsReader,
    services: ServicesDep,
    models: ReadyModelsDep,
    now_us: NowDep,
    min_probability: Annotated[
        float, Query(ge=0.0, le=1.0, description="Keep customers at or above")
    ] = 0.5,
    limit: Limit = None,
    cursor: Annotated[
        str | None, Query(max_length=20, pattern=r"^[0-9]+$", description="From the previous page")
    ] = None,
    format: Format = None,
) -> Any:
    tier = resolve_tier(services, services.settings.at_risk_tier)
    cache = services.caches["at_risk"]
    at_risk = cache.get(services.engine, models, services.policy(), tier, now_us)
    rows = at_risk.rows[at_risk.rows["churn_probability"] >= min_probability]
    columns = list(AtRiskOut.model_fields)
    if wants_csv(request, format):
        chosen = rows if limit is None else rows.head(limit)
        return csv_response(chosen[columns], f"{tier.lower()}-at-risk.csv")
    start = int(cursor or 0)
    size = _page_size(services, limit)
    page = rows.iloc[start : start + size]
    following = start + size if start + size < len(rows) else None
    return AtRiskPage(
        tier=tier,
        as_of=iso_instant(at_risk.as_of_us),
        min_probability=min_probability,
        total=len(rows),
        model_versions=at_risk.model_versions,
        items=[AtRiskOut(**r) for r in _records(page[columns])],
        next_cursor=None if following is None else str(following),
    )


@router.get(
    "/v1/segments/{tier}",
    response_model=SegmentPage,
    summary="Customers of a tier (by customer id), for email lists",
    responses={**CSV_RESPONSE, **problem_responses(401, 403, 404, 422)},
)
def get_segment(
    request: Request,
    tier: Annotated[str, Path(min_length=1, max_length=64)],
    principal: TiersReader,
    services: ServicesDep,
    now_us: NowDep,
    limit: Limit = None,
    cursor: Annotated[
        str | None, Query(max_length=256, description="The next_cursor of the previous page")
    ] = None,
    format: Format = None,
) -> Any:
    name = resolve_tier(services, tier)
    if wants_csv(request, format):
        frame, _ = segment_page(services.engine, name, now_us, after=cursor, limit=limit)
        return csv_response(frame, f"{name.lower()}.csv")
    size = _page_size(services, limit)
    frame, _ = segment_page(services.engine, name, now_us, after=cursor, limit=size + 1)
    more = len(frame) > size
    frame = frame.head(size)
    return SegmentPage(
        tier=name,
        as_of=iso_instant(now_us),
        items=[TierRowOut(**r) for r in _records(frame)],
        next_cursor=str(frame["customer_id"].iloc[-1]) if more else None,
    )


@router.get(
    "/v1/support/priority",
    response_model=PriorityPage,
    summary="The support queue: VIP > Gold > Silver, then by value (qualifying, then pending spend)",
    responses={**CSV_RESPONSE, **problem_responses(401, 403, 422)},
)
def get_support_priority(
    request: Request,
    principal: TiersReader,
    services: ServicesDep,
    now_us: NowDep,
    customer_id: Annotated[
        list[str] | None,
        Query(
            max_length=1_000,
            description="The customers with open tickets (repeat the parameter); all when absent",
        ),
    ] = None,
    limit: Limit = None,
    format: Format = None,
) -> Any:
    ids = None if not customer_id else list(dict.fromkeys(customer_id))
    size = None if (ids is not None and limit is None) else _page_size(services, limit)
    frame = support_priority(services.engine, now_us, ids, size)
    if wants_csv(request, format):
        return csv_response(frame, "support-priority.csv")
    known = set(frame["customer_id"])
    return PriorityPage(
        as_of=iso_instant(now_us),
        items=[PriorityOut(position=i + 1, **r) for i, r in enumerate(_records(frame))],
        missing=[] if ids is None or size is not None else [c for c in ids if c not in known],
    )
