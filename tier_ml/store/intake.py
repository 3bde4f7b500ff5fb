"""Admitting a batch of raw events into the ledger: the rules of ``tier_ml.events.validate``,
applied to a batch against what the ledger already holds.

This module is pure (no database): the service looks up the ledger rows the
batch refers to and hands them in. Per event the outcome is one of

- ``accepted``: stored in the ledger, its customer re-evaluated;
- ``duplicate``: a replay of an ``event_id`` with identical content (in the
  ledger or earlier in the batch), ignored: every event counts once;
- ``rejected``: with the reason codes of :class:`tier_ml.events.RejectReason`, or
  the store's own :class:`StoreRejectReason` (text a database cannot keep).

The checks are those of ``validate``, in the same order, after one of the
store's own (a field holding a character no database column can keep, such as
NUL, is ``unsupported_character``: checked first, so such text never reaches a
statement or a reject's detail): each row on its own (``check_row``); then
replays by ``event_id`` (identical content is a duplicate, different content
``conflicting_replay``; inside one batch the copy with the smallest content is
kept, as ``validate`` keeps it); then the first ``placed`` of an order places it
and a second is ``duplicate_order``; then a refund or cancel needs its order
placed at or before it (``unknown_order``) by the same customer
(``customer_mismatch``).

One difference is inherent to a ledger that never rewrites what it accepted:
``validate`` sees a whole file at once, the store sees events as they arrive,
so the *first accepted* ``placed`` of an order wins even if a later delivery
carries an earlier timestamp, and a refund delivered before its order is
rejected as ``unknown_order``. Rejected events are not stored in the ledger
(only in ``rejected_events`` for review), so redelivering such a refund after
its order has arrived is accepted. Such a copy, rejected for its order, still
holds its ``event_id`` as ``validate`` would hold it (``CLAIMING_REASONS``): a
later copy with other content is a ``conflicting_replay``, so a replay never
undoes the rejection by arriving in another batch; an identical copy still
rejected is a ``duplicate`` (the event is rejected once, as in ``validate``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import pandas as pd

from tier_ml.events import (
    BEYOND_HEADER,
    EVENT_FIELDS,
    EventType,
    OrderEvent,
    RejectReason,
    check_row,
    content,
    parse_amount,
    parse_instant,
)
from tier_ml.money import MAX_AMOUNT, to_micros
from tier_ml.policy import Policy
from tier_ml.store.storable import NUL, refusal

RawEvent = dict[str, str | None]


class StoreRejectReason(StrEnum):
    """Reject reasons of the store beside :class:`tier_ml.events.RejectReason`: limits of
    what a database column can keep, which ``validate`` on a file does not have. Stable
    codes, like those."""

    #: A text field holds NUL (``\u0000``, which PostgreSQL text refuses) or an unpaired
    #: surrogate (no UTF-8 encoding): the detail names the field.
    UNSUPPORTED_CHARACTER = "unsupported_character"


Reason = RejectReason | StoreRejectReason
#: Every reject reason code the store records, sorted.
REASON_CODES = tuple(sorted({str(r) for r in RejectReason} | {str(r) for r in StoreRejectReason}))

#: Rejects that still claim their ``event_id``: the copy passed the row checks and the
#: replay check, so, as in ``validate``, it is the one copy of its id; a later copy with
#: other content is a ``conflicting_replay``, an identical one is checked again (accepted
#: if its order has arrived since, else a ``duplicate``: the event was rejected once).
CLAIMING_REASONS = frozenset(
    {RejectReason.DUPLICATE_ORDER, RejectReason.UNKNOWN_ORDER, RejectReason.CUSTOMER_MISMATCH}
)
Checked = OrderEvent | tuple[Reason, str]


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class EventResult:
    """What happened to one event of a batch (``position`` is its index in the batch)."""

    position: int
    event_id: str | None
    status: Status
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """What the ledger knows about an order: who placed it, when, by which event."""

    customer_id: str
    placed_at_us: int
    event_id: str


@dataclass
class Admission:
    """The outcome for a batch: per-event results and the accepted events with their raw rows."""

    results: list[EventResult]
    accepted: list[tuple[OrderEvent, RawEvent]]

    @property
    def counts(self) -> dict[str, int]:
        counts = {str(status): 0 for status in Status}
        for result in self.results:
            counts[str(result.status)] += 1
        return counts


def canonical_raw(row: Mapping[str, Any]) -> RawEvent:
    """The nine canonical fields of a row as text (None when missing), as the ledger stores them
    (and ``BEYOND_HEADER`` when the row has it, which makes it a ``malformed_row`` reject).

    Text stays exactly as delivered; typed values (a Parquet timestamp, a float
    amount) are written the way ``tier_ml.events`` reads them back unchanged:
    instants as ISO 8601 in UTC with ``Z``, numbers by their shortest exact repr.
    """
    raw: RawEvent = {}
    for name in EVENT_FIELDS:
        value = row.get(name)
        raw[name] = value if value is None or type(value) is str else _as_text(value)
    if (extra := row.get(BEYOND_HEADER)) is not None:  # a CSV row with more fields: a reject
        raw[BEYOND_HEADER] = _as_text(extra)
    return raw


def _as_text(value: Any) -> str | None:
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else repr(value)
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        instant = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


_EVENT_TYPES = {str(kind): kind for kind in EventType}


def without_orphans(events: list[OrderEvent]) -> list[OrderEvent]:
    """One customer's ledger events without refunds and cancels whose placement is not among them.

    The ledger accepts an adjustment only after its order's placement, so one is orphaned
    only when a later policy version cannot read that placement (a currency whose rate it
    dropped). ``validate`` rejects such an adjustment (``unknown_order``); every reader of
    the ledger leaves it out the same way.
    """
    placed = {e.order_id for e in events if e.event_type == EventType.PLACED}
    return [e for e in events if e.event_type == EventType.PLACED or e.order_id in placed]


class LedgerReader:
    """Ledger rows as engine events under one policy.

    Re-evaluation reads every event of a customer again, so this skips what
    ``check_row`` established when the row was admitted (required fields, the
    syntax of the time, already stored as ``at_us``, and of the amount, its
    sign; ids are stored normalized) and redoes only what depends on the
    policy: the conversion into base-currency micro-units. For a row that
    passed ``check_row``, :meth:`event` gives the event ``check_row`` gives, or
    None when the policy has no fx rate for its currency (a unit test holds the
    two together).
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._rates: dict[str, float | None] = {}

    def _rate(self, code: str) -> float | None:
        if code not in self._rates:
            self._rates[code] = self.policy.rate(code)
        return self._rates[code]

    def event(
        self,
        event_id: str,
        event_type: str,
        order_id: str,
        customer_id: str,
        at_us: int,
        amount: str | None,
        currency: str | None,
        channel: str | None,
        region: str | None,
    ) -> OrderEvent | None:
        kind = _EVENT_TYPES[event_type]
        code = currency.strip(" ").upper() if currency else ""
        value: float | None = None
        amount_us = 0
        if kind is not EventType.CANCELLED:
            rate = self._rate(code)
            if rate is None:
                return None
            value = float(amount.strip(" ")) if amount else math.nan
            amount_us = to_micros(value, rate)
        return OrderEvent(
            event_id,
            kind,
            order_id,
            customer_id,
            at_us,
            amount_us,
            channel.strip(" ") if channel else "",
            region.strip(" ") if region else "",
            code,
            value,
        )


