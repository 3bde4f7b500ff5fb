"""The `tier-ml` command line: a thin shell over the domain and the other rooms.

Each command parses its options, calls one service function, and prints a short
summary. Errors a user can fix (a missing file, a bad policy) end with a one-line
message and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tier_ml.batch import (
    PIPELINE_STAGES,
    BatchSummary,
    classify_reference_to_files,
    classify_to_files,
)
from tier_ml.events import EventReadError, parse_instant
from tier_ml.money import instant_to_micros, micros_to_instant
from tier_ml.policy import Policy, PolicyError, load_policy

app = typer.Typer(
    name="tier-ml",
    help="Customer tiers from buffered spend, and models that predict tier changes and Gold churn.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the exit to raise."""
    console.print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False
    )
    return typer.Exit(code)


PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy", "-p", help="Policy YAML (TIER_RULES.md format). Default: the packaged policy."
    ),
]


def load_policy_or_exit(path: Path | None) -> Policy:
    """The policy at ``path`` (packaged default when None), or a one-line error and exit 2."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise fail(str(exc)) from None


def parse_instant_or_exit(text: str | None, option: str) -> int:
    """An ISO 8601 instant as epoch microseconds; the current time when ``text`` is None."""
    if text is None:
        return instant_to_micros(datetime.now(UTC))
    parsed = parse_instant(text)
    if parsed is None:
        raise fail(
            f"{option} {text!r} is not an ISO 8601 time (e.g. 2025-06-30 or 2025-06-30T12:00:00Z)"
        )
    return parsed


def output_path_or_exit(
    path: Path | None, option: str, others: dict[str, Path | None] | None = None
) -> None:
    """Refuse, before any work, an output ``path`` that cannot be written (a folder, a place
    the user may not write to) or that is the same file as one of ``others`` (the command's
    inputs or other outputs, which writing it would destroy). None or "-" (stdout) pass."""
    if path is None or str(path) == "-":
        return
    for name, other in (others or {}).items():
        if other is not None and path.absolute().resolve() == other.absolute().resolve():
            raise fail(f"{option} {path} is the same file as {name}; write to another file")
    if path.is_dir():
        raise fail(f"{option} {path} is a folder; give a file name")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise fail(f"{option} {path}: cannot write in {folder}")
    if folder != path.absolute().parent:
        return  # the command creates the missing folders below a writable one
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise fail(f"{option} {path}: cannot write this file ({exc.strerror or exc})") from None
    if not existed:
        path.unlink(missing_ok=True)


def tier_table(counts: dict[str, int], title: str) -> Table:
    """Customers per tier with their share, highest tier first."""
    total = sum(counts.values()) or 1
    table = Table(title=title, show_footer=True)
    table.add_column("tier", footer="total")
    table.add_column("customers", justify="right", footer=f"{sum(counts.values()):,}")
    table.add_column("share", justify="right", footer="100.0%")
    for name, count in reversed(list(counts.items())):
        table.add_row(name, f"{count:,}", f"{100 * count / total:.1f}%")
    return table


def stage_progress(stages: list[str], description: str) -> tuple[Progress, Callable[[str], None]]:
    """A progress bar over named pipeline stages, and the callback that advances it."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a log or a pipe gets no bar (and no stray blank line)
    )
    task = progress.add_task(description, total=len(stages))

    def advance(stage: str) -> None:
        progress.update(task, advance=1, description=f"{description}: {stage} done")

    return progress, advance


# Commands are added below, one function each. Keep each handler thin.


