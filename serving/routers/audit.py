"""The audit log export for compliance (scope ``audit:read``): CSV or JSON lines."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from serving.deps import AuditReader, ServicesDep
from serving.errors import problem_responses
from serving.exports import EXPORT_CONTENT, parse_since, table_response
from tier_ml.store.service import export_audit

router = APIRouter(tags=["audit"])


@router.get(
    "/v1/audit",
    summary="Audit rows recorded at or after `since`, in the order written (CSV or JSON lines)",
    responses={**EXPORT_CONTENT, **problem_responses(401, 403, 422)},
    response_class=Response,
)
def get_audit(
    request: Request,
    principal: AuditReader,
    services: ServicesDep,
    since: Annotated[
        str | None, Query(max_length=64, description="ISO 8601; rows recorded from then")
    ] = None,
    format: Annotated[Literal["csv", "jsonl"] | None, Query(description="Default: csv")] = None,
) -> Response:
    frame = export_audit(services.engine, parse_since(since))
    return table_response(request, frame, format, "audit")