class RowChecker:
    """``tier_ml.events.check_row`` for a batch of rows of text (as :func:`canonical_raw` gives).

    ``check_row`` takes any value (None, NaN, timestamps, numbers) and asks for
    each field whether it is missing, several times; a row of a batch is text or
    None, so a valid one can be read in one pass. :meth:`check` does that pass
    and returns the event only when every field is text and every check passes,
    with the very functions ``check_row`` uses (``parse_instant``,
    ``parse_amount``, ``Policy.rate``, ``to_micros``); any other row (a reject,
    a value that is not text) goes to ``check_row`` itself, so rejects keep
    their reasons and details. A unit test holds the two together on random
    rows.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._rates: dict[str, float | None] = {}

    def _rate(self, code: str) -> float | None:
        if code not in self._rates:
            self._rates[code] = self.policy.rate(code)
        return self._rates[code]

    def check(self, raw: Mapping[str, Any]) -> Checked:
        unsupported = unsupported_text(raw)
        if unsupported is not None:
            return unsupported
        event = None if raw.get(BEYOND_HEADER) else self._valid_text_row(raw)
        return event if event is not None else check_row(raw, self.policy)

    def check_all(self, raws: Sequence[Mapping[str, Any]]) -> list[Checked]:
        return [self.check(raw) for raw in raws]

    def _valid_text_row(self, raw: Mapping[str, Any]) -> OrderEvent | None:
        """The event of a row of text that passes every check, else None (ask ``check_row``)."""
        get = raw.get
        texts = []
        for name in _TEXT_FIELDS:  # the required fields first, then the optional ones
            value = get(name)
            if value is None:
                texts.append("")
            elif type(value) is str:
                texts.append(value.strip(" "))
            else:
                return None
        event_id, kind_text, order_id, customer_id, occurred, amount_text, currency, channel, region = texts
        if not (event_id and kind_text and order_id and customer_id and occurred):
            return None
        kind = _EVENT_TYPES.get(kind_text.lower())
        if kind is None:
            return None
        at_us = parse_instant(occurred)
        if at_us is None:
            return None
        currency = currency.upper()
        amount: float | None = None
        amount_us = 0
        if kind is not EventType.CANCELLED:
            if not (amount_text and currency):
                return None
            amount = parse_amount(amount_text)
            if amount is None or not amount > 0:
                return None
            rate = self._rate(currency)
            if rate is None or amount * rate >= MAX_AMOUNT:
                return None
            amount_us = to_micros(amount, rate)
        return OrderEvent(
            event_id, kind, order_id, customer_id, at_us, amount_us, channel, region, currency, amount
        )


#: The fields :meth:`RowChecker._valid_text_row` reads, in the order it unpacks them.
_TEXT_FIELDS = EVENT_FIELDS


def unsupported_text(raw: Mapping[str, Any]) -> tuple[StoreRejectReason, str] | None:
    """``unsupported_character`` naming the first canonical field whose text the store cannot
    keep, or None. Any field, also one the event type ignores (a cancel's amount): the
    store keeps the row as delivered (in the ledger or among the rejects)."""
    get = raw.get
    for name in EVENT_FIELDS:
        value = get(name)
        # inline first test: plain ASCII text without NUL (nearly every field) costs no call
        if type(value) is str and (NUL in value or not value.isascii()):
            detail = refusal(name, value)
            if detail is not None:
                return StoreRejectReason.UNSUPPORTED_CHARACTER, detail
    return None


def admit(
    raws: Sequence[RawEvent],
    policy: Policy,
    ledger_events: Mapping[str, RawEvent],
    ledger_orders: Mapping[str, PlacedOrder],
    checked: Sequence[Checked] | None = None,
    claims: Mapping[str, RawEvent] | None = None,
) -> Admission:
    """Decide every event of a batch, given the ledger rows it refers to.

    ``ledger_events``: stored raw rows by ``event_id`` (at least those of the
    batch's event ids); ``ledger_orders``: placed orders by ``order_id`` (at
    least those the batch names); ``checked``: ``check_row`` of every raw row,
    when the caller has it already; ``claims``: by ``event_id``, the first
    earlier copy rejected for its order (a reason in ``CLAIMING_REASONS``).
    """
    results: dict[int, EventResult] = {}
    copies: dict[str, list[tuple[int, OrderEvent]]] = {}
    if checked is None:
        checked = RowChecker(policy).check_all(raws)
    for position, (raw, outcome) in enumerate(zip(raws, checked, strict=True)):
        if isinstance(outcome, OrderEvent):
            copies.setdefault(outcome.event_id, []).append((position, outcome))
        else:
            reason, detail = outcome
            results[position] = _rejected(position, raw, reason, detail)

    candidates: list[tuple[int, OrderEvent]] = []
    redelivered: set[int] = set()  # candidates identical to a claim: checked again
    for event_id, group in copies.items():
        stored = ledger_events.get(event_id)
        if stored is not None:
            results.update(_against_ledger(group, stored, policy))
            continue
        claimed = _claimed_content((claims or {}).get(event_id), policy)
        if claimed is None:
            group.sort(key=lambda item: (content(item[1]), item[0]))
        else:  # a copy identical to the claim is its redelivery, checked again; others conflict
            group.sort(key=lambda item: (content(item[1]) != claimed, item[0]))
        kept_position, kept = group[0]
        reference = content(kept) if claimed is None else claimed
        if content(kept) == reference:
            candidates.append((kept_position, kept))
            if claimed is not None:
                redelivered.add(kept_position)
        else:
            results[kept_position] = _replay_of(kept_position, kept, identical=False)
        for position, event in group[1:]:
            results[position] = _replay_of(position, event, content(event) == reference)

    placed = dict(ledger_orders)
    candidates.sort(key=lambda item: (item[1].event_type != EventType.PLACED, *item[1].sort_key()))
    accepted: list[tuple[OrderEvent, RawEvent]] = []
    for position, event in candidates:
        problem = _order_problem(event, placed)
        if problem is None:
            if event.event_type == EventType.PLACED:
                placed[event.order_id] = PlacedOrder(event.customer_id, event.at_us, event.event_id)
            accepted.append((event, raws[position]))
            results[position] = EventResult(position, event.event_id, Status.ACCEPTED)
        elif position in redelivered:  # rejected once already: this copy is a replay of it
            detail = f"replay of an event already rejected ({problem[0]}: {problem[1]})"
            results[position] = EventResult(position, event.event_id, Status.DUPLICATE, None, detail)
        else:
            reason, detail = problem
            results[position] = EventResult(
                position, event.event_id, Status.REJECTED, str(reason), detail
            )
    accepted.sort(key=lambda item: item[0].sort_key())
    return Admission([results[p] for p in range(len(raws))], accepted)


def _rejected(position: int, raw: RawEvent, reason: Reason, detail: str) -> EventResult:
    event_id = (raw.get("event_id") or "").strip(" ") or None
    return EventResult(position, event_id, Status.REJECTED, str(reason), detail)


def _replay_of(position: int, event: OrderEvent, identical: bool) -> EventResult:
    if identical:
        return EventResult(position, event.event_id, Status.DUPLICATE)
    detail = f"event_id {event.event_id} was already used for different content"
    return EventResult(
        position, event.event_id, Status.REJECTED, str(RejectReason.CONFLICTING_REPLAY), detail
    )


def _against_ledger(
    group: list[tuple[int, OrderEvent]], stored_raw: RawEvent, policy: Policy
) -> dict[int, EventResult]:
    stored = check_row(stored_raw, policy)
    stored_content = content(stored) if isinstance(stored, OrderEvent) else None
    return {
        position: _replay_of(position, event, content(event) == stored_content)
        for position, event in group
    }


def _claimed_content(claim: RawEvent | None, policy: Policy) -> tuple[Any, ...] | None:
    """The content an earlier rejected copy claims its ``event_id`` with; none when there is
    no such copy or when it no longer passes the row checks (then it never took part)."""
    if claim is None:
        return None
    event = check_row(claim, policy)
    return content(event) if isinstance(event, OrderEvent) else None


def _order_problem(
    event: OrderEvent, placed: Mapping[str, PlacedOrder]
) -> tuple[RejectReason, str] | None:
    order = placed.get(event.order_id)
    if event.event_type == EventType.PLACED:
        if order is None:
            return None
        detail = f"order {event.order_id} was already placed by event {order.event_id}"
        return RejectReason.DUPLICATE_ORDER, detail
    if order is None or order.placed_at_us > event.at_us:
        detail = f"{event.event_type} event for order {event.order_id}, not placed at or before it"
        return RejectReason.UNKNOWN_ORDER, detail
    if order.customer_id != event.customer_id:
        detail = f"order {event.order_id} belongs to customer {order.customer_id}, not {event.customer_id}"
        return RejectReason.CUSTOMER_MISMATCH, detail
    return None
