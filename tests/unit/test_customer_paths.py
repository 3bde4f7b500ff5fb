"""Customer ids in URL paths: routed on the path as sent, decoded once (serving.customer_paths)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote, unquote

import pytest

from serving.customer_paths import CustomerIdConvertor, CustomerPathMiddleware, routed_path

ODD_IDS = ["gid://shopify/Customer/7", "a/b", "50%/off", "%2F", "a b?c#d", "Zoë/ß", "x/ledger", "/"]


@pytest.mark.parametrize("customer_id", ODD_IDS)
@pytest.mark.parametrize("suffix", ["", "/ledger", "/override/clear"])
@pytest.mark.parametrize("prefix", ["/v1/customers/", "/dashboard/customers/"])
def test_an_encoded_id_is_one_segment_that_decodes_to_the_id(
    customer_id: str, suffix: str, prefix: str
) -> None:
    sent = prefix + quote(customer_id, safe="") + suffix
    routed = routed_path(unquote(sent), sent.encode())  # what the ASGI server hands over
    segment, _, rest = routed.removeprefix(prefix).partition("/")
    assert CustomerIdConvertor().convert(segment) == customer_id
    assert ("/" + rest if rest else "") == suffix


@pytest.mark.parametrize("customer_id", ["C0001", "a b?c#d", "50%off", "%2F", "Zoë"])
def test_without_raw_path_the_decoded_segment_is_encoded_again(customer_id: str) -> None:
    """A server that omits ``raw_path``: an id without a slash still arrives exact, never
    decoded twice (a slash inside an id cannot be told from the path then)."""
    routed = routed_path("/v1/customers/" + customer_id + "/ledger", None)
    segment, _, rest = routed.removeprefix("/v1/customers/").partition("/")
    assert CustomerIdConvertor().convert(segment) == customer_id and rest == "ledger"


def test_a_raw_path_that_is_not_the_paths_encoding_is_not_trusted() -> None:
    """A proxy that rewrote the path: the decoded path wins, encoded again."""
    routed = routed_path("/v1/customers/C1/ledger", b"/other/C1%2Fledger")
    assert routed == "/v1/customers/C1/ledger"


def test_other_paths_are_left_as_they_are() -> None:
    for path in ["/v1/events", "/dashboard/customers", "/v1/customersX/a", "/healthz"]:
        assert routed_path(path, quote(path).encode()) == path


def test_convertor_round_trips_for_url_building() -> None:
    convertor = CustomerIdConvertor()
    for customer_id in ODD_IDS:
        assert convertor.convert(convertor.to_string(customer_id)) == customer_id
        assert "/" not in convertor.to_string(customer_id)


def _seen_path(scope: dict[str, Any]) -> str:
    seen: list[str] = []

    async def app(inner: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(inner["path"])
        inner["route"] = "the route"  # as Starlette's router does

    asyncio.run(CustomerPathMiddleware(app)(scope, None, None))
    assert scope["route"] == "the route"  # outer middleware (latency metrics) sees the route
    return seen[0]


def test_middleware_keeps_root_path_and_ignores_other_scopes() -> None:
    sent = "/v1/customers/a%2Fb/ledger"
    for raw in (sent, "/api" + sent):  # a proxy that took /api off, and one that kept it
        scope = {"type": "http", "root_path": "/api", "path": "/api" + unquote(sent), "raw_path": raw.encode()}
        assert _seen_path(scope) == "/api" + sent
    lifespan = {"type": "lifespan", "path": "/v1/customers/a/b"}
    assert _seen_path(lifespan) == "/v1/customers/a/b"
