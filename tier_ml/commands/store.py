"""The tier store commands: ``ingest``, ``sweep``, ``worker`` and the ``tiers``, ``policy``,
``audit`` and ``override`` groups.

Thin shells over ``tier_ml.store.service``: parse options, open the store
(``--db``, else ``TIER_ML_DATABASE_URL``, else ``sqlite:///tier_ml.sqlite``;
the schema is created or migrated on open), call one use case, print a short
summary. The wall clock is read here and only here; ``--now`` replaces it for
backfills and tests. User errors end with one line and exit code 2.

``tier_ml/cli.py`` calls :func:`register`; the helpers of the CLI are imported
lazily, so this module can be imported on its own.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console
    from sqlalchemy import Engine

    from tier_ml.policy import Policy

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Store URL: sqlite:///path or postgresql+psycopg://... "
        "Default: $TIER_ML_DATABASE_URL, else sqlite:///tier_ml.sqlite.",
    ),
]
NowOption = Annotated[
    str | None,
    typer.Option("--now", help="The store clock, ISO 8601 (default: the current time)."),
]
ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who does this, for the audit log (default: $USER).")
]
ExportOption = Annotated[
    Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")
]

tiers_app = typer.Typer(help="Customers' current tiers.", no_args_is_help=True)
policy_app = typer.Typer(help="Policy versions of the store.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log of tier changes.", no_args_is_help=True)
override_app = typer.Typer(help="Manual tier overrides.", no_args_is_help=True)
rejects_app = typer.Typer(help="Events the store rejected, with the reasons.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the store commands to the ``tier-ml`` app."""
    app.command("ingest")(ingest)
    app.command("sweep")(sweep)
    app.command("worker")(worker)
    app.add_typer(tiers_app, name="tiers")
    app.add_typer(policy_app, name="policy")
    app.add_typer(audit_app, name="audit")
    app.add_typer(override_app, name="override")
    app.add_typer(rejects_app, name="rejects")


# --- shared plumbing ---------------------------------------------------------------------------


def _console() -> Console:
    from tier_ml.cli import console

    return console


def _fail(message: str) -> typer.Exit:
    from tier_ml.cli import fail

    return fail(message)


def _now(text: str | None) -> int:
    from tier_ml.cli import parse_instant_or_exit

    return parse_instant_or_exit(text, "--now")


def _instant(text: str | None, option: str) -> int | None:
    from tier_ml.cli import parse_instant_or_exit

    return None if text is None else parse_instant_or_exit(text, option)


def _actor(actor: str | None) -> str:
    return actor or getpass.getuser()


@contextmanager
def _store_errors() -> Iterator[None]:
    """Errors a user can act on become one line and exit 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from tier_ml.events import EventReadError
    from tier_ml.policy import PolicyError
    from tier_ml.store.service import StoreError

    try:
        yield
    except (StoreError, PolicyError, EventReadError) as exc:
        raise _fail(str(exc)) from None
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise _fail(f"database error: {detail}") from None


def _open(db: str | None) -> Engine:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from tier_ml.settings import get_settings
    from tier_ml.store.service import open_store

    url = get_settings(database_url=db).database_url
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise _fail(
            f"--db {url!r} is not a database URL (sqlite:///path or postgresql+psycopg://...)"
        ) from None
    try:
        return open_store(url)
    except (SQLAlchemyError, ValueError, OSError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise _fail(f"cannot open the store {shown}: {detail}") from None


def _check_output(
    path: Path | None, option: str, others: dict[str, Path | None] | None = None
) -> None:
    from tier_ml.cli import output_path_or_exit

    output_path_or_exit(path, option, others)


def _policy_for_empty_store(path: Path | None) -> Policy | None:
    """The policy to start an empty store with: --policy, else $TIER_ML_POLICY, else None
    (the packaged default). A store that has a policy must be given the same one or none."""
    from tier_ml.cli import load_policy_or_exit
    from tier_ml.settings import get_settings

    path = path or get_settings().policy_path
    return None if path is None else load_policy_or_exit(path)


def _write_frame(frame: pd.DataFrame, out: Path | None, fmt: str) -> None:
    """CSV, JSON lines or Parquet to a file, or CSV / JSON lines to stdout when ``out`` is None or -.

    Callers check ``out`` before their work (``_check_output``)."""
    if fmt not in {"csv", "jsonl", "parquet"}:
        raise _fail(f"--format must be csv, jsonl or parquet, not {fmt!r}")
    to_stdout = out is None or str(out) == "-"
    if to_stdout and fmt == "parquet":
        raise _fail("Parquet needs --out FILE")
    if not to_stdout:
        assert out is not None
        out.parent.mkdir(parents=True, exist_ok=True)
    target: Any = sys.stdout if to_stdout else out
    if fmt == "csv":
        frame.to_csv(target, index=False)
    elif fmt == "jsonl":
        text = frame.to_json(orient="records", lines=True, force_ascii=False)
        if to_stdout:
            sys.stdout.write(text)
        else:
            Path(out).write_text(text, encoding="utf-8")  # type: ignore[arg-type]
    else:
        frame.to_parquet(out, index=False)


def _format_of(out: Path | None, given: str | None) -> str:
    """The export format: ``--format``, else by the file's suffix as ``classify`` decides it."""
    from tier_ml.batch import JSON_LINES_SUFFIXES, PARQUET_SUFFIXES

    if given:
        return given
    suffix = "" if out is None else out.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "jsonl" if suffix in JSON_LINES_SUFFIXES else "csv"


