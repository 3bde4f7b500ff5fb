"""The ``monitor`` command: drift of live data against the champion's training data.

A thin shell over ``training.monitor``: resolve the reference, read the current
table, score both with the champion, run the Evidently report, write and log it,
and when the drift share reaches the threshold print a recommendation to retrain,
queue a ``drift_detected`` outbox event (with ``--db``) and exit 1. The wall clock
is read here (``--now`` replaces it). User errors end with one line and exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from training.monitor import MonitorResult

#: Exit code when drift is detected (0: no drift, 2: bad input).
DRIFT_EXIT_CODE = 1


def register(app: typer.Typer) -> None:
    """Add ``tier-ml monitor`` to the app."""
    app.command("monitor")(monitor)


def _cli():
    import tier_ml.cli as cli

    return cli


def monitor(
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            "-r",
            help="The champion's training data: an MLflow run id, models:/tier-ml-churn@champion "
            "(or models:/NAME/VERSION), or a feature table (.parquet/.csv).",
        ),
    ],
    current: Annotated[
        Path,
        typer.Option(
            "--current",
            "-c",
            help="Live data: a feature table (tier-ml features build) or a scores file "
            "(tier-ml score), .parquet or .csv. With a 'churned' column, quality is reported too.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="The HTML report; REPORT.json (summary) and REPORT.evidently.json are written beside it.",
        ),
    ] = Path("monitor/report.html"),
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            min=0.0,
            max=1.0,
            envvar="TIER_ML_DRIFT_THRESHOLD",
            help="Drift is detected when the share of drifted columns is at or above this.",
        ),
    ] = 0.3,
    reference_cutoff: Annotated[
        str,
        typer.Option(
            "--reference-cutoff",
            help="Which training cutoff to compare with: latest, all, or a date (the latest cutoff "
            "at or before it).",
        ),
    ] = "latest",
    current_cutoff: Annotated[
        str,
        typer.Option(
            "--current-cutoff",
            help="Which cutoff of --current is checked for drift: latest, all or a date "
            "(quality over time always uses every labelled cutoff).",
        ),
    ] = "latest",
    model_alias: Annotated[
        str, typer.Option("--model-alias", help="Registry alias of the model that scores both sides.")
    ] = "champion",
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking store. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.",
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option("--experiment", help="MLflow experiment of the monitor run. Default: the model's."),
    ] = None,
    no_log: Annotated[
        bool, typer.Option("--no-log", help="Write the files only; log nothing to MLflow.")
    ] = False,
    max_rows: Annotated[
        int, typer.Option("--max-rows", min=100, help="Rows sampled (seeded) from each side at most.")
    ] = 50_000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the row samples.")] = 0,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Tier store URL: when drift is detected, a drift_detected event goes to its outbox.",
        ),
    ] = None,
    now: Annotated[
        str | None, typer.Option("--now", help="The clock, ISO 8601 (default: the current time).")
    ] = None,
) -> None:
    """Compare live data with the champion's training data (Evidently): drift per feature,
    drift of the predicted probabilities, and quality where labels have matured.

    Exit code 0: no drift; 1: drift share at or above --threshold (a retraining is
    recommended, and with --db a drift_detected event is queued); 2: bad input.
    """
    from training.monitor import MonitorError, read_table, resolve_reference, run_monitor
    from training.tracking import TrackingUnreachableError

    cli = _cli()
    if out.suffix.lower() not in {".html", ".htm"}:
        raise cli.fail(f"--out {out}: use an .html file name")
    now_us = cli.parse_instant_or_exit(now, "--now")
    from tier_ml.money import micros_to_instant

    instant = micros_to_instant(now_us)
    with cli.console.status("monitoring: reading the reference ...") as status:
        try:
            ref = resolve_reference(reference, tracking_uri)
            status.update("monitoring: reading --current ...")
            frame = read_table(current)
            status.update(f"monitoring: loading models @{model_alias} ...")
            models = _models_or_none(model_alias, tracking_uri)
            status.update("monitoring: running the Evidently report ...")
            result = run_monitor(
                ref, frame, instant, models=models, threshold=threshold,
                reference_cutoff=reference_cutoff, current_cutoff=current_cutoff,
                max_rows=max_rows, seed=seed, current_source=str(current),
            )  # fmt: skip
        except (MonitorError, TrackingUnreachableError) as exc:
            raise cli.fail(str(exc)) from None
        status.update("monitoring: writing the report ...")
        files = _write(result, out)
        run_id = None
        if not no_log:
            status.update("monitoring: logging to MLflow ...")
            run_id = _log(result, files, instant, ref.experiment_id, experiment, model_alias, tracking_uri)
    _print(result, files, run_id)
    if result.drift_detected:
        if db is not None:
            _queue_event(db, result, run_id, now_us)
        raise typer.Exit(DRIFT_EXIT_CODE)


def _models_or_none(alias: str, tracking_uri: str | None) -> Any:
    """The models behind ``alias``, or None (prediction drift is then skipped, with a note)."""
    from training.scoring import ModelNotFoundError, load_models

    try:
        return load_models(alias, tracking_uri)
    except ModelNotFoundError as exc:
        _cli().console.print(f"note: {exc}; prediction drift and quality are skipped", highlight=False)
        return None


def _write(result: MonitorResult, out: Path) -> Any:
    from training.monitor import write_report

    try:
        return write_report(result, out)
    except OSError as exc:
        raise _cli().fail(f"--out {out}: cannot write ({exc.strerror or exc})") from None


def _log(
    result: MonitorResult,
    files: Any,
    instant: Any,
    experiment_id: str | None,
    experiment: str | None,
    alias: str,
    tracking_uri: str | None,
) -> str:
    from training.monitor import log_to_mlflow, model_experiment_id

    if experiment_id is None and experiment is None:
        experiment_id = model_experiment_id(tracking_uri, alias)
    run_id, _ = log_to_mlflow(result, files, instant, experiment_id, experiment, tracking_uri)
    return run_id


def _print(result: MonitorResult, files: Any, run_id: str | None) -> None:
    from rich.table import Table

    cli = _cli()
    summary = result.summary
    table = Table(title=f"drift ({summary['kind']}): {summary['drifted_features']} of "
                  f"{summary['monitored_columns']} columns drifted")  # fmt: skip
    for name in ("column", "method", "score", "threshold", "drifted"):
        table.add_column(name, justify="right" if name in {"score", "threshold"} else "left")
    drifted = [c for c in summary["columns"] if c.get("drifted")]
    shown = drifted[:15] or summary["columns"][:5]
    for column in shown:
        table.add_row(
            column["column"], _method(column["method"]), _fmt(column["score"]),
            _fmt(column["threshold"]), "yes" if column.get("drifted") else "no",
        )  # fmt: skip
    cli.console.print(table)
    if len(drifted) > len(shown):
        cli.console.print(f"... and {len(drifted) - len(shown)} more drifted columns in the report")
    for column in summary["prediction_drift"]:
        cli.console.print(
            f"prediction {column['column']}: mean {column['reference_mean']:.4f} (reference) -> "
            f"{column['current_mean']:.4f} (current); {_method(column['method'])} {_fmt(column['score'])}"
            f"{' DRIFTED' if column.get('drifted') else ''}",
            highlight=False,
        )
    quality = (summary.get("quality") or {}).get("by_cutoff") or []
    for row in quality:
        cli.console.print(
            f"quality at {row['cutoff'] or 'current'}: ROC AUC {_fmt(row['roc_auc'])}, PR AUC "
            f"{_fmt(row['pr_auc'])}, Brier {_fmt(row['brier'])}, churn rate {_fmt(row['churn_rate'])} "
            f"({row['rows']:,} rows)",
            highlight=False,
        )
    cli.console.print(
        f"drift share {summary['drift_share']:.3f} (threshold {summary['threshold']:.3f}); "
        f"wrote {files.html}, {files.summary}"
        + (f"; MLflow run {run_id}" if run_id else ""),
        highlight=False,
    )
    if result.drift_detected:
        cli.console.print(
            f"[bold red]drift detected[/]: recommendation: {summary['recommendation']}",
            highlight=False,
        )


def _method(name: Any) -> str:
    """Evidently's test names, short enough for a terminal."""
    text = str(name)
    return text.replace(" distance (normed)", " (normed)").replace(" distance", "")


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"


