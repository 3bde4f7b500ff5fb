"""Channel adapters: real payloads (webhooks, exports, feeds) in, canonical order events out.

Every channel speaks its own shape; the store speaks one (the nine fields of
``tier_ml.events.EVENT_FIELDS``). An adapter is a module of this package with

- ``CHANNEL``: its name (``shopify``, ``pos``, ``marketplace``, ``app``);
- ``to_events(payload, context) -> list[dict]``: the raw canonical events in
  one payload (a parsed JSON document, or CSV text for file exports).

Adapters only *translate*: amounts stay decimal text in the payload's
currency, times ISO 8601; validation stays in ``tier_ml.events`` and the store,
so a malformed payload becomes rejected events with reasons, never a crash of
the batch. Each adapter derives stable ``event_id`` values from the payload's
own ids, so a redelivered webhook or a re-exported file is a replay.

Adding a channel means adding one module here: :func:`get_adapter` finds it by
name (``channels()`` lists them).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Protocol

RawEvent = dict[str, str | None]

#: Countries in the EU market (ISO 3166 alpha-2), for the policy's region keys.
EU_COUNTRIES = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)


def _no_lookup(order_id: str) -> str | None:
    return None


@dataclass(frozen=True)
class AdapterContext:
    """What an adapter may need beyond the payload.

    ``customer_of_order``: the customer of an order placed earlier (Shopify
    refund webhooks name the order, not the customer); the store passes a
    lookup into its ``orders`` table. ``timezone``: for exports that write
    local times without an offset (POS). ``topic``: the webhook topic when the
    transport carries it in a header (``X-Shopify-Topic``).
    """

    customer_of_order: Callable[[str], str | None] = _no_lookup
    timezone: str = "UTC"
    topic: str | None = None
    markets: dict[str, str] = field(default_factory=dict)

    def market(self, country: str | None) -> str:
        """The policy's region key for a country: explicit ``markets`` first, then EU / UK / as is."""
        code = (country or "").strip().upper()
        if code in self.markets:
            return self.markets[code]
        if code in EU_COUNTRIES:
            return "EU"
        if code == "GB":
            return "UK"
        return code


class Adapter(Protocol):
    def __call__(self, payload: Any, context: AdapterContext = ...) -> list[RawEvent]: ...


class UnknownChannelError(ValueError):
    """A channel name without an adapter module."""


@cache
def channels() -> dict[str, Adapter]:
    """Every adapter module of this package, by its ``CHANNEL`` name."""
    found: dict[str, Adapter] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        channel = getattr(module, "CHANNEL", None)
        if channel and callable(getattr(module, "to_events", None)):
            found[channel] = module.to_events
    return found


def get_adapter(channel: str) -> Adapter:
    """The adapter of a channel (``shopify``, ``pos``, ``marketplace``, ``app``, ...)."""
    adapters = channels()
    if channel not in adapters:
        raise UnknownChannelError(
            f"no adapter for channel {channel!r}; known channels: {', '.join(sorted(adapters))}"
        )
    return adapters[channel]


# --- helpers the adapters share ------------------------------------------------------------------


def event(
    event_id: str,
    event_type: str,
    order_id: str,
    customer_id: str | None,
    occurred_at: str | None,
    amount: str | None,
    currency: str | None,
    channel: str,
    region: str | None,
) -> RawEvent:
    """One raw canonical event (every value text or None, as an events file holds it)."""
    return {
        "event_id": event_id,
        "event_type": event_type,
        "order_id": order_id,
        "customer_id": customer_id or None,
        "occurred_at": occurred_at or None,
        "amount": amount,
        "currency": currency or None,
        "channel": channel,
        "region": region or None,
    }


def text(value: Any) -> str | None:
    """A payload value as text (numbers keep their digits; None and blanks stay None)."""
    if value is None:
        return None
    rendered = str(value).strip()
    return rendered or None


def decimal_text(value: Any) -> str | None:
    """A money value as plain decimal text, or the value as given when it is not a number
    (validation then rejects it with a reason)."""
    rendered = text(value)
    if rendered is None:
        return None
    try:
        return format(Decimal(rendered), "f")
    except InvalidOperation:
        return rendered


def minor_units_text(value: Any, exponent: Any = 2) -> str | None:
    """Money in minor units (cents) as decimal text: ``1999, 2`` -> ``"19.99"``."""
    rendered = text(value)
    if rendered is None:
        return None
    try:
        return format(Decimal(rendered).scaleb(-int(exponent)), "f")
    except (InvalidOperation, ValueError, TypeError):
        return rendered