# --- ingest, sweep, worker ----------------------------------------------------------------------


def _read_rows(
    events: Path, channel: str | None, timezone: str, engine: Engine
) -> list[dict[str, Any]]:
    """Canonical raw rows from an events file, or from a channel's payload file via its adapter."""
    from tier_ml.events import frame_records, read_events

    if channel is None:
        return frame_records(read_events(events))
    from tier_ml.adapters import AdapterContext, UnknownChannelError, get_adapter
    from tier_ml.store.service import order_owners

    try:
        adapter = get_adapter(channel)
    except UnknownChannelError as exc:
        raise _fail(str(exc)) from None
    if not events.is_file():
        raise _fail(f"{events}: no such payload file")
    try:
        text = events.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _fail(f"{events}: not UTF-8 text, so not a {channel} payload file") from None
    payloads = _payloads(events, text, channel)
    owners: dict[str, str] = {}

    def customer_of_order(order_id: str) -> str | None:
        if order_id not in owners:
            owners.update(order_owners(engine, [order_id]))
        return owners.get(order_id)

    context = AdapterContext(customer_of_order=customer_of_order, timezone=timezone)
    rows: list[dict[str, Any]] = []
    for payload in payloads:
        try:
            converted = adapter(payload, context)
        except ValueError as exc:
            raise _fail(f"{events}: {exc}") from None
        except (TypeError, LookupError, AttributeError) as exc:
            # the payload's shape is the sender's: any error reading it is the file's, as in the API
            raise _fail(f"{events}: not a valid {channel} payload: {exc!r}") from None
        for row in converted:
            if row.get("event_type") == "placed" and row.get("order_id") and row.get("customer_id"):
                owners[str(row["order_id"])] = str(row["customer_id"])
        rows.extend(converted)
    return rows


def _payloads(path: Path, text: str, channel: str) -> list[Any]:
    """A payload file: CSV text for the POS export, else one JSON document, a list, or JSON lines."""
    if channel == "pos" or path.suffix.lower() == ".csv":
        return [text]
    try:
        if path.suffix.lower() in {".jsonl", ".ndjson"}:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"{path}: not valid JSON: {exc}") from None
    if isinstance(document, list) and channel != "app":
        return document
    return [document]


