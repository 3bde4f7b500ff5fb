"""Table exports over HTTP (the audit log, rejected events): CSV for people, JSON lines for
programs, chosen by ``format`` or the ``Accept`` header."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
from fastapi import Request
from fastapi.responses import Response

from serving.errors import Problem
from tier_ml.events import parse_instant
from tier_ml.spreadsheet import spreadsheet_safe

#: The OpenAPI ``responses`` entry of an export's 200.
EXPORT_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        }
    }
}


def parse_since(since: str | None) -> int | None:
    """The ``since`` query parameter in epoch microseconds; a 422 naming it when not a time."""
    if since is None:
        return None
    since_us = parse_instant(since)
    if since_us is None:
        raise Problem(422, f"{since!r} is not an ISO 8601 time", field="since", location="query")
    return since_us


def table_response(request: Request, frame: pd.DataFrame, fmt: str | None, name: str) -> Response:
    """``frame`` as a download: JSON lines as stored, or CSV whose text cannot run as a
    spreadsheet formula."""
    accept = request.headers.get("accept", "")
    fmt = fmt or ("jsonl" if "ndjson" in accept or "jsonl" in accept else "csv")
    if fmt == "jsonl":
        lines = "".join(json.dumps(r, sort_keys=False) + "\n" for r in frame.to_dict("records"))
        return Response(
            lines,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{name}.jsonl"'},
        )
    buffer = io.StringIO()
    spreadsheet_safe(frame).to_csv(buffer, index=False, lineterminator="\r\n")  # a CR in a value is quoted
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )
