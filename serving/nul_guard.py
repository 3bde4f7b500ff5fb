"""Refuse the NUL character (``\\u0000``) in request input, naming the field.

PostgreSQL text cannot hold NUL: an id, reason, cursor or policy field carrying one
makes the store raise, which answered 500. SQLite keeps it, so only production saw
it. Checked once for every API route (path, query, body) before the store is
touched, so a request is refused whole (422 on the field) and nothing is half
applied.

The bodies of the event-intake routes are the exception
(:func:`refuse_nul_in_path_and_query`): a batch of events is not refused whole for
one bad event. The store rejects an event holding NUL on its own, as
``unsupported_character`` naming the field (``tier_ml.store.intake``, the check
``tier-ml ingest`` uses too), and processes the good events of the batch.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from serving.errors import Problem

NUL = "\x00"
#: Methods whose body the API never reads: no need to receive it here.
NO_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def _refused(field: str, location: str) -> Problem:
    return Problem(
        422,
        f"{field} contains a NUL character (\\u0000), which the store cannot keep",
        field=field,
        location=location,
    )


def nul_path(data: Any, prefix: str = "") -> str | None:
    """The dotted path (``events.1.order_id``) of the first string, key or value, holding
    a NUL in a parsed JSON document, or None."""
    pending: list[tuple[str, Any]] = [(prefix, data)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                return path or "body"
        elif isinstance(item, dict):
            for key, value in item.items():
                where = f"{path}.{key}" if path else str(key)
                if NUL in str(key):
                    return where
                pending.append((where, value))
        elif isinstance(item, list):
            pending.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(item))
    return None


async def refuse_nul_in_path_and_query(request: Request) -> None:
    """A route dependency: 422 naming the path or query parameter that holds a NUL (the
    body is left to the route: events are rejected one by one by the store)."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and NUL in value:
            raise _refused(name, "path")
    for name, value in request.query_params.multi_items():
        if NUL in name or NUL in value:
            raise _refused(name.replace(NUL, "\\u0000"), "query")


async def refuse_nul_characters(request: Request) -> None:
    """A route dependency: 422 naming the path parameter, query parameter or body field
    that holds a NUL."""
    await refuse_nul_in_path_and_query(request)
    if request.method in NO_BODY:
        return
    body = await request.body()  # cached: the handler reads the same bytes
    if b"\\u0000" not in body and b"\x00" not in body:
        return
    try:
        where = nul_path(json.loads(body))
    except ValueError:  # not JSON (a CSV export): the raw bytes hold the NUL
        where = "body" if b"\x00" in body else None
    if where is not None:
        raise _refused(where, "body")
