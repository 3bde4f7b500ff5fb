"""The audit log export for compliance (scope ``audit:read``): CSV or JSON lines."""

from __future__ import annotations

import io
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from serving.deps import AuditReader, ServicesDep
from serving.errors import Problem, problem_responses
from tier_ml.events import parse_instant
from tier_ml.spreadsheet import spreadsheet_safe
from tier_ml.store.service import export_audit

router = APIRouter(tags=["audit"])


@router.get(
    "/v1/audit",
    summary="Audit rows recorded at or after `since`, in the order written (CSV or JSON lines)",
    responses={
        200: {
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            }
        },
        **problem_responses(401, 403, 422),
    },
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
    since_us = None
    if since is not None:
        since_us = parse_instant(since)
        if since_us is None:
            raise Problem(
                422, f"{since!r} is not an ISO 8601 time", field="since", location="query"
            )
    frame = export_audit(services.engine, since_us)
    accept = request.headers.get("accept", "")
    fmt = format or ("jsonl" if "ndjson" in accept or "jsonl" in accept else "csv")
    if fmt == "jsonl":
        lines = "".join(json.dumps(r, sort_keys=False) + "\n" for r in frame.to_dict("records"))
        return Response(
            lines,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'},
        )
    buffer = io.StringIO()
    spreadsheet_safe(frame).to_csv(buffer, index=False)
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )
