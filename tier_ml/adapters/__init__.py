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
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Protocol

from tier_ml.events import AMOUNT_PATTERN

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
    event_id: str | None,
    event_type: str,
    order_id: str | None,
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


def ident(value: Any) -> str | None:
    """A payload id as text: a string or an integer, else None (an object, a list, a bool
    or a missing id is no id, and the event is then rejected as ``missing_field``)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return text(value)


def namespaced(*parts: Any) -> str | None:
    """``channel:kind:id`` from its parts, or None when any part is missing: a payload
    without an id must not become the id ``shopify:order:None`` shared by every such order."""
    texts = [ident(part) for part in parts]
    return None if None in texts else ":".join(texts)  # type: ignore[arg-type]


_AMOUNT_RE = re.compile(AMOUNT_PATTERN)
#: A decimal exponent beyond this is not money (``1e10000000`` would print ten million digits).
_LARGEST_EXPONENT = 30


def decimal_text(value: Any) -> str | None:
    """A money value as plain decimal text, or the value as given when it is not a number
    as ``tier_ml.events`` reads one (validation then rejects it with a reason)."""
    rendered = text(value)
    if rendered is None:
        return None
    if not _AMOUNT_RE.fullmatch(rendered):
        return rendered  # "1_000", "12,50", "abc": rejected downstream, as on /v1/events
    number = Decimal(rendered)
    if abs(number.adjusted()) > _LARGEST_EXPONENT:
        return rendered  # far too large (or small): validation says so without expanding it
    return format(number, "f")


#: ISO 4217 minor-unit exponents other than 2 (JPY has no cents, KWD has fils).
MINOR_UNIT_EXPONENTS = {
    **dict.fromkeys(
        ["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
         "VND", "VUV", "XAF", "XOF", "XPF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}


def minor_units_text(value: Any, exponent: Any = None, currency: str | None = None) -> str | None:
    """Money in minor units as decimal text: ``1999`` USD -> ``"19.99"``, ``12000`` JPY ->
    ``"12000"``. The exponent is the payload's, else the currency's (ISO 4217), else 2. A
    value that is not a whole number of minor units is given back with a note, and
    validation rejects it (``12.5`` cents is no amount)."""
    rendered = text(value)
    if rendered is None:
        return None
    if exponent is None:
        exponent = MINOR_UNIT_EXPONENTS.get((currency or "").strip().upper(), 2)
    if not _AMOUNT_RE.fullmatch(rendered):
        return rendered
    try:
        units, places = Decimal(rendered), int(exponent)
    except (InvalidOperation, ValueError, TypeError):
        return rendered
    if units != units.to_integral_value() or abs(units.adjusted()) > _LARGEST_EXPONENT or not 0 <= places <= 8:
        return f"{rendered} minor units"
    return format(units.scaleb(-places), "f")
