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
from serving.intervals import model_kinds
from serving.schemas import (
    AtRiskOut,
    AtRiskPage,
    PriorityOut,
    PriorityPage,
    SegmentPage,
    TierRowOut,
)
from tier_ml.spreadsheet import spreadsheet_safe
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
MinPUpgrade = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        description="Keep customers whose chance to reach the next tier within the "
        "tier-change model's horizon (p_reach_next_tier) is at least this",
    ),
]
MaxPKeep = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        description="Keep customers whose chance to keep their tier through the horizon "
        "(p_keep_tier = 1 - p_downgrade) is at most this",
    ),
]


def wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


def csv_response(frame: pd.DataFrame, filename: str) -> Response:
    """A CSV download for a spreadsheet: text that could run as a formula is neutralised
    (``spreadsheet_safe``: customer ids and regions come from shops), and lines end with
    CRLF (RFC 4180), so a value holding a carriage return is quoted, not split."""
    buffer = io.StringIO()
    spreadsheet_safe(frame).to_csv(buffer, index=False, lineterminator="\r\n")
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


def filter_chances(
    rows: pd.DataFrame, min_p_upgrade: float | None, max_p_keep: float | None
) -> pd.DataFrame:
    """Rows (with ``p_reach_next_tier`` and ``p_keep_tier``) within the asked chances."""
    keep = pd.Series(True, index=rows.index)
    if min_p_upgrade is not None:
        keep &= rows["p_reach_next_tier"] >= min_p_upgrade
    if max_p_keep is not None:
        keep &= rows["p_keep_tier"] <= max_p_keep
    return rows[keep]


def _scored_tier(services: Services, principal: Any, tier: str, now_us: int) -> pd.DataFrame:
    """The tier's customers with their model chances, by customer id (predictions:read and
    loaded models needed: filtering on a prediction reveals it)."""
    if "predictions:read" not in principal.scopes:
        raise Problem(
            403,
            "filtering on predicted chances needs the predictions:read scope",
            field="min_p_upgrade",
            location="query",
        )
    models = services.models.current
    if not models.ready:
        raise Problem(503, models.unavailable_reason(), headers={"Retry-After": "60"})
    cache = services.caches["at_risk"]
    rows = cache.get(services.engine, models, services.policy(), tier, now_us).rows
    return rows.sort_values("customer_id", kind="stable")


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
    min_p_upgrade: MinPUpgrade = None,
    max_p_keep: MaxPKeep = None,
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
    rows = filter_chances(rows, min_p_upgrade, max_p_keep)
    columns = list(AtRiskOut.model_fields)
    rows = rows.reindex(columns=[*rows.columns, *(c for c in columns if c not in rows.columns)])
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
        model_kinds=model_kinds(models),
        items=[AtRiskOut(**r) for r in _records(page[columns])],
        next_cursor=None if following is None else str(following),
    )


@router.get(
    "/v1/segments/{tier}",
    response_model=SegmentPage,
    summary="Customers of a tier (by customer id), for email lists; optionally filtered by "
    "predicted chances (min_p_upgrade, max_p_keep)",
    responses={**CSV_RESPONSE, **problem_responses(401, 403, 404, 422, 503)},
)
def get_segment(
    request: Request,
    tier: Annotated[str, Path(min_length=1, max_length=64)],
    principal: TiersReader,
    services: ServicesDep,
    now_us: NowDep,
    min_p_upgrade: MinPUpgrade = None,
    max_p_keep: MaxPKeep = None,
    limit: Limit = None,
    cursor: Annotated[
        str | None, Query(max_length=256, description="The next_cursor of the previous page")
    ] = None,
    format: Format = None,
) -> Any:
    name = resolve_tier(services, tier)
    if min_p_upgrade is not None or max_p_keep is not None:
        return _filtered_segment(
            request,
            services,
            principal,
            name,
            now_us,
            (min_p_upgrade, max_p_keep),
            limit,
            cursor,
            format,
        )
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


def _filtered_segment(
    request: Request,
    services: Services,
    principal: Any,
    name: str,
    now_us: int,
    chances: tuple[float | None, float | None],
    limit: int | None,
    cursor: str | None,
    format: str | None,
) -> Any:
    """A tier's customers within the asked chances, by customer id (same pages as unfiltered)."""
    rows = filter_chances(_scored_tier(services, principal, name, now_us), *chances)
    columns = list(TierRowOut.model_fields)
    if cursor is not None:
        rows = rows[rows["customer_id"] > cursor]
    if wants_csv(request, format):
        chosen = rows if limit is None else rows.head(limit)
        return csv_response(chosen[columns], f"{name.lower()}.csv")
    size = _page_size(services, limit)
    page = rows.head(size)
    return SegmentPage(
        tier=name,
        as_of=iso_instant(now_us),
        items=[TierRowOut(**r) for r in _records(page[columns])],
        next_cursor=str(page["customer_id"].iloc[-1]) if len(rows) > size else None,
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
