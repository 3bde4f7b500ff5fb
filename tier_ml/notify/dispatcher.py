"""The outbox dispatcher: deliver due messages to their channels, at least once, in order.

One :func:`dispatch` call works in rounds until nothing is due at ``now_us``:
a round claims the due *head* of each customer (``outbox.due_heads``: the
oldest pending message; later ones wait behind it), sends each claimed
message to every channel that wants it and has not accepted it yet, and
records the outcome in one transaction per message:

- every channel accepted: ``delivered``;
- a channel refused the message itself (``permanent``) or the attempts are
  used up (``delivery.max_attempts``): ``dead`` with the last error;
- otherwise: due again after the exponential backoff (``backoff.backoff_us``,
  deterministic jitter; a ``Retry-After`` the receiver sent is respected).

The channels that did accept are recorded, so a retry after a partial failure
only goes to the ones that failed. No transaction is held while sending. A
delivered message makes its customer's next message the head of the next
round; a failed one holds the customer's later messages until its retry.
A round's messages belong to different customers, so they are sent in
parallel (``delivery.concurrency`` threads): a slow receiver does not make
the backlog wait in single file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine

from tier_ml.money import MICROS_PER_UNIT
from tier_ml.notify import outbox
from tier_ml.notify.backoff import backoff_us
from tier_ml.notify.config import ChannelsConfig
from tier_ml.notify.messages import MessageContext, OutboxMessage
from tier_ml.notify.senders import DeliveryError, LoyaltySender, Sender
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction


@dataclass
class DispatchResult:
    """What one dispatch did."""

    attempts: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    sends: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    def add(self, message: OutboxMessage, outcome: Outcome) -> None:
        self.attempts += 1
        self.sends += outcome.sends
        if outcome.status == outbox.DELIVERED:
            self.delivered += 1
        elif outcome.status == outbox.DEAD:
            self.dead += 1
        else:
            self.retrying += 1
        if outcome.error is not None:
            self.errors.append((message.id, outcome.error))

    def summary(self) -> str:
        return (
            f"{self.attempts:,} attempts: {self.delivered:,} delivered, "
            f"{self.retrying:,} to retry, {self.dead:,} dead-lettered"
        )


@dataclass(frozen=True)
class _Claimed:
    message: OutboxMessage
    done: frozenset[str]
    perks: dict[str, Any]


def dispatch(
    engine: Engine,
    config: ChannelsConfig,
    senders: Sequence[Sender],
    now_us: int,
    *,
    max_messages: int | None = None,
    on_message: Callable[[OutboxMessage, str], None] | None = None,
) -> DispatchResult:
    """Deliver every message due at ``now_us`` (at most ``max_messages`` attempts)."""
    settings = config.delivery
    lease_us = round(settings.lease_seconds * MICROS_PER_UNIT)
    result = DispatchResult()
    perks_by_version: dict[int, dict[str, dict[str, Any]]] = {}
    pool = ThreadPoolExecutor(settings.concurrency) if settings.concurrency > 1 else None
    try:
        while max_messages is None or result.attempts < max_messages:
            limit = settings.batch_size
            if max_messages is not None:
                limit = min(limit, max_messages - result.attempts)
            claimed = run_in_transaction(
                engine,
                lambda uow, limit=limit: _claim_round(
                    uow, now_us, limit, lease_us, perks_by_version
                ),
            )
            if not claimed:
                break  # nothing due (or every head is taken by another dispatcher)
            # one message per customer in a round: sent in parallel, each line stays in order
            outcomes = (
                pool.map(lambda item: _deliver(engine, config, senders, item, now_us), claimed)
                if pool is not None
                else (_deliver(engine, config, senders, item, now_us) for item in claimed)
            )
            for item, outcome in zip(claimed, outcomes, strict=True):
                result.add(item.message, outcome)
                if on_message is not None:
                    on_message(item.message, outcome.status)
    finally:
        if pool is not None:
            pool.shutdown()
    return result


def _claim_round(
    uow: UnitOfWork,
    now_us: int,
    limit: int,
    lease_us: int,
    perks_by_version: dict[int, dict[str, dict[str, Any]]],
) -> list[_Claimed]:
    """Claim the due heads, with the channels that already have them and their tier's perks."""
    connection = uow.repo.connection
    heads = outbox.due_heads(connection, now_us, limit)
    claimed = [m for m in heads if outbox.claim(connection, m.id, now_us, lease_us)]
    done = outbox.delivered_channels(connection, [m.id for m in claimed])
    out = []
    for message in claimed:
        version = message.payload.get("policy_version")
        tiers: dict[str, dict[str, Any]] = {}
        if isinstance(version, int):
            if version not in perks_by_version:
                perks_by_version[version] = outbox.policy_perks(connection, version)
            tiers = perks_by_version[version]
        attempted = replace(message, attempts=message.attempts + 1)
        perks = tiers.get(attempted.tier or "", {})
        out.append(_Claimed(attempted, frozenset(done[message.id]), perks))
    return out