def ingest(
    events: Annotated[
        Path,
        typer.Argument(
            help="Events file (.csv, .jsonl, .parquet), or a payload file with --channel."
        ),
    ],
    now: NowOption = None,
    db: DbOption = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            "-p",
            help="Policy YAML for an empty store (default: $TIER_ML_POLICY, else the packaged "
            "policy). A store keeps its policy; change it with `tier-ml policy apply`.",
        ),
    ] = None,
    channel: Annotated[
        str | None,
        typer.Option("--channel", help="Read channel payloads: shopify, pos, marketplace or app."),
    ] = None,
    timezone: Annotated[
        str, typer.Option("--timezone", help="Zone of local times in POS exports without one.")
    ] = "UTC",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Events per transaction.")
    ] = 1_000,
) -> None:
    """Add order events to the store and update every touched customer's tier.

    Each batch is one transaction: the events enter the ledger (a repeated
    event_id is a duplicate and counts once; bad events are rejected with a
    reason), the touched customers are re-evaluated by the rules engine, and
    their tier state, audit rows and outbox messages are written together. An
    interrupted ingest can simply be run again.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tier_ml.store.cache import freeze_long_lived, thaw_long_lived
    from tier_ml.store.service import apply_events

    now_us = _now(now)
    rules = _policy_for_empty_store(policy)
    engine = _open(db)
    started = time.perf_counter()
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    customers = transitions = 0
    with _store_errors():
        rows = _read_rows(events, channel, timezone, engine)
        progress = Progress(
            TextColumn("ingesting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_console(),
            transient=True,
            disable=not _console().is_terminal,
        )
        with progress:
            try:
                task = progress.add_task("ingest", total=len(rows))
                for start in range(0, len(rows), batch_size):
                    batch = rows[start : start + batch_size]
                    result = apply_events(engine, batch, now_us, policy=rules)
                    for key, value in result.counts.items():
                        counts[key] = counts.get(key, 0) + value
                    for key, value in result.rejects_by_reason.items():
                        reasons[key] = reasons.get(key, 0) + value
                    customers += result.customers
                    transitions += result.transitions
                    progress.advance(task, len(batch))
                    freeze_long_lived()
            finally:
                thaw_long_lived()
    elapsed = time.perf_counter() - started
    rejected = ", ".join(f"{reason} {count:,}" for reason, count in sorted(reasons.items()))
    _console().print(
        f"{len(rows):,} events: {counts.get('accepted', 0):,} accepted, "
        f"{counts.get('duplicate', 0):,} duplicates, {counts.get('rejected', 0):,} rejected"
        + (f" ({rejected})" if rejected else "")
        + f"; {customers:,} customer evaluations, {transitions:,} tier changes audited"
        + f" in {elapsed:.1f}s ({len(rows) / max(elapsed, 1e-9):,.0f} events/s)",
        highlight=False,
    )


def sweep(now: NowOption = None, db: DbOption = None) -> None:
    """Re-evaluate the customers whose next tier change is due (one shot).

    Due: a pending order matures, an order leaves the window, a grace period
    ends, an override expires. `tier-ml worker` runs this in a loop.
    """
    from tier_ml.store.service import sweep as run_sweep

    now_us = _now(now)
    engine = _open(db)
    started = time.perf_counter()
    with _store_errors():
        result = run_sweep(engine, now_us)
    _console().print(
        f"swept {result.customers:,} due customers, {result.transitions:,} tier changes audited "
        f"in {time.perf_counter() - started:.1f}s",
        highlight=False,
    )


def worker(
    interval: Annotated[
        float, typer.Option("--interval", min=0.0, help="Seconds between sweeps.")
    ] = 5.0,
    db: DbOption = None,
    iterations: Annotated[
        int, typer.Option("--iterations", min=0, help="Stop after N sweeps (0: run until stopped).")
    ] = 0,
    channels: Annotated[
        Path | None,
        typer.Option(
            "--channels",
            help="Channels YAML: after each sweep, queue due downgrade warnings and deliver the "
            "outbox. Default: $TIER_ML_CHANNELS, else channels.yaml beside the policy; none: sweep only.",
        ),
    ] = None,
) -> None:
    """Sweep due customers with the real clock, every --interval seconds, until stopped (Ctrl-C);
    with a channels file, also deliver the outbox after each sweep."""
    from tier_ml.commands.notify import worker_notifier, worker_tick
    from tier_ml.store.service import sweep as run_sweep

    notifier = worker_notifier(channels)
    engine = _open(db)
    done = 0
    try:
        while iterations == 0 or done < iterations:
            now_us = _now(None)
            with _store_errors():
                result = run_sweep(engine, now_us)
            if result.customers:
                _console().print(
                    f"{time.strftime('%H:%M:%S')} swept {result.customers:,} customers, "
                    f"{result.transitions:,} tier changes",
                    highlight=False,
                )
            if notifier is not None:
                from tier_ml.commands.notify import _notify_errors

                with _notify_errors():
                    delivered = worker_tick(engine, now_us, *notifier)
                if delivered:
                    _console().print(f"{time.strftime('%H:%M:%S')} {delivered}", highlight=False)
            done += 1
            if iterations == 0 or done < iterations:
                time.sleep(interval)
    except KeyboardInterrupt:
        _console().print("worker stopped")


# --- tiers ---------------------------------------------------------------------------------------


@tiers_app.command("export")
def tiers_export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Tiers file to write (.csv, .parquet or .jsonl).")
    ] = Path("tiers.csv"),
    now: NowOption = None,
    db: DbOption = None,
) -> None:
    """Write every customer's tier with the columns of `tier-ml classify`.

    The tiers are those at --now: customers whose next change is due by then
    are re-evaluated in memory first (nothing is written; run `tier-ml sweep`
    to record those changes).
    """
    from tier_ml.store.service import export_tiers

    now_us = _now(now)
    _check_output(out, "--out")
    engine = _open(db)
    with _store_errors():
        frame = export_tiers(engine, now_us)
    from tier_ml.batch import write_tiers_frame

    write_tiers_frame(frame, out)  # the file `classify` writes, types included (money as decimal(18, 2))
    counts = frame["tier"].value_counts().to_dict()
    summary = ", ".join(f"{tier} {count:,}" for tier, count in counts.items())
    _console().print(f"wrote {len(frame):,} customers to {out} ({summary})", highlight=False)


# --- policy --------------------------------------------------------------------------------------


def _matrix_table(matrix: pd.DataFrame, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("old \\ new")
    for column in matrix.columns:
        table.add_column(str(column), justify="right")
    for old, row in matrix.iterrows():
        table.add_row(str(old), *(f"{int(v):,}" for v in row))
    return table


@policy_app.command("apply")
def policy_apply(
    path: Annotated[Path, typer.Argument(help="The new policy YAML.")],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Only show who would move (matrix, sample, revenue); write nothing."
        ),
    ] = False,
    grandfather_until: Annotated[
        str | None,
        typer.Option(
            "--grandfather-until",
            help="Grandfather current members: nobody drops below their current tier before "
            "this date (ISO 8601); from then on the new policy alone decides.",
        ),
    ] = None,
    note: Annotated[
        str | None,
        typer.Option("--note", help="Why, stored with the policy version and its audit rows."),
    ] = None,
    movers: Annotated[
        Path | None,
        typer.Option(
            "--movers",
            help="Write every customer the policy moves to this CSV (old and new tier, "
            "direction, grandfathered_until, spend, revenue).",
        ),
    ] = None,
    sample: Annotated[
        int, typer.Option("--sample", min=0, help="Movers to list (largest revenue first).")
    ] = 10,
    batch_engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="Where the ledger is replayed: duckdb (embedded, default) or spark (Apache "
            "Spark: SPARK_MASTER or local[*]; needs the spark extra of tier-ml and Java). "
            "Same answer, same writes.",
        ),
    ] = "duckdb",
    actor: ActorOption = None,
    now: NowOption = None,
    db: DbOption = None,
) -> None:
    """Store a new policy version and reclassify every customer under it.

    Every customer's history is replayed under the new policy (the batch path
    of the rules engine); each change of tier is audited as a reclassification
    with the new version and the actor. Before and after, it shows who moves:
    the transitions matrix (old tier x new tier counts), the movers with the
    most revenue, and the share of revenue that moves (--movers writes them
    all). --dry-run shows this without writing. --grandfather-until keeps
    current members at least at their tier until the date (audited).
    --engine spark replays the ledger on Spark (exported to Parquet first).
    """
    from tier_ml.cli import load_policy_or_exit
    from tier_ml.store.service import apply_policy

    _check_batch_engine(batch_engine)
    new_policy = load_policy_or_exit(path)
    _check_output(movers, "--movers")
    now_us = _now(now)
    until_us = _instant(grandfather_until, "--grandfather-until")
    engine = _open(db)
    if batch_engine == "spark":
        _start_spark()
    started = time.perf_counter()
    with _store_errors():
        result = apply_policy(
            engine,
            new_policy,
            _actor(actor),
            now_us,
            dry_run=dry_run,
            source_text=path.read_text(encoding="utf-8"),
            grandfather_until_us=until_us,
            note=note,
            sample=sample,
            batch_engine=batch_engine,
        )
    console = _console()
    preview = result.preview
    title = (
        "Transitions (dry run)" if dry_run else f"Transitions to policy version {result.version}"
    )
    if preview is not None and until_us is not None:
        console.print(_matrix_table(preview.matrix, title + ", new policy alone"))
        console.print(_matrix_table(result.matrix, title + ", with grandfathering"))
    else:
        console.print(_matrix_table(result.matrix, title))
    if preview is not None:
        _print_preview(preview, dry_run)
        if movers is not None:
            from tier_ml.store.grandfather import MOVER_COLUMNS

            movers.parent.mkdir(parents=True, exist_ok=True)
            preview.movers[list(MOVER_COLUMNS)].to_csv(movers, index=False)
            console.print(f"wrote {len(preview.movers):,} movers to {movers}", highlight=False)
    verb = "would change" if dry_run else "changed"
    console.print(
        f"{result.customers:,} customers, {result.changed:,} {verb} tier"
        + (
            ""
            if dry_run
            else f"; stored policy version {result.version}, rewrote {result.states_written:,} tier states"
        )
        + f" in {time.perf_counter() - started:.1f}s",
        highlight=False,
    )


def _check_batch_engine(name: str) -> None:
    from tier_ml.engines import check_engine

    try:
        check_engine(name)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _start_spark() -> None:
    """The Spark session (``SPARK_MASTER`` or local[*]); one line and exit 2 when it cannot start."""
    from tier_ml.engines import EngineUnavailableError
    from tier_ml.engines.spark import spark_session

    try:
        with _console().status("starting Spark ..."):
            spark_session()
    except EngineUnavailableError as exc:
        raise _fail(str(exc)) from None


def _print_preview(preview: Any, dry_run: bool) -> None:
    """Who moves: counts by direction, the revenue share, grandfathering, the sample."""
    from rich.table import Table

    from tier_ml.store.grandfather import MOVER_COLUMNS
    from tier_ml.store.service import iso_instant

    console = _console()
    moves = preview.movers_by_direction
    verb = "would move" if dry_run else "moved"
    console.print(
        f"{len(preview.movers):,} of {preview.customers:,} customers {verb} under the new policy "
        f"({moves['upgrade']:,} up, {moves['downgrade']:,} down); they hold "
        f"{100 * preview.revenue_share:.1f}% of the revenue the programme counts "
        f"({100 * preview.upgrade_revenue_us / max(preview.revenue_us, 1):.1f}% up, "
        f"{100 * preview.downgrade_revenue_us / max(preview.revenue_us, 1):.1f}% down)",
        highlight=False,
    )
    if preview.leaving:
        console.print(
            f"{preview.leaving:,} members {'would leave' if dry_run else 'left'} the programme: "
            "the new policy reads none of their orders (no fx rate for their currency)",
            highlight=False,
        )
    if preview.grandfather_until_us is not None:
        console.print(
            f"grandfathering until {iso_instant(preview.grandfather_until_us)}: "
            f"{preview.grandfathered:,} members covered, {preview.held:,} kept at their tier "
            "that the new policy alone would lower",
            highlight=False,
        )
    if preview.sample.empty:
        return
    table = Table(title=f"Movers, largest revenue first ({len(preview.sample)} shown)")
    for name in MOVER_COLUMNS:
        table.add_column(name, justify="right" if name.endswith(("spend", "revenue")) else "left")
    for row in preview.sample[list(MOVER_COLUMNS)].itertuples(index=False):
        table.add_row(
            *("" if v is None else (f"{v:,.2f}" if isinstance(v, float) else str(v)) for v in row)
        )
    console.print(table)


@policy_app.command("show")
def policy_show(db: DbOption = None) -> None:
    """Print the policy versions of the store and the active policy's rules."""
    import yaml
    from rich.table import Table

    from tier_ml.store.service import iso_instant, policy_versions

    engine = _open(db)
    with _store_errors():
        versions, active = policy_versions(engine)
    if active is None:
        raise _fail("the store has no policy yet: ingest events first")
    table = Table(title="Policy versions")
    for name in ("version", "fingerprint", "actor", "applied at"):
        table.add_column(name)
    for row in versions:
        table.add_row(
            str(row["version"]), row["fingerprint"], row["actor"], iso_instant(row["created_at_us"])
        )
    console = _console()
    console.print(table)
    console.print(f"active: version {active.version}", highlight=False)
    typer.echo(yaml.safe_dump(active.policy.rules_dict(), sort_keys=False))


