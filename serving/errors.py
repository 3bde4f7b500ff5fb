"""Errors as ``application/problem+json`` (RFC 9457), each with the field and the reason.

Every error the service returns has the same shape::

    {"type": "https://tier-ml.dev/problems/validation", "title": "Request is not valid",
     "status": 422, "detail": "...", "instance": "/v1/events",
     "errors": [{"field": "events.0.amount", "in": "body", "reason": "..."}]}

User input never produces a 500: validation errors are 422, unknown resources
404, conflicts 409, too large bodies 413 (:class:`BodyLimitMiddleware`, limit
``TIER_ML_MAX_BODY_BYTES``, checked on ``Content-Length`` before reading and on
the bytes actually received). A 500 means a bug; it is logged with its
traceback and answered without one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://tier-ml.dev/problems/"
log = logging.getLogger("serving")

TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Request is not valid",
    500: "Internal error",
    503: "Service unavailable",
}
SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "validation",
    500: "internal",
    503: "unavailable",
}


class Problem(Exception):
    """An error answered as problem+json: status, a sentence, and the field at fault if any."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        location: str | None = None,
        headers: dict[str, str] | None = None,
        errors: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        if errors is not None:
            self.errors = list(errors)
        elif field is not None:
            self.errors = [{"field": field, "in": location, "reason": detail}]
        else:
            self.errors = []


def customer_not_found(customer_id: str) -> Problem:
    """The 404 for a customer id the store has no order of (customers and predictions)."""
    return Problem(
        404,
        f"no customer {customer_id!r} with an order in the store",
        field="customer_id",
        location="path",
    )


def problem_response(
    request: Request,
    status: int,
    detail: str,
    errors: Sequence[dict[str, Any]] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + SLUGS.get(status, "error"),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "errors": [{k: v for k, v in e.items() if v is not None} for e in errors],
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's error list as field paths (``events.0.amount``) and plain reasons."""
    errors = []
    for error in _one_union_branch(list(exc.errors()), exc.body):
        location = [str(part) for part in error.get("loc", ())]
        where = (
            location[0] if location and location[0] in {"body", "query", "path", "header"} else None
        )
        path = location[1:] if where else location
        reason = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":  # loc is (body, character position)
            problem = (error.get("ctx") or {}).get("error", "invalid JSON")
            reason, path = f"not valid JSON ({problem}) at character {path[0] if path else 0}", []
        errors.append(
            {"field": ".".join(path) or where or "request", "in": where, "reason": reason}
        )
    return errors


def _union_tag(error: dict[str, Any]) -> str | None:
    """The union member pydantic names in ``loc`` (``EventIn``, ``list[EventIn]``), if any."""
    location = error.get("loc", ())
    if len(location) > 1 and location[0] == "body" and isinstance(location[1], str):
        tag = location[1]
        if tag[:1].isupper() or tag.startswith("list["):
            return tag
    return None


def _one_union_branch(errors: list[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
    """For a body typed as a union, keep only the errors of the member the body was meant as
    (a list for ``list[...]``; else the object member with the fewest, then deepest, errors),
    without the member's name in the path, so the client sees one clear reason."""
    tags = {tag for e in errors if (tag := _union_tag(e)) is not None}
    if len(tags) < 2:
        return errors
    wanted_list = isinstance(body, list)
    candidates = [t for t in tags if t.startswith("list[") == wanted_list] or sorted(tags)

    def score(tag: str) -> tuple[int, int]:
        mine = [e for e in errors if _union_tag(e) == tag]
        return len(mine), -max(len(e.get("loc", ())) for e in mine)

    best = min(sorted(candidates), key=score)
    chosen = []
    for error in errors:
        if _union_tag(error) == best:
            location = tuple(error["loc"])
            chosen.append({**error, "loc": (location[0], *location[2:])})
    return chosen


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(request, exc.status, exc.detail, exc.errors, exc.headers)


def _not_json(request: Request, exc: RequestValidationError) -> str | None:
    """How a body FastAPI left unparsed was labelled (``Content-Type: text/plain``), or None
    when it was JSON: ``curl -d`` sends form encoding, and no content type is not JSON either."""
    if not isinstance(exc.body, bytes | bytearray):
        return None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return None
    return f"Content-Type: {media}" if media else "no Content-Type"


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    media = _not_json(request, exc)
    if media is not None:  # a 415 saying so, not pydantic's "valid dictionary" on "body"
        reason = (
            f"send the body as JSON with Content-Type: application/json (this request has {media})"
        )
        errors = [{"field": "content-type", "in": "header", "reason": reason}]
        return problem_response(request, 415, reason, errors)
    errors = _validation_errors(exc)
    first = errors[0] if errors else {"field": "request", "reason": "invalid"}
    detail = f"{first['field']}: {first['reason']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return problem_response(request, 422, detail, errors)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "Error")
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(request, exc.status_code, detail, (), headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(request, 500, "an internal error occurred; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)


#: The problem+json schema for OpenAPI ``responses=`` (documents every error status).
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "in": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    return {
        status: {
            "description": TITLES.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


class BodyTooLarge(StarletteHTTPException):
    """Raised while reading a body past the limit (an HTTPException so FastAPI passes it on)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is larger than {limit:,} bytes (TIER_ML_MAX_BODY_BYTES)"
        )


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with a 413 problem, before or while reading."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    from starlette.requests import Request

                    error = BodyTooLarge(self.limit)
                    response = problem_response(Request(scope), 413, str(error.detail))
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)
