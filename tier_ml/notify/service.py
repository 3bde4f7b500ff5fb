"""Use cases of notifications, for the CLI and the API: one function, one transaction (or a loop
of them for delivery), time passed in.

- :func:`dispatch_due`: queue due downgrade warnings (or ``will_downgrade``) and
  ``approaching_upgrade`` milestones, then deliver everything due;
- :func:`outbox_list` / :func:`outbox_counts` / :func:`outbox_retry`: the outbox and its
  dead letters (JSON-ready dicts, so an API handler returns them as they are);
- :func:`run_campaign`: select and record a retention-campaign run from a scores frame;
- :func:`campaign_runs` / :func:`campaign_selections`: what past runs did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Engine, text

from tier_ml.notify import campaigns, outbox
from tier_ml.notify.approaching_upgrade import queue_approaching_upgrades
from tier_ml.notify.config import EVENT_KINDS, MODEL_EVENT_KINDS, CampaignSettings, ChannelsConfig
from tier_ml.notify.dispatcher import DispatchResult, dispatch
from tier_ml.notify.downgrade_warnings import WarningsResult, queue_downgrade_warnings
from tier_ml.notify.messages import OutboxMessage
from tier_ml.notify.outbox import RetryResult
from tier_ml.notify.senders import Sender, build_senders
from tier_ml.store.unit_of_work import UnitOfWork, run_in_transaction

#: PostgreSQL advisory lock key that serializes campaign runs (cooldowns must not race).
CAMPAIGN_LOCK_KEY = 74_311_903


class NotifyError(ValueError):
    """A request about notifications that cannot be done, with the reason."""


def dispatch_due(
    engine: Engine,
    config: ChannelsConfig,
    now_us: int,
    *,
    senders: Sequence[Sender] | None = None,
    warnings: bool = True,
    max_messages: int | None = None,
    on_message: Callable[[OutboxMessage, str], None] | None = None,
) -> tuple[WarningsResult, DispatchResult]:
    """Queue the warnings and milestones due at ``now_us`` (unless ``warnings`` is off), then
    deliver."""
    queued = WarningsResult()
    if warnings:
        kind, days_before = config.warning_rule()
        queued = queue_downgrade_warnings(engine, days_before, now_us, kind)
        approaching = config.milestones.approaching_upgrade
        if approaching is not None:
            upgrades = queue_approaching_upgrades(engine, approaching, now_us)
            queued.approaching_upgrade = upgrades.customers
    chosen = list(senders) if senders is not None else build_senders(config)
    delivered = dispatch(
        engine, config, chosen, now_us, max_messages=max_messages, on_message=on_message
    )
    return queued, delivered


def outbox_list(
    engine: Engine,
    status: str | None = None,
    *,
    customer_id: str | None = None,
    kind: str | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> list[dict[str, Any]]:
    """Outbox entries, oldest first (``status``: pending, delivered or dead; ``kind``: one of
    the message kinds, so a misspelt one is an error rather than an empty list)."""
    if status is not None and status not in outbox.STATUSES:
        raise NotifyError(f"status must be one of {list(outbox.STATUSES)}, not {status!r}")
    known = EVENT_KINDS + MODEL_EVENT_KINDS
    if kind is not None and kind not in known:
        raise NotifyError(f"unknown kind {kind!r}; known: {', '.join(known)}")
    if limit < 1:
        raise NotifyError(f"limit must be at least 1, not {limit}")
    return run_in_transaction(
        engine,
        lambda uow: outbox.list_rows(
            uow.repo.connection,
            status=status,
            customer_id=customer_id,
            kind=kind,
            limit=limit,
            after_id=after_id,
        ),
        read_only=True,
    )


def outbox_counts(engine: Engine) -> dict[str, int]:
    """Messages per status."""
    return run_in_transaction(
        engine, lambda uow: outbox.status_counts(uow.repo.connection), read_only=True
    )


def outbox_retry(
    engine: Engine, ids: Sequence[int] | None, now_us: int | None = None
) -> RetryResult:
    """Put the given dead (or waiting) messages back in line with a fresh attempt budget, due
    from ``now_us`` (None: at once); ``ids=None``: every dead letter."""

    def work(uow: UnitOfWork) -> RetryResult:
        connection = uow.repo.connection
        chosen = outbox.dead_ids(connection) if ids is None else list(ids)
        return outbox.retry_rows(connection, chosen, now_us)

    return run_in_transaction(engine, work)


@dataclass
class CampaignRunResult:
    """A campaign run: its id (None for a dry run) and every scored customer's status."""

    run_id: int | None
    campaign: str
    selection: pd.DataFrame

    def counts(self) -> dict[str, int]:
        counts = self.selection["status"].value_counts()
        order = (
            campaigns.TREATED,
            campaigns.CONTROL,
            campaigns.COOLING_DOWN,
            campaigns.BELOW_THRESHOLD,
            campaigns.NOT_TARGETED,
        )
        return {status: int(counts.get(status, 0)) for status in order}


def run_campaign(
    engine: Engine,
    scores: pd.DataFrame,
    campaign: str,
    settings: CampaignSettings,
    now_us: int,
    *,
    actor: str,
    source: str | None = None,
    dry_run: bool = False,
) -> CampaignRunResult:
    """Select customers from ``scores`` and (unless ``dry_run``) record the run and queue offers.

    The store's effective tier replaces the scores' ``tier`` for customers the
    store knows (an override or a change since scoring counts); cooldowns are
    read and written in the same transaction, so two runs cannot both pick a
    customer.
    """
    normalized = campaigns.normalize_scores(scores)

    def work(uow: UnitOfWork) -> CampaignRunResult:
        connection = uow.repo.connection
        if not dry_run and connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": CAMPAIGN_LOCK_KEY}
            )
        known = campaigns.store_tiers(connection, normalized["customer_id"].tolist())
        frame = normalized.copy()
        frame["tier"] = [
            known.get(c, t) if c in known else t
            for c, t in zip(frame["customer_id"], frame["tier"], strict=True)
        ]
        selection = campaigns.select_for_campaign(
            frame, settings, campaigns.last_selected(connection, campaign), now_us
        )
        if dry_run:
            return CampaignRunResult(None, campaign, selection)
        run_id = campaigns.record_campaign_run(
            connection,
            campaign,
            settings,
            selection,
            now_us,
            actor=actor,
            source=source,
            policy_version=outbox.active_policy_version(connection),
        )
        return CampaignRunResult(run_id, campaign, selection)

    return run_in_transaction(engine, work, read_only=dry_run)


def campaign_candidates(engine: Engine, tiers: Sequence[str]) -> list[str]:
    """Customers whose current tier in the store is one of ``tiers`` (who a campaign scores)."""
    return run_in_transaction(
        engine,
        lambda uow: campaigns.customers_in_tiers(uow.repo.connection, list(tiers)),
        read_only=True,
    )


def campaign_runs(
    engine: Engine, campaign: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    return run_in_transaction(
        engine, lambda uow: campaigns.runs(uow.repo.connection, campaign, limit), read_only=True
    )


def campaign_selections(engine: Engine, run_id: int) -> pd.DataFrame:
    return run_in_transaction(
        engine, lambda uow: campaigns.selections(uow.repo.connection, run_id), read_only=True
    )
