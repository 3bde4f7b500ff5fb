"""``tier-ml features build``: point-in-time feature tables, with labels when a horizon is given.

A thin shell over ``features``: parse the cutoffs, load the policy, build the
table with a progress bar, write Parquet or CSV, print a one-line summary.
User errors (unreadable events, a bad policy, bad cutoffs, no cutoff with a
full label window) end with one line and exit code 2.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from tier_ml.commands.frames import write_frame

features_app = typer.Typer(help="Point-in-time feature tables and labels for the models.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``features`` group to the ``tier-ml`` app."""
    app.add_typer(features_app, name="features")


class CutoffError(ValueError):
    """A --cutoffs value that cannot be read."""


def parse_cutoffs(text: str) -> list[datetime]:
    """``2025-01-01,2025-02-01`` (ISO 8601 instants) or ``monthly:2024-07-01:2025-06-01``."""
    from features import monthly_cutoffs
    from tier_ml.events import parse_instant
    from tier_ml.money import micros_to_instant

    text = text.strip()
    if text.lower().startswith("monthly:"):
        parts = text.split(":")
        if len(parts) != 3:
            raise CutoffError(f"--cutoffs {text!r}: write monthly:START:END, e.g. monthly:2024-07-01:2025-06-01")
        bounds = []
        for part in parts[1:]:
            try:
                bounds.append(datetime.strptime(part.strip(), "%Y-%m-%d").replace(tzinfo=UTC))
            except ValueError:
                raise CutoffError(f"--cutoffs: {part!r} is not a date YYYY-MM-DD") from None
        cutoffs = monthly_cutoffs(bounds[0], bounds[1])
        if not cutoffs:
            raise CutoffError(f"--cutoffs {text!r}: no month start between {parts[1]} and {parts[2]}")
        return cutoffs
    cutoffs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parsed = parse_instant(item)
        if parsed is None:
            raise CutoffError(f"--cutoffs: {item!r} is not an ISO 8601 date or time (e.g. 2025-06-30)")
        cutoffs.append(micros_to_instant(parsed))
    if not cutoffs:
        raise CutoffError("--cutoffs is empty: give dates separated by commas or monthly:START:END")
    return sorted(set(cutoffs))


def _spark_or_exit():  # -> pyspark SparkSession (an optional dependency)
    """The SparkSession for ``--engine spark``, or a one-line error when pyspark or Java is missing."""
    from tier_ml.cli import console, fail
    from tier_ml.engines import EngineUnavailableError
    from tier_ml.engines.spark import spark_session

    try:
        with console.status("starting Spark ..."):
            return spark_session()
    except EngineUnavailableError as exc:
        raise fail(str(exc)) from None