@app.command()
def classify(
    events: Annotated[
        Path, typer.Option("--events", "-e", help="Events file: .csv, .jsonl or .parquet.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Tiers file to write: .csv, .parquet or .jsonl (CSV for any other name).")
    ] = Path("tiers.csv"),
    policy: PolicyOption = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Classify as of this instant (ISO 8601; a date alone is its start, 00:00 UTC, "
            "so that day's events are not yet counted). Default: now.",
        ),
    ] = None,
    rejects: Annotated[
        Path | None,
        typer.Option("--rejects", help="Write rejected rows with their reasons here (.csv, .parquet or .jsonl)."),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="duckdb (vectorized, default), spark (Apache Spark: SPARK_MASTER or local[*]; "
            "needs the spark extra of tier-ml and Java) or reference (plain Python, slow).",
        ),
    ] = "duckdb",
) -> None:
    """Assign every customer's tier as of an instant, from an events file.

    Writes one row per customer with at least one order: customer_id, tier,
    qualifying_spend, pending_spend, then eligible_tier, tier_since,
    qualifying_orders, next_tier, spend_to_next_tier, region, last_order_at,
    grace_ends_at, next_change_at and tier_changes. Bad rows never stop the
    run: they are counted by reason (and written with --rejects).
    """
    rules = load_policy_or_exit(policy)
    as_of_us = parse_instant_or_exit(as_of, "--as-of")
    if engine not in {"duckdb", "spark", "reference"}:
        raise fail(f"--engine must be duckdb, spark or reference, not {engine!r}")
    output_path_or_exit(out, "--out", {"--events": events})
    output_path_or_exit(rejects, "--rejects", {"--events": events, "--out": out})
    started = time.perf_counter()
    try:
        if engine == "spark":
            summary = _classify_on_spark(rules, events, as_of_us, out, rejects)
        elif engine == "reference":
            summary = classify_reference_to_files(rules, events, as_of_us, out, rejects)
        else:
            progress, advance = stage_progress(list(PIPELINE_STAGES), "classifying")
            with progress:
                summary = classify_to_files(rules, events, as_of_us, out, rejects, on_stage=advance)
    except EventReadError as exc:
        raise fail(str(exc)) from None
    elapsed = time.perf_counter() - started
    console.print(
        tier_table(
            summary.customers_by_tier,
            f"Tiers as of {micros_to_instant(as_of_us):%Y-%m-%d %H:%M} UTC",
        )
    )
    rejected = ", ".join(
        f"{reason} {count:,}" for reason, count in summary.rejects_by_reason.items()
    )
    console.print(
        f"{summary.rows:,} rows read, {summary.rejects:,} rejected"
        + (f" ({rejected})" if rejected else "")
        + f", {summary.replays:,} replays ignored; wrote {out} in {elapsed:.1f}s",
        highlight=False,
    )


def _classify_on_spark(
    rules: Policy, events: Path, as_of_us: int, out: Path, rejects: Path | None
) -> BatchSummary:
    """``classify --engine spark``: a one-line error when pyspark or Java is missing."""
    from tier_ml.engines import EngineUnavailableError
    from tier_ml.engines.spark import SPARK_STAGES, classify_spark_to_files, spark_session

    try:
        with console.status("starting Spark ..."):
            spark = spark_session()
    except EngineUnavailableError as exc:
        raise fail(str(exc)) from None
    progress, advance = stage_progress(list(SPARK_STAGES), "classifying on Spark")
    with progress:
        return classify_spark_to_files(
            rules, events, as_of_us, out, rejects, spark=spark, on_stage=advance
        )


# --- simulate and import: data in ------------------------------------------------------------