# --- rejects -------------------------------------------------------------------------------------


@rejects_app.command("export")
def rejects_export(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Events received at or after this instant (ISO 8601)."),
    ] = None,
    reason: Annotated[
        list[str] | None,
        typer.Option("--reason", help="Only this reject reason (repeat for several)."),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv, jsonl or parquet (default: from --out, else csv)."),
    ] = None,
    out: ExportOption = None,
    db: DbOption = None,
) -> None:
    """Export the events the store rejected: when each arrived, the reason and its detail,
    then the nine event fields as delivered.

    JSON lines and Parquet keep every field exactly, so the file can be given to
    `tier-ml ingest` again once the cause is fixed: after `tier-ml policy apply` added a
    currency, `--reason unknown_currency --reason unknown_order` takes the orders in it
    with their refunds and cancels. CSV is for people: text a spreadsheet would run as a
    formula starts with a quote.
    """
    from tier_ml.spreadsheet import spreadsheet_safe
    from tier_ml.store.intake import REASON_CODES
    from tier_ml.store.service import export_rejects

    for name in reason or []:
        if name not in REASON_CODES:
            raise _fail(f"--reason {name!r} is not a reject reason; one of: {', '.join(REASON_CODES)}")
    since_us = _instant(since, "--since")
    fmt = _format_of(out, fmt)
    _check_output(out, "--out")
    engine = _open(db)
    with _store_errors():
        frame = export_rejects(engine, since_us, reason or ())
    _write_frame(spreadsheet_safe(frame) if fmt == "csv" else frame, out, fmt)
    if out is not None and str(out) != "-":
        counts = frame["reason"].value_counts().sort_index().to_dict()
        summary = ", ".join(f"{name} {count:,}" for name, count in counts.items())
        _console().print(f"wrote {len(frame):,} rejected events to {out} ({summary or 'none'})", highlight=False)