def _queue_event(db: str, result: MonitorResult, run_id: str | None, now_us: int) -> None:
    """Queue ``drift_detected`` in the store's outbox (idempotent per MLflow run / report)."""
    import hashlib
    import json

    from sqlalchemy.exc import SQLAlchemyError

    from tier_ml.commands.store import _open
    from tier_ml.store.model_events import DRIFT_DETECTED, record_model_event

    summary = result.summary
    model = summary.get("model") or {}
    payload = {
        "drift_share": summary["drift_share"],
        "threshold": summary["threshold"],
        "drifted_features": summary["drifted_features"],
        "drifted_columns": result.drifted_columns[:20],
        "model_version": model.get("churn_version"),
        "reference": summary["reference"]["source"],
        "current": summary["current"]["source"],
        "mlflow_run_id": run_id,
        "recommendation": summary["recommendation"],
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    key = f"{DRIFT_DETECTED}:{run_id or digest[:24]}"
    engine = _open(db)
    try:
        outbox_id = record_model_event(
            engine, DRIFT_DETECTED, model.get("churn_model") or "tier-ml-churn", payload, key, now_us
        )
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise _cli().fail(f"cannot queue the drift_detected event: {detail}") from None
    finally:
        engine.dispose()
    _cli().console.print(f"queued drift_detected (outbox id {outbox_id})", highlight=False)
