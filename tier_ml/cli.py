"""The `tier-ml` command line: a thin shell over the domain and the other rooms.

Each command parses its options, calls one service function, and prints a short
summary. Errors a user can fix (a missing file, a bad policy) end with a one-line
message and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tier_ml.batch import PIPELINE_STAGES, classify_reference_to_files, classify_to_files
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
    console.print(f"[bold red]error:[/] {message}", highlight=False)
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
        Path, typer.Option("--out", "-o", help="Tiers file to write (.csv or .parquet).")
    ] = Path("tiers.csv"),
    policy: PolicyOption = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Classify as of this instant (ISO 8601). Default: now."),
    ] = None,
    rejects: Annotated[
        Path | None,
        typer.Option("--rejects", help="Write rejected rows with their reasons here (.csv)."),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="duckdb (vectorized, default) or reference (plain Python, slow)."
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
    if engine not in {"duckdb", "reference"}:
        raise fail(f"--engine must be duckdb or reference, not {engine!r}")
    started = time.perf_counter()
    try:
        if engine == "reference":
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
