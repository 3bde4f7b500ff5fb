"""Events the store rejected, with the reasons (scope ``admin``): what `tier-ml rejects
export` writes, over HTTP. Its JSON lines are an events file for `tier-ml ingest` once the
cause is fixed (docs/store.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from serving.deps import Admin, ServicesDep
from serving.errors import problem_responses
from serving.exports import EXPORT_CONTENT, parse_since, table_response
from tier_ml.store.intake import REASON_CODES
from tier_ml.store.service import export_rejects

router = APIRouter(tags=["orders"])

RejectCode = Literal[REASON_CODES]  # type: ignore[valid-type]


@router.get(
    "/v1/rejects",
    summary="Events rejected at or after `since`, in the order received: why, then the fields as delivered",
    responses={**EXPORT_CONTENT, **problem_responses(401, 403, 422)},
    response_class=Response,
)
def get_rejects(
    request: Request,
    principal: Admin,
    services: ServicesDep,
    since: Annotated[
        str | None, Query(max_length=64, description="ISO 8601; events received from then")
    ] = None,
    reason: Annotated[
        list[RejectCode] | None, Query(description="Only these reject reasons (repeat the parameter)")
    ] = None,
    format: Annotated[Literal["csv", "jsonl"] | None, Query(description="Default: csv")] = None,
) -> Response:
    frame = export_rejects(services.engine, parse_since(since), reason or ())
    return table_response(request, frame, format, "rejects")
