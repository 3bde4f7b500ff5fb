"""Notification commands: ``dispatch``, the ``outbox`` group and the ``campaigns`` group.

Thin shells over ``tier_ml.notify.service``. The channels file comes from
``--channels``, else ``TIER_ML_CHANNELS``, else ``channels.yaml`` beside the
policy file (``TIER_ML_POLICY``). The wall clock is read here; ``--now``
replaces it. User errors end with one line and exit code 2.

:func:`worker_tick` is what ``tier-ml worker`` runs after each sweep.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tier_ml.commands.store import (
    ActorOption,
    DbOption,
    NowOption,
    _actor,
    _check_output,
    _console,
    _fail,
    _format_of,
    _now,
    _open,
    _store_errors,
    _write_frame,
)

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy import Engine

    from tier_ml.notify.config import ChannelsConfig

ChannelsOption = Annotated[
    Path | None,
    typer.Option(
        "--channels",
        help="Channels YAML (webhooks, email, loyalty sync, campaigns). Default: "
        "$TIER_ML_CHANNELS, else channels.yaml beside the policy file.",
    ),
]

outbox_app = typer.Typer(
    help="The outbox: messages to deliver, delivered, and dead letters.", no_args_is_help=True
)
campaigns_app = typer.Typer(help="Retention campaigns for at-risk customers.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the notification commands to the ``tier-ml`` app."""
    app.command("dispatch")(dispatch)
    app.add_typer(outbox_app, name="outbox")
    app.add_typer(campaigns_app, name="campaigns")


# --- shared plumbing ---------------------------------------------------------------------------


@contextmanager
def _notify_errors() -> Iterator[None]:
    """Channel, scores and request errors become one line and exit 2 (store errors too)."""
    from tier_ml.notify.campaigns import ScoresError
    from tier_ml.notify.config import ChannelsError
    from tier_ml.notify.service import NotifyError

    with _store_errors():
        try:
            yield
        except (ChannelsError, ScoresError, NotifyError) as exc:
            raise _fail(str(exc)) from None


def channels_file(given: Path | None) -> Path | None:
    """The channels file to use (None: none configured)."""
    from tier_ml.notify.config import find_channels_file
    from tier_ml.settings import get_settings

    settings = get_settings()
    return find_channels_file(given, settings.channels_path, settings.policy_path)


def load_channels_or_exit(given: Path | None, *, required: bool = True) -> ChannelsConfig:
    from tier_ml.notify.config import ChannelsConfig, ChannelsError, load_channels

    path = channels_file(given)
    if path is None:
        if required:
            raise _fail(
                "no channels file: pass --channels channels.yaml or set TIER_ML_CHANNELS "
                "(see tier_ml/data/channels.example.yaml)"
            )
        return ChannelsConfig()
    try:
        config = load_channels(path)
    except ChannelsError as exc:
        raise _fail(str(exc)) from None
    if required and not config.channel_names():
        # delivering to no channel marks every due message delivered: refuse, lose nothing
        raise _fail(
            f"{path} configures no channel (webhooks, email or loyalty), so nothing could be "
            "delivered; add one (see tier_ml/data/channels.example.yaml)"
        )
    return config


def worker_tick(engine: Engine, now_us: int, config: ChannelsConfig, senders: list[Any]) -> str:
    """One worker round after the sweep: queue due warnings, deliver what is due; a summary."""
    from tier_ml.notify.service import dispatch_due

    queued, delivered = dispatch_due(engine, config, now_us, senders=senders)
    if not queued.queued and not queued.approaching_upgrade and not delivered.attempts:
        return ""
    return (
        f"{queued.queued:,} downgrade warnings, {len(queued.approaching_upgrade):,} "
        f"approaching-upgrade milestones queued; {delivered.summary()}"
    )