# --- audit ---------------------------------------------------------------------------------------


@audit_app.command("export")
def audit_export(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Rows recorded at or after this instant (ISO 8601)."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    out: ExportOption = None,
    db: DbOption = None,
) -> None:
    """Export the audit log (every tier change: customer, old -> new tier, reason, cause, policy
    version, actor, when it took effect and when it was recorded) for compliance review."""
    from tier_ml.spreadsheet import spreadsheet_safe
    from tier_ml.store.service import export_audit

    if fmt not in {"csv", "jsonl"}:
        raise _fail(f"--format must be csv or jsonl, not {fmt!r}")
    since_us = _instant(since, "--since")
    _check_output(out, "--out")
    engine = _open(db)
    with _store_errors():
        frame = export_audit(engine, since_us)
    if fmt == "csv":
        frame = spreadsheet_safe(frame)
    _write_frame(frame, out, fmt)
    if out is not None:
        _console().print(f"wrote {len(frame):,} audit rows to {out}", highlight=False)


# --- overrides ----------------------------------------------------------------------------------


@override_app.command("set")
def override_set(
    customer: Annotated[str, typer.Argument(help="Customer id.")],
    tier: Annotated[str, typer.Argument(help="The tier to give (a tier name of the policy, in any letter case).")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit log.")],
    actor: ActorOption = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Expiry (ISO 8601); the rules take over again then."),
    ] = None,
    now: NowOption = None,
    db: DbOption = None,
) -> None:
    """Give a customer a tier regardless of the rules, until --until or until cleared (audited)."""
    from tier_ml.store.service import iso_instant, set_override

    now_us = _now(now)
    until_us = _instant(until, "--until")
    engine = _open(db)
    with _store_errors():
        state = set_override(engine, customer, tier, _actor(actor), reason, now_us, until_us)
    expiry = f" until {iso_instant(until_us)}" if until_us is not None else " until cleared"
    _console().print(
        f"{customer} is {state.tier}{expiry} (rules tier: {state.rules_tier})", highlight=False
    )