@features_app.command("build")
def build(
    events: Annotated[Path, typer.Option("--events", "-e", help="Canonical events: .parquet, .csv or .jsonl.")],
    cutoffs: Annotated[
        str,
        typer.Option(
            "--cutoffs",
            "-c",
            help="Cutoff instants t: dates separated by commas (2025-03-01,2025-06-01; a date is midnight "
            "UTC) or monthly:START:END (the first of every month from START to END).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Table to write: .parquet or .csv.")] = Path(
        "features.parquet"
    ),
    policy: Annotated[
        Path | None,
        typer.Option("--policy", "-p", help="Policy YAML (TIER_RULES.md format). Default: the packaged policy."),
    ] = None,
    horizon_days: Annotated[
        float | None,
        typer.Option(
            "--horizon-days",
            min=0.001,
            help="Add labels from the window (t, t + h]: churned, tier_at_cutoff, tier_at_horizon, "
            "tier_change. Cutoffs whose window ends after the data's end are skipped. "
            "Without it: features only, for scoring.",
        ),
    ] = None,
    data_end: Annotated[
        str | None,
        typer.Option("--data-end", help="The data's end for the label windows (default: the latest event that is not rejected)."),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="duckdb (embedded, default) or spark (Apache Spark: SPARK_MASTER or local[*]; "
            "--events may then be a folder of Parquet files; needs the spark extra of tier-ml and Java).",
        ),
    ] = "duckdb",
) -> None:
    """Build the feature table at each cutoff (one row per customer and cutoff), labels with --horizon-days."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import features
    from features.build import STEPS_PER_RUN, data_end_us, usable_cutoffs
    from tier_ml.cli import (
        console,
        fail,
        load_policy_or_exit,
        output_path_or_exit,
        parse_instant_or_exit,
    )
    from tier_ml.events import EventReadError, detect_format
    from tier_ml.money import micros_to_instant

    started = time.perf_counter()
    rules = load_policy_or_exit(policy)
    try:
        instants = parse_cutoffs(cutoffs)
    except CutoffError as exc:
        raise fail(str(exc)) from None
    if out.suffix.lower() not in {".parquet", ".pq", ".csv"}:
        raise fail(f"--out {out}: write .parquet or .csv")
    output_path_or_exit(out, "--out", {"--events": events})
    try:
        if engine not in {"duckdb", "spark"}:
            raise fail(f"--engine must be duckdb or spark, not {engine!r}")
        spark = _spark_or_exit() if engine == "spark" else None
        if spark is None or not events.is_dir():
            detect_format(events)
        if not events.is_file() and not (spark is not None and events.is_dir()):
            raise EventReadError(f"{events}: no such events file")
        end_us = parse_instant_or_exit(data_end, "--data-end") if data_end else None
        if horizon_days is not None:
            if end_us is None and spark is not None:
                from features.spark import data_end_us_spark

                end_us = data_end_us_spark(events, rules, spark)
            end_us = end_us if end_us is not None else data_end_us(events, rules)
            kept = usable_cutoffs(instants, horizon_days, end_us)
            if not kept:
                end = "no events" if end_us is None else f"{micros_to_instant(end_us):%Y-%m-%d %H:%M}"
                raise fail(
                    f"no cutoff has a full {horizon_days:g}-day label window before the data's end ({end}); "
                    "use earlier cutoffs or a shorter --horizon-days"
                )
            skipped = len(instants) - len(kept)
            steps = 2 * STEPS_PER_RUN * len(kept)
        else:
            skipped, steps = 0, STEPS_PER_RUN * len(instants)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        with progress:
            task = progress.add_task("building features", total=steps)

            def advance(step: str) -> None:
                progress.update(task, advance=1, description=step)

            if spark is not None:
                from features.spark import build_feature_sets_spark, build_training_set_spark

                if horizon_days is not None:
                    frame = build_training_set_spark(
                        events, rules, instants, horizon_days, data_end=end_us, spark=spark,
                        on_progress=advance,
                    )
                else:
                    frame = build_feature_sets_spark(events, rules, instants, spark, on_progress=advance)
            elif horizon_days is not None:
                assert end_us is not None
                frame = features.build_training_set(
                    events,
                    rules,
                    instants,
                    horizon_days,
                    data_end=micros_to_instant(end_us),
                    on_progress=advance,
                )
            else:
                frame = features.build_feature_sets(events, rules, instants, on_progress=advance)
    except EventReadError as exc:
        raise fail(str(exc).strip().splitlines()[0]) from None  # engine errors can quote the SQL below
    except features.FeatureSchemaError as exc:
        raise fail(f"internal error, please report: {exc}", code=1) from None
    write_frame(frame, out)
    message = (
        f"wrote {len(frame):,} rows ({frame['customer_id'].nunique():,} customers, "
        f"{frame['cutoff'].nunique()} cutoffs, {len(features.FEATURE_COLUMNS)} features"
    )
    if horizon_days is not None:
        churn = float(frame["churned"].mean()) if len(frame) else 0.0
        message += f", labels over {horizon_days:g} days, churn rate {churn:.1%}"
        if skipped:
            message += f"; skipped {skipped} cutoffs whose window ends after the data"
    console.print(message + f") to {out} in {time.perf_counter() - started:.1f}s", highlight=False)