def worker_notifier(channels: Path | None) -> tuple[ChannelsConfig, list[Any]] | None:
    """The channels and senders the worker delivers with (None: no channels file configured)."""
    from tier_ml.notify.config import ChannelsError
    from tier_ml.notify.senders import build_senders

    if channels_file(channels) is None:
        return None
    config = load_channels_or_exit(channels)
    try:
        return config, build_senders(config)
    except ChannelsError as exc:
        raise _fail(str(exc)) from None


# --- dispatch ----------------------------------------------------------------------------------


def dispatch(
    now: NowOption = None,
    db: DbOption = None,
    channels: ChannelsOption = None,
    max_messages: Annotated[
        int | None,
        typer.Option("--max", min=1, help="Stop after this many delivery attempts."),
    ] = None,
    warnings: Annotated[
        bool,
        typer.Option(
            "--warnings/--no-warnings",
            help="First queue the downgrade warnings that are due (downgrade_warning.days_before).",
        ),
    ] = True,
) -> None:
    """Deliver every outbox message that is due, once (the worker does this in a loop).

    At least once and in order per customer: a failed message is retried with
    exponential backoff and holds back that customer's later messages; after
    delivery.max_attempts it becomes a dead letter (tier-ml outbox list --status dead).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tier_ml.notify.senders import build_senders
    from tier_ml.notify.service import dispatch_due, outbox_counts

    now_us = _now(now)
    config = load_channels_or_exit(channels)
    engine = _open(db)
    started = time.perf_counter()
    with _notify_errors():
        senders = build_senders(config)
        pending = outbox_counts(engine)["pending"]
        with Progress(
            TextColumn("delivering"),
            BarColumn(),
            MofNCompleteColumn(),
            console=_console(),
            transient=True,
            disable=pending < 50 or not _console().is_terminal,
        ) as progress:
            task = progress.add_task("deliver", total=pending)
            queued, result = dispatch_due(
                engine,
                config,
                now_us,
                senders=senders,
                warnings=warnings,
                max_messages=max_messages,
                on_message=lambda _m, _o: progress.advance(task),
            )
    console = _console()
    if warnings:
        console.print(
            f"queued {queued.queued:,} downgrade warnings, "
            f"{len(queued.approaching_upgrade):,} approaching-upgrade milestones",
            highlight=False,
        )
    console.print(f"{result.summary()} in {time.perf_counter() - started:.1f}s", highlight=False)
    for message_id, error in result.errors[:5]:
        console.print(f"  #{message_id}: {error}", highlight=False, soft_wrap=True)
    if result.dead:
        console.print(
            "see the dead letters with: tier-ml outbox list --status dead", highlight=False
        )


# --- outbox --------------------------------------------------------------------------------------


@outbox_app.command("list")
def outbox_list(
    status: Annotated[
        str | None,
        typer.Option("--status", help="pending, delivered or dead (default: all)."),
    ] = None,
    customer: Annotated[
        str | None, typer.Option("--customer", help="One customer's messages.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="welcome, tier_upgraded, ... (default: all).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")] = 50,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write CSV / JSON lines / Parquet instead of a table."),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv, jsonl or parquet (with --out or for stdout)."),
    ] = None,
    db: DbOption = None,
) -> None:
    """List outbox messages, oldest first, with their delivery state and last error."""
    import pandas as pd

    from tier_ml.notify.service import outbox_counts
    from tier_ml.notify.service import outbox_list as list_entries

    _check_output(out, "--out")
    engine = _open(db)
    with _notify_errors():
        entries = list_entries(engine, status, customer_id=customer, kind=kind, limit=limit)
        counts = outbox_counts(engine)
    if out is not None or fmt is not None:
        frame = pd.DataFrame(entries)
        if len(frame):
            frame["payload"] = frame["payload"].map(_json)
            frame["channels_delivered"] = frame["channels_delivered"].map(",".join)
        _write_frame(frame, out, _format_of(out, fmt))
        return
    _console().print(_outbox_table(entries))
    _console().print(
        ", ".join(f"{name} {count:,}" for name, count in counts.items()), highlight=False
    )


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def _outbox_table(entries: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="Outbox")
    for name in (
        "id",
        "kind",
        "customer",
        "status",
        "attempts",
        "next attempt",
        "delivered",
        "last error",
    ):
        table.add_column(name, overflow="fold")
    for e in entries:
        table.add_row(
            str(e["id"]),
            e["kind"],
            e["customer_id"],
            e["status"],
            str(e["attempts"]),
            e["next_attempt_at"] or "",
            e["delivered_at"] or "",
            (e["last_error"] or "")[:120],
        )
    return table


@outbox_app.command("retry")
def outbox_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Outbox ids to retry now.")] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Retry every dead letter.")] = False,
    now: NowOption = None,
    db: DbOption = None,
) -> None:
    """Put dead letters (or messages waiting for a retry) back in line, due now, with a fresh
    attempt budget. The next dispatch or worker round delivers them."""
    from tier_ml.notify.service import outbox_retry as retry

    if not ids and not all_dead:
        raise _fail("name the outbox ids to retry, or pass --all-dead")
    if ids and all_dead:
        raise _fail("give outbox ids or --all-dead, not both")
    now_us = None if now is None else _now(now)  # None: due at once, whatever the clock
    engine = _open(db)
    with _notify_errors():
        result = retry(engine, None if all_dead else ids, now_us)
    console = _console()
    console.print(f"retrying {len(result.retried):,} messages", highlight=False)
    if result.already_delivered:
        console.print(
            f"already delivered (left alone): {result.already_delivered}", highlight=False
        )
    if result.not_found:
        raise _fail(f"no outbox messages with ids {result.not_found}")


# --- campaigns ----------------------------------------------------------------------------------


@campaigns_app.command("run")
def campaigns_run(
    now: NowOption = None,
    campaign: Annotated[
        str | None,
        typer.Option(
            "--campaign", help="The campaign in the channels file (default: the only one)."
        ),
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option(
            "--scores",
            help="Scores file (CSV/Parquet/JSON lines: customer_id, tier, churn_probability, "
            "model_version) instead of scoring with the champion model.",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", min=0.0, max=1.0, help="Override: churn probability threshold."
        ),
    ] = None,
    cooldown_days: Annotated[
        int | None,
        typer.Option("--cooldown-days", min=0, help="Override: no repeat within N days."),
    ] = None,
    control_share: Annotated[
        float | None,
        typer.Option("--control-share", min=0.0, max=0.99, help="Override: held-out share."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Override: control-group seed.")
    ] = None,
    model_alias: Annotated[
        str, typer.Option("--model-alias", help="Registry alias of the churn model to score with.")
    ] = "champion",
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show who would be selected; record and send nothing.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write every scored customer's status here (CSV/Parquet/JSONL)."
        ),
    ] = None,
    channels: ChannelsOption = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Score Gold customers, pick those above the threshold, hold out a control group, queue
    retention_offer messages for the rest and record the run.

    Customers selected in the last --cooldown-days (treated or control) are skipped.
    """
    from tier_ml.notify.service import run_campaign

    now_us = _now(now)
    _check_output(out, "--out", {"--scores": scores})
    config = load_channels_or_exit(channels, required=False)
    with _notify_errors():
        name, settings = config.campaign(campaign)
    overrides = {
        "threshold": threshold,
        "cooldown_days": cooldown_days,
        "control_share": control_share,
        "seed": seed,
    }
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    engine = _open(db)
    with _notify_errors():
        if scores is not None:
            frame, source = _read_scores(scores), f"file:{scores.name}"
        else:
            frame, source = _score_with_model(
                engine, now_us, settings.tiers, model_alias, tracking_uri
            )
        result = run_campaign(
            engine,
            frame,
            name,
            settings,
            now_us,
            actor=_actor(actor),
            source=source,
            dry_run=dry_run,
        )
    counts = result.counts()
    console = _console()
    head = "dry run of" if dry_run else f"run {result.run_id} of"
    console.print(
        f"{head} campaign {name}: {len(result.selection):,} scored; "
        + ", ".join(f"{status.replace('_', ' ')} {count:,}" for status, count in counts.items()),
        highlight=False,
    )
    if not dry_run and counts["treated"]:
        console.print(
            f"queued {counts['treated']:,} retention_offer messages; deliver with tier-ml dispatch",
            highlight=False,
        )
    if out is not None:
        _write_frame(result.selection, out, _format_of(out, None))