@dataclass(frozen=True)
class Outcome:
    """What one attempt at one message came to."""

    status: str  # delivered | pending (to retry) | dead
    sends: int
    error: str | None = None


def _deliver(
    engine: Engine,
    config: ChannelsConfig,
    senders: Sequence[Sender],
    item: _Claimed,
    now_us: int,
) -> Outcome:
    """Send one claimed message to its remaining channels and record the outcome."""
    message = item.message
    context = MessageContext(
        perks=item.perks,
        program_name=config.program_name,
        bonus_points=_bonus(senders, message),
        sent_at_us=now_us,
    )
    accepted: list[tuple[str, str | None]] = []
    errors: list[DeliveryError] = []
    for sender in senders:
        if sender.name in item.done or not sender.wants(message):
            continue
        try:
            accepted.append((sender.name, sender.send(message, context)))
        except DeliveryError as exc:
            errors.append(
                DeliveryError(
                    f"{sender.name}: {exc}",
                    permanent=exc.permanent,
                    retry_after_s=exc.retry_after_s,
                )
            )
        except Exception as exc:  # a bug in a channel must not stop the worker; retried
            errors.append(DeliveryError(f"{sender.name}: {type(exc).__name__}: {exc}"))
    next_attempt = None if not errors else _next_attempt(config, message, errors, now_us)
    error = "; ".join(map(str, errors)) or None

    def record(uow: UnitOfWork) -> None:
        connection = uow.repo.connection
        for channel, detail in accepted:
            outbox.record_channel(connection, message.id, channel, now_us, detail)
        if error is None:
            outbox.mark_delivered(connection, message.id, now_us)
        else:
            outbox.mark_failed(connection, message.id, error, next_attempt)

    run_in_transaction(engine, record)
    sends = len(accepted) + len(errors)
    if error is None:
        return Outcome(outbox.DELIVERED, sends)
    return Outcome(outbox.DEAD if next_attempt is None else outbox.PENDING, sends, error)


def _next_attempt(
    config: ChannelsConfig, message: OutboxMessage, errors: Sequence[DeliveryError], now_us: int
) -> int | None:
    """When to try again after a failed attempt (None: dead-letter it)."""
    settings = config.delivery
    if any(e.permanent for e in errors) or message.attempts >= settings.max_attempts:
        return None
    delay = backoff_us(
        message.attempts,
        base_seconds=settings.backoff_seconds,
        max_seconds=settings.max_backoff_seconds,
        jitter=settings.jitter,
        key=message.idempotency_key,
        seed=settings.jitter_seed,
    )
    asked = max((e.retry_after_s or 0.0 for e in errors), default=0.0)
    return now_us + max(delay, round(asked * MICROS_PER_UNIT))


def _bonus(senders: Sequence[Sender], message: OutboxMessage) -> int:
    """The bonus points the loyalty sync grants for this message (0 without one)."""
    return sum(s.points_for(message) for s in senders if isinstance(s, LoyaltySender))