@override_app.command("clear")
def override_clear(
    customer: Annotated[str, typer.Argument(help="Customer id.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit log.")],
    actor: ActorOption = None,
    now: NowOption = None,
    db: DbOption = None,
) -> None:
    """End a customer's override now: their rules tier applies again (audited)."""
    from tier_ml.store.service import clear_override

    now_us = _now(now)
    engine = _open(db)
    with _store_errors():
        state = clear_override(engine, customer, _actor(actor), reason, now_us)
    _console().print(f"{customer} is {state.tier} again (by the rules)", highlight=False)


@override_app.command("list")
def override_list(
    now: NowOption = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Include expired, replaced and cleared overrides.")
    ] = False,
    db: DbOption = None,
) -> None:
    """List overrides with their status (active, expired, cleared)."""
    from rich.table import Table

    from tier_ml.store.service import list_overrides

    now_us = _now(now)
    engine = _open(db)
    with _store_errors():
        frame = list_overrides(engine, now_us)
    if not show_all:
        frame = frame[frame["status"] == "active"]
    table = Table(title="Overrides" if show_all else "Active overrides")
    columns = ["customer_id", "tier", "status", "until", "actor", "reason", "set_at"]
    for name in columns:
        table.add_column(name)
    for row in frame[columns].itertuples(index=False):
        table.add_row(*("" if value is None else str(value) for value in row))
    _console().print(table)
