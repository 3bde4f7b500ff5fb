"""Customer ids in URL paths, decoded once, from the path exactly as the client sent it.

Retailers' customer ids can hold a slash (Shopify's ``gid://shopify/Customer/7``). A
client sends it percent-encoded (``gid%3A%2F%2Fshopify%2FCustomer%2F7``), but the ASGI
server decodes the path before routing, so the route saw extra segments and answered
404. :class:`CustomerPathMiddleware` routes the customer paths on the path as sent
(``raw_path``): the customer's segment stays encoded for routing, and the ``customer``
path convertor decodes it, so an id reaches the handler whole, whatever it holds
(``/``, ``%``, ``?``, ``#``, spaces, non-ASCII). A route takes it as :data:`CUSTOMER`
(``{customer_id:customer}``); OpenAPI shows ``{customer_id}``.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, unquote

from fastapi import Path
from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send

#: Paths whose next segment is a customer id.
CUSTOMER_PREFIXES = ("/v1/customers/", "/dashboard/customers/")


class CustomerIdConvertor(Convertor[str]):
    """One path segment, percent-encoded (see :func:`routed_path`), decoded to the id."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unquote(value)

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


register_url_convertor("customer", CustomerIdConvertor())

#: The customer id in a route's path: ``f"/v1/customers/{CUSTOMER}/ledger"``.
CUSTOMER = "{customer_id:customer}"

#: The handler's parameter for :data:`CUSTOMER` (its OpenAPI description).
CustomerId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=256,
        description="The customer's id, percent-encoded as one path segment (a slash as %2F)",
    ),
]


def routed_path(path: str, raw_path: bytes | None) -> str:
    """The path to route on: ``path`` (decoded) with a customer's segment kept encoded.

    The segment is taken from ``raw_path`` (the path as sent), the only place where an
    encoded slash inside an id differs from a slash between segments. When there is no
    ``raw_path`` (an ASGI server may omit it) or it is not the encoding of ``path`` (a
    proxy rewrote the path), the decoded segment is encoded again. Other paths are
    returned as they are.
    """
    for prefix in CUSTOMER_PREFIXES:
        if not path.startswith(prefix):
            continue
        sent = raw_path.decode("utf-8", "replace") if raw_path else ""
        if sent.startswith(prefix) and unquote(sent) == path:
            segment, slash, rest = sent[len(prefix) :].partition("/")
            return prefix + segment + slash + unquote(rest)
        segment, slash, rest = path[len(prefix) :].partition("/")
        return prefix + quote(segment, safe="") + slash + rest
    return path


class CustomerPathMiddleware:
    """Route customer paths on the encoded id (see :func:`routed_path`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            root = scope.get("root_path", "")
            path = scope["path"]
            mounted = bool(root) and path.startswith(root)  # routes see the path after root_path
            own = path[len(root) :] if mounted else path
            raw = scope.get("raw_path")
            if raw and mounted and raw.startswith(root.encode()):
                raw = raw[len(root) :]
            routed = routed_path(own, raw)
            if routed != own:  # in place: outer middleware reads what routing adds (the route)
                scope["path"] = (root if mounted else "") + routed
        await self.app(scope, receive, send)