@app.command("simulate")
def simulate_command(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Events file to write: .parquet (typed, fast) or .csv."),
    ] = Path("events.parquet"),
    customers: Annotated[
        int, typer.Option("--customers", "-n", min=1, help="Customers, before --scale.")
    ] = 10_000,
    start: Annotated[str, typer.Option("--start", help="First day (UTC), YYYY-MM-DD.")] = (
        "2024-01-01"
    ),
    end: Annotated[
        str, typer.Option("--end", help="Last day (UTC), YYYY-MM-DD, inclusive.")
    ] = "2025-12-31",
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Random seed: same seed and options, same bytes.")
    ] = 7,
    scale: Annotated[
        float,
        typer.Option(
            "--scale", min=0.0001, help="Multiplies --customers; tier shares and rates stay."
        ),
    ] = 1.0,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth", help="Ground-truth Parquet. Default: <out stem>_truth.parquet beside --out."
        ),
    ] = None,
) -> None:
    """Generate realistic order events with a known ground truth (seeded, reproducible).

    Customers with their own purchase rates and baskets, cohorts over time, weekly
    and year-end seasonality, four channels, three regions and currencies, refunds
    (mostly inside the return window), cancels, replayed deliveries and a small
    share of malformed rows. Customers silently churn, some after a gradual
    decline; the truth file records each one's latent parameters, declining_from
    and churn_at. The defaults give about ten events per customer over two years
    and roughly 70/22/8 % Silver/Gold/VIP under the default policy.
    """
    from pydantic import ValidationError

    from tier_ml.simulate import SimulationConfig, write_simulation
    from tier_ml.simulate import simulate as run_simulation

    try:
        config = SimulationConfig(customers=customers, start=start, end=end, seed=seed, scale=scale)
    except ValidationError as exc:
        problems = [
            f"--{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise fail("; ".join(problems)) from None
    if out.suffix.lower() not in {".csv", ".parquet", ".pq"}:
        raise fail(f"--out {out}: use a .parquet or .csv file name")
    output_path_or_exit(out, "--out")
    output_path_or_exit(truth, "--truth", {"--out": out})
    with console.status(f"simulating {config.n_customers:,} customers ..."):
        sim = run_simulation(config)
    with console.status(f"writing {len(sim.events):,} events ..."):
        written = write_simulation(sim, out, truth)
    kinds = sim.events["event_type"].value_counts()
    console.print(
        f"simulated {len(sim.events):,} events for {config.n_customers:,} customers "
        f"({config.start} to {config.end}, seed {config.seed}) in {sim.seconds:.1f}s "
        f"({sim.rate / 1e6:.2f}M events/s): "
        + ", ".join(
            f"{kind} {int(kinds.get(kind, 0)):,}" for kind in ("placed", "refunded", "cancelled")
        )
        + f", {len(sim.malformed):,} malformed",
        highlight=False,
    )
    console.print(
        f"wrote {written.events} and {written.truth} in {written.seconds:.1f}s", highlight=False
    )


def _pairs_or_exit(pairs: list[str] | None, option: str, example: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` option values as pairs (split at the first ``=``; both sides trimmed)."""
    split = []
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise fail(f"{option} {pair!r} must look like {example}")
        split.append((name.strip(), value.strip()))
    return split


def _mapping_or_exit(pairs: list[str] | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for name, column in _pairs_or_exit(pairs, "--map", "FIELD=COLUMN, e.g. customer_id=CustID"):
        if name in mapping:
            raise fail(f"--map gives {name} twice")
        mapping[name] = column
    return mapping


@app.command("import")
def import_command(
    source: Annotated[
        Path,
        typer.Argument(help="The retailer's export: .csv (, ; tab or | separated) or .parquet."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Canonical events to write: .parquet or .csv.")
    ],
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            "-m",
            help="FIELD=COLUMN: canonical FIELD from the export's COLUMN (repeat the option). "
            "Columns already named like a canonical field need none.",
        ),
    ] = None,
    rejects: Annotated[
        Path | None,
        typer.Option("--rejects", help="Write rows that could not be converted here (.csv)."),
    ] = None,
    currency: Annotated[
        str | None, typer.Option(
            "--currency",
            help="Currency of amounts that name none, e.g. USD: a currency column or a symbol or code "
            "in the amount ($, €, EUR) comes first. Without it such an amount is rejected: currency is missing.",
        )
    ] = None,
    channel: Annotated[
        str | None, typer.Option(
            "--channel", help="Channel of every row when the export has none, e.g. web. Default: empty."
        )
    ] = None,
    region: Annotated[
        str | None, typer.Option(
            "--region", help="Region of every row when the export has none, e.g. US. Default: empty."
        )
    ] = None,
    date_format: Annotated[
        str | None,
        typer.Option(
            "--date-format",
            help="Read times with exactly this strptime format (e.g. '%d.%m.%Y %H:%M'), or 'iso'. "
            "Default: ISO 8601, YYYY/MM/DD, DD.MM.YYYY, MM/DD/YYYY, month names, epoch seconds.",
        ),
    ] = None,
    day_first: Annotated[
        bool, typer.Option("--day-first", help="Read 03/02/2025 as 3 February (not March 2). Without it, a column where "
        "5 % of the first numbers go above 12 and no second one does is read day first anyway (and said).")
    ] = False,
    timezone: Annotated[
        str, typer.Option("--timezone", help="Time zone of times without an offset (IANA name). A time "
        "the clocks show twice or skip is read as Python reads it (the first; the offset before the change).")
    ] = "UTC",
    decimal_comma: Annotated[
        bool, typer.Option("--decimal-comma", help="Amounts like 1.234,50 (comma decimals). An amount whose "
        "separators only fit the other mark (89,90 without it) is rejected with a hint, not misread.")
    ] = False,
    returns: Annotated[
        str,
        typer.Option(
            "--returns", help="'negative': a negative amount is a refund; 'none': it is rejected."
        ),
    ] = "none",
    return_column: Annotated[
        str | None,
        typer.Option("--return-column", help="Column that marks return rows (e.g. Type)."),
    ] = None,
    return_value: Annotated[
        list[str] | None,
        typer.Option(
            "--return-value", help="Value of --return-column that means a return (repeat; Return)."
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy", "-p", help="Also reject currencies without an fx rate in this policy."
        ),
    ] = None,
    encoding: Annotated[
        str,
        typer.Option(
            "--encoding",
            help="Text encoding of a CSV export, e.g. cp1252 for one saved by Excel on Windows.",
        ),
    ] = "utf-8",
    quantity: Annotated[
        str | None,
        typer.Option(
            "--quantity",
            help="Column of quantities: the amount column then holds unit prices (amount = price x quantity).",
        ),
    ] = None,
    lines: Annotated[
        bool,
        typer.Option(
            "--lines",
            help="Rows are order lines: the lines of an order (same order, type, customer, time and "
            "currency) become one event with their sum. Map the line amount, not an order total "
            "repeated on each line. Customer, time, currency, channel or region left blank on an "
            "order's later lines are taken from its first line.",
        ),
    ] = False,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip",
            help="COLUMN=VALUE: leave out rows whose COLUMN holds VALUE (any case), e.g. "
            "'Financial Status=voided' or 'Status=Cancelled'; repeat the option. They are counted, not rejected.",
        ),
    ] = None,
) -> None:
    """Convert a retailer's export into canonical order events.

    Dates in common formats, amounts with currency symbols and thousands
    separators, defaults for missing currency/channel/region, generated stable
    event ids (re-importing the same file gives the same ids), rows without a type
    taken as placed orders, and returns (negative amounts or a flag column) turned
    into refunds. Rows that cannot be converted are counted by reason and written
    with --rejects; the command still succeeds.
    """
    from tier_ml.importer import ExportError, import_export, write_import

    if returns not in {"none", "negative"}:
        raise fail(f"--returns must be none or negative, not {returns!r}")
    rules = load_policy_or_exit(policy) if policy is not None else None
    if out.suffix.lower() not in {".csv", ".parquet", ".pq"}:
        raise fail(f"--out {out}: use a .parquet or .csv file name")
    output_path_or_exit(out, "--out", {"the export": source})
    output_path_or_exit(rejects, "--rejects", {"the export": source, "--out": out})
    started = time.perf_counter()
    try:
        result = import_export(
            source,
            _mapping_or_exit(mapping),
            currency=currency,
            channel=channel,
            region=region,
            date_format=date_format,
            day_first=day_first,
            timezone=timezone,
            decimal_comma=decimal_comma,
            returns="negative" if returns == "negative" else "none",
            return_column=return_column,
            return_values=tuple(return_value) if return_value else None,
            policy=rules,
            encoding=encoding,
            quantity=quantity,
            lines=lines,
            skip=tuple(_pairs_or_exit(skip, "--skip", "COLUMN=VALUE, e.g. 'Financial Status=voided'")),
        )
        write_import(result, out, rejects)
    except ExportError as exc:
        raise fail(str(exc)) from None
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    by_reason = ", ".join(f"{k} {v:,}" for k, v in result.rejects_by_reason().items())
    converted = result.rows - len(result.rejects) - result.skipped
    console.print(
        f"imported {converted:,} of {result.rows:,} rows into {out}"
        + (f" as {len(result.events):,} orders and refunds" if lines else "")
        + (f"; {result.skipped:,} skipped (--skip)" if skip else "")
        + f"; {len(result.rejects):,} rejected"
        + (f" ({by_reason})" if by_reason else "")
        + f" in {time.perf_counter() - started:.1f}s",
        highlight=False,
    )
    if len(result.rejects) and rejects is None:
        console.print("see the rejected rows with --rejects rejects.csv", highlight=False)
    elif rejects is not None:
        console.print(f"wrote rejects to {rejects}", highlight=False)


# --- the tier store: ingest, sweep, worker, tiers / policy / audit / override ------------------

from tier_ml.commands.store import register as _register_store_commands  # noqa: E402

_register_store_commands(app)
from tier_ml.commands.features import register as _register_feature_commands  # noqa: E402

_register_feature_commands(app)
from tier_ml.commands.explain import register as _register_explain_commands  # noqa: E402

_register_explain_commands(app)
from tier_ml.commands.notify import register as _register_notify_commands  # noqa: E402

_register_notify_commands(app)
from tier_ml.commands.serve import register as _register_serve_commands  # noqa: E402

_register_serve_commands(app)
from tier_ml.commands.training import register as _register_training_commands  # noqa: E402

_register_training_commands(app)
from tier_ml.commands.monitor import register as _register_monitor_commands  # noqa: E402

_register_monitor_commands(app)