def _read_scores(path: Path) -> pd.DataFrame:
    import pandas as pd

    from tier_ml.notify.campaigns import ScoresError

    if not path.is_file():
        raise ScoresError(f"scores file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".jsonl", ".ndjson", ".json"}:
            return pd.read_json(path, lines=True, dtype={"customer_id": str, "model_version": str})
        return pd.read_csv(path, dtype={"customer_id": str, "model_version": str, "tier": str})
    except (ValueError, OSError) as exc:
        raise ScoresError(f"cannot read scores file {path}: {exc}") from None


def _score_with_model(
    engine: Engine, now_us: int, tiers: tuple[str, ...], alias: str, tracking_uri: str | None
) -> tuple[pd.DataFrame, str]:
    """Scores, by the registered churn model, of the customers the store has in ``tiers``
    (features are per customer, so scoring only them gives the same scores)."""
    import pandas as pd

    from tier_ml.notify.campaigns import SCORE_COLUMNS
    from tier_ml.notify.service import NotifyError, campaign_candidates
    from tier_ml.store.service import active_policy, export_ledger

    try:
        from training.scoring import score
    except ImportError:
        raise NotifyError(
            "scoring with the registered model is not available in this installation "
            "(training.scoring); pass --scores scores.csv (tier-ml score writes one)"
        ) from None
    active = active_policy(engine)
    if active is None:
        raise NotifyError("the store has no customers yet: ingest events first")
    candidates = campaign_candidates(engine, tiers)
    if not candidates:
        return pd.DataFrame(columns=list(SCORE_COLUMNS)), f"model:{alias}"
    events = export_ledger(engine)
    events = events[events["customer_id"].isin(candidates)].reset_index(drop=True)
    as_of = datetime.fromtimestamp(now_us / 1_000_000, tz=UTC)
    try:
        frame = score(events, active.policy, as_of, model_alias=alias, tracking_uri=tracking_uri)
    except Exception as exc:  # a missing model / registry is the usual cause: say so in one line
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotifyError(f"scoring with model alias {alias!r} failed: {detail}") from None
    return frame, f"model:{alias}"


@campaigns_app.command("list")
def campaigns_list(
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many runs.")] = 20,
    db: DbOption = None,
) -> None:
    """Recorded campaign runs, newest first."""
    from rich.table import Table

    from tier_ml.notify.service import campaign_runs

    engine = _open(db)
    with _notify_errors():
        runs = campaign_runs(engine, campaign, limit)
    table = Table(title="Campaign runs")
    columns = (
        "id",
        "campaign",
        "run_at",
        "model_version",
        "threshold",
        "treated",
        "control",
        "cooling_down",
    )
    for name in columns:
        table.add_column(name.replace("_", " "), no_wrap=name in {"campaign", "run_at"})
    for run in runs:
        table.add_row(*(str(run[c]) if run[c] is not None else "" for c in columns))
    _console().print(table)


@campaigns_app.command("show")
def campaigns_show(
    run_id: Annotated[int, typer.Argument(help="The run id (tier-ml campaigns list).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output file (default: CSV to stdout).")
    ] = None,
    db: DbOption = None,
) -> None:
    """The customers a run selected: score, model version, control flag, outbox id."""
    from tier_ml.notify.service import campaign_selections

    _check_output(out, "--out")
    engine = _open(db)
    with _notify_errors():
        frame = campaign_selections(engine, run_id)
    if frame.empty:
        raise _fail(f"campaign run {run_id} selected nobody or does not exist")
    _write_frame(frame, out, _format_of(out, None))
