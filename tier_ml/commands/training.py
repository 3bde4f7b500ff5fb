"""The model commands: ``train``, ``score``, ``promote`` and ``tune``.

Thin shells over ``training``: parse options, read the clock nowhere (``--as-of``
is required, so a run is reproducible), call one function, print a short
summary. MLflow goes to ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db``. User errors end with one line and exit code 2.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tier_ml.commands.frames import write_frame

if TYPE_CHECKING:
    from training.train import TrainResult

EventsOption = Annotated[
    Path, typer.Option("--events", "-e", help="Canonical events file: .parquet, .csv or .jsonl.")
]
AsOfOption = Annotated[
    str,
    typer.Option(
        "--as-of",
        help="Only events at or before this instant are used (ISO 8601, e.g. 2025-12-31).",
    ),
]
PolicyOption = Annotated[
    Path | None, typer.Option("--policy", "-p", help="Policy YAML. Default: packaged policy.")
]
HorizonOption = Annotated[
    float,
    typer.Option("--horizon-days", min=1, help="Prediction horizon: churn = no order in it."),
]
ExperimentOption = Annotated[
    str, typer.Option("--experiment", help="MLflow experiment the runs go to.")
]
TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking store. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.",
    ),
]


def register(app: typer.Typer) -> None:
    """Add the model commands to the ``tier-ml`` app."""
    app.command("train")(train)
    app.command("score")(score)
    app.command("promote")(promote)
    app.command("tune")(tune)


def _cli():
    import tier_ml.cli as cli

    return cli


def _as_of(text: str) -> datetime:
    from tier_ml.money import micros_to_instant

    return micros_to_instant(_cli().parse_instant_or_exit(text, "--as-of"))


def _user_errors() -> tuple[type[Exception], ...]:
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    from features import FeatureSchemaError
    from tier_ml.events import EventReadError
    from training.data import TrainingDataError
    from training.scoring import ModelNotFoundError
    from training.tracking import TrackingUnreachableError

    return (
        TrainingDataError,
        ModelNotFoundError,
        TrackingUnreachableError,
        EventReadError,
        FeatureSchemaError,
        UnsupportedModelRegistryStoreURIException,  # a --tracking-uri MLflow cannot use
    )


def train(
    events: EventsOption,
    as_of: AsOfOption,
    policy: PolicyOption = None,
    horizon_days: HorizonOption = 90,
    experiment: ExperimentOption = "tier-ml",
    tracking_uri: TrackingOption = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Same seed and data, same models.")] = 0,
    max_rounds: Annotated[
        int, typer.Option("--max-rounds", min=1, help="Boosting rounds at most (early stopping).")
    ] = 1000,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0001)] = 0.05,
    num_leaves: Annotated[int, typer.Option("--num-leaves", min=2)] = 31,
    min_data_in_leaf: Annotated[
        int, typer.Option("--min-data-in-leaf", min=1, help="Rows a leaf needs at least.")
    ] = 100,
    feature_fraction: Annotated[
        float, typer.Option("--feature-fraction", min=0.01, max=1.0, help="Share of features per tree.")
    ] = 0.8,
    lambda_l2: Annotated[float, typer.Option("--lambda-l2", min=0.0, help="L2 regularisation.")] = 1.0,
    calibration: Annotated[
        str, typer.Option("--calibration", help="Churn calibration: isotonic or platt.")
    ] = "isotonic",
    max_cutoffs: Annotated[
        int, typer.Option("--max-cutoffs", min=3, help="Monthly cutoffs at most (latest first).")
    ] = 24,
    threads: Annotated[int, typer.Option("--threads", min=0, help="LightGBM threads.")] = 1,
    no_register: Annotated[
        bool, typer.Option("--no-register", help="Log the runs but register no model version.")
    ] = False,
    small_shop: Annotated[
        str,
        typer.Option(
            "--small-shop",
            help="auto: below the thresholds below (or with too few labelled churners) train "
            "the BTYD fallback (BG/NBD) instead of LightGBM; off: never (too little data is an "
            "error); force: always the fallback.",
        ),
    ] = "auto",
    min_customers: Annotated[
        int, typer.Option("--min-customers", min=0, help="Small shop below this many customers with an order.")
    ] = 500,
    min_history_days: Annotated[
        float, typer.Option("--min-history-days", min=0, help="Small shop below this much history.")
    ] = 180.0,
    min_labels: Annotated[
        int,
        typer.Option(
            "--min-labels", min=1,
            help="Small shop when a part of the temporal split has fewer churned (or retained) rows.",
        ),
    ] = 30,
) -> None:
    """Train the churn and tier-change models, compare them with the baselines, register them.

    Monthly training cutoffs end at AS_OF minus the horizon; the latest cutoffs are the
    validation set, the ones before them (a horizon apart) calibrate and early-stop. One
    MLflow parent run with a child run per model: parameters, metrics of the model and of
    the recency, RFM-logistic and BG/NBD baselines (overall and per tier, e.g.
    val_roc_auc_gold), plots, the feature schema and the model. New versions get alias
    'challenger'; the first version of a model also becomes 'champion'.

    Small shops (fewer than --min-customers customers with an order, less than
    --min-history-days of history, or too few labelled churners) get the BTYD fallback:
    BG/NBD with a weak prior, churn intervals from its posterior; the run, the registered
    versions and the API say model_kind btyd_fallback.
    """
    from training.calibration import METHODS
    from training.fit import BoosterConfig
    from training.small_shop import SMALL_SHOP_MODES, SmallShopThresholds
    from training.train import train_models

    cli = _cli()
    if calibration not in METHODS:
        raise cli.fail(f"--calibration {calibration!r}: use one of {', '.join(METHODS)}")
    if small_shop not in SMALL_SHOP_MODES:
        raise cli.fail(f"--small-shop {small_shop!r}: use one of {', '.join(SMALL_SHOP_MODES)}")
    thresholds = SmallShopThresholds(min_customers, min_history_days, min_labels, small_shop)
    rules = cli.load_policy_or_exit(policy)
    instant = _as_of(as_of)
    config = BoosterConfig(
        learning_rate=learning_rate,
        num_leaves=num_leaves,
        min_data_in_leaf=min_data_in_leaf,
        feature_fraction=feature_fraction,
        lambda_l2=lambda_l2,
        max_rounds=max_rounds,
        calibration=calibration,
        num_threads=threads,
    )
    with cli.console.status("training ...") as status:
        try:
            result = train_models(
                events, rules, instant, horizon_days, experiment, tracking_uri, seed,
                config=config, max_cutoffs=max_cutoffs, register=not no_register,
                on_progress=lambda stage: status.update(f"training: {stage}"),
                small_shop=thresholds,
            )  # fmt: skip
        except _user_errors() as exc:
            raise cli.fail(str(exc)) from None
    _print_training(result)


def _print_training(result: TrainResult) -> None:
    from rich.table import Table

    cli = _cli()
    for note in result.notes:
        cli.console.print(f"[yellow]note:[/] {note}", highlight=False)
    if result.model_kind != "lightgbm":
        _print_fallback(result)
        return
    table = Table(title="validation (latest cutoffs)")
    table.add_column("model / baseline")
    for name in ("roc_auc", "roc_auc_gold", "pr_auc", "ece", "brier", "top_decile_lift"):
        table.add_column(name, justify="right")
    churn = result.metrics.get("churn", {})
    for label, prefix in (
        ("churn (LightGBM)", "val_"),
        ("baseline: recency", "baseline_recency_val_"),
        ("baseline: RFM logistic", "baseline_rfm_logistic_val_"),
        ("baseline: BG/NBD", "baseline_bgnbd_val_"),
    ):
        cells = []
        for name in ("roc_auc", "roc_auc_gold", "pr_auc", "ece", "brier", "top_decile_lift"):
            value = churn.get(f"{prefix}{name}")
            cells.append("" if value is None else f"{value:.4f}")
        table.add_row(label, *cells)
    cli.console.print(table)
    change = result.metrics.get("tier_change", {})
    cli.console.print(
        "tier change macro AUC "
        + ", ".join(
            f"{label} {change[key]:.4f}"
            for label, key in (
                ("model", "val_macro_auc"),
                ("RFM logistic", "baseline_rfm_logistic_val_macro_auc"),
                ("class prior", "baseline_class_prior_val_macro_auc"),
            )
            if key in change
        )
        + f"; ece {change.get('val_ece', float('nan')):.4f}",
        highlight=False,
    )
    for kind, version in result.versions.items():
        aliases = "challenger, champion" if result.champions.get(kind) else "challenger"
        cli.console.print(f"registered {kind} version {version} ({aliases})", highlight=False)
    cli.console.print(
        f"rows train {result.rows['train']:,}, calibration {result.rows['calibration']:,}, "
        f"validation {result.rows['validation']:,}; parent run {result.parent_run_id} "
        f"in {result.seconds:.1f}s",
        highlight=False,
    )


def _print_fallback(result: TrainResult) -> None:
    """The small-shop run: why, the data sizes, the BG/NBD summary and the versions."""
    cli = _cli()
    sizes = result.data_sizes
    cli.console.print(
        f"small-shop mode: trained the BTYD fallback (BG/NBD) instead of LightGBM because "
        f"{result.fallback_reason} ({sizes.get('customers', 0):,.0f} customers with an order, "
        f"{sizes.get('history_days', 0):.0f} days of history)",
        highlight=False,
    )
    churn = result.metrics.get("churn", {})
    facts = [
        f"mean churn probability {churn['mean_churn_probability']:.3f}"
        if "mean_churn_probability" in churn else "",
        f"mean 90% interval width {churn['mean_interval_width']:.3f}"
        if "mean_interval_width" in churn else "",
        f"holdout ROC AUC {churn['val_roc_auc']:.4f}" if "val_roc_auc" in churn else "",
    ]  # fmt: skip
    cli.console.print("; ".join(f for f in facts if f) or "no holdout to judge it on", highlight=False)
    for kind, version in result.versions.items():
        aliases = "challenger, champion" if result.champions.get(kind) else "challenger"
        cli.console.print(
            f"registered {kind} version {version} ({aliases}), model_kind btyd_fallback",
            highlight=False,
        )
    cli.console.print(
        f"fitted on {result.rows.get('fit', 0):,} customers; parent run {result.parent_run_id} "
        f"in {result.seconds:.1f}s",
        highlight=False,
    )


def score(
    events: EventsOption,
    as_of: AsOfOption,
    policy: PolicyOption = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Scores file to write: .csv or .parquet.")
    ] = Path("scores.csv"),
    model_alias: Annotated[
        str, typer.Option("--model-alias", help="Registry alias of the models to use.")
    ] = "champion",
    tracking_uri: TrackingOption = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="duckdb (embedded, default) or spark (features on Apache Spark, models applied "
            "per partition; SPARK_MASTER or local[*]; needs the spark extra of tier-ml and Java).",
        ),
    ] = "duckdb",
    keep_history: Annotated[
        Path | None,
        typer.Option(
            "--keep-history",
            help="Also keep this run in a score-history folder (e.g. scores/): Parquet partitioned "
            "by date, with as_of, scored_at and model_version added (see docs/monitoring.md).",
        ),
    ] = None,
) -> None:
    """Score every customer with an order at or before AS_OF with both registered models.

    Writes customer_id, tier, churn_probability, p_upgrade, p_downgrade and the versions of
    the two models used (churn_model_version, tier_change_model_version), then
    churn_probability_low and churn_probability_high (the 90% interval) and
    churn_model_kind (lightgbm or btyd_fallback).
    """
    from training.scoring import timed_score, versions_text

    cli = _cli()
    if out.suffix.lower() not in {".csv", ".parquet", ".pq"}:
        raise cli.fail(f"--out {out}: use a .csv or .parquet file name")
    cli.output_path_or_exit(out, "--out", {"--events": events})
    rules = cli.load_policy_or_exit(policy)
    instant = _as_of(as_of)
    if engine not in {"duckdb", "spark"}:
        raise cli.fail(f"--engine must be duckdb or spark, not {engine!r}")
    if engine == "spark":
        from tier_ml.engines import EngineUnavailableError
        from training.spark_scoring import score_command_spark

        with cli.console.status("scoring on Spark ..."):
            try:
                message = score_command_spark(events, rules, instant, out, model_alias, tracking_uri)
            except (EngineUnavailableError, *_user_errors()) as exc:
                raise cli.fail(str(exc)) from None
        cli.console.print(message, highlight=False)
        if keep_history is not None:
            _keep_history(keep_history, out, instant)
        return
    began = time.perf_counter()
    with cli.console.status("scoring ..."):
        try:
            scores, seconds = timed_score(events, rules, instant, model_alias, tracking_uri)
        except _user_errors() as exc:
            raise cli.fail(str(exc)) from None
    write_frame(scores, out)
    cli.console.print(
        f"scored {len(scores):,} customers with @{model_alias} ({versions_text(scores)}); "
        f"wrote {out} in "
        f"{time.perf_counter() - began:.1f}s (load {seconds['load']:.1f}s, features "
        f"{seconds['features']:.1f}s, predict {seconds['predict']:.1f}s)",
        highlight=False,
    )
    if keep_history is not None:
        _keep_history(keep_history, scores, instant)


def _keep_history(folder: Path, scores: Any, instant: datetime) -> None:
    """Append the run (a frame, or the file just written) to the score history."""
    from datetime import UTC

    from training.score_history import append_scores, read_scores

    frame = read_scores(scores) if isinstance(scores, Path) else scores
    kept = append_scores(frame, folder, instant, datetime.now(UTC))
    _cli().console.print(f"kept this run in the score history: {kept}", highlight=False)


def promote(
    events: EventsOption,
    as_of: AsOfOption,
    policy: PolicyOption = None,
    horizon_days: HorizonOption = 90,
    experiment: ExperimentOption = "tier-ml",
    tracking_uri: TrackingOption = None,
    model: Annotated[
        str, typer.Option("--model", help="churn, tier_change or all.")
    ] = "all",
    force: Annotated[
        bool,
        typer.Option("--force/--no-force", help="Promote the challenger even if it is not better."),
    ] = False,
    ece_tolerance: Annotated[
        float,
        typer.Option("--ece-tolerance", min=0.0, help="Calibration may be this much worse."),
    ] = 0.0,
) -> None:
    """Compare challenger and champion on the latest holdout (AS_OF minus the horizon) and
    move 'champion' to the challenger only when it is better.

    Better = higher ROC AUC (churn) or macro AUC (tier change) and an expected calibration
    error that is not worse. Each comparison is recorded as an MLflow run.
    """
    from training.promote import promote as run_promotion

    cli = _cli()
    kinds = {"all": ("churn", "tier_change"), "churn": ("churn",), "tier_change": ("tier_change",)}
    if model not in kinds:
        raise cli.fail(f"--model {model!r}: use churn, tier_change or all")
    rules = cli.load_policy_or_exit(policy)
    instant = _as_of(as_of)
    with cli.console.status("evaluating challenger and champion ..."):
        try:
            results = run_promotion(
                events, rules, instant, horizon_days, experiment, tracking_uri, force,
                kinds[model], ece_tolerance,
            )  # fmt: skip
        except _user_errors() as exc:
            raise cli.fail(str(exc)) from None
    for item in results:
        verdict = "promoted" if item.promoted else "kept champion"
        cli.console.print(
            f"{item.kind}: challenger v{item.challenger_version or '-'} vs champion "
            f"v{item.champion_version or '-'}: {verdict} ({item.reason})",
            highlight=False,
        )


def tune(
    events: EventsOption,
    as_of: AsOfOption,
    policy: PolicyOption = None,
    horizon_days: HorizonOption = 90,
    experiment: ExperimentOption = "tier-ml-tune",
    tracking_uri: TrackingOption = None,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trials.")] = 20,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
) -> None:
    """Search LightGBM settings for the churn model with Optuna (trials as nested runs).

    Each trial trains on the training cutoffs and is judged on the calibration cutoffs
    (validation stays untouched); the best settings are printed as `tier-ml train` options.
    """
    import importlib.util

    from training.tune import tune_churn

    cli = _cli()
    if importlib.util.find_spec("optuna") is None:
        raise cli.fail('tuning needs Optuna: pip install "tier-ml[tune]"')
    rules = cli.load_policy_or_exit(policy)
    instant = _as_of(as_of)
    with cli.console.status("tuning ...") as status:
        try:
            best = tune_churn(
                events, rules, instant, horizon_days, experiment, tracking_uri, trials, seed,
                on_progress=lambda stage: status.update(f"tuning: {stage}"),
            )  # fmt: skip
        except _user_errors() as exc:
            raise cli.fail(str(exc)) from None
    cli.console.print(
        f"best calibration-cutoff ROC AUC {best.value:.4f}: "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in best.cli_options.items())
        + (f" (other settings: {best.other})" if best.other else ""),
        highlight=False,
    )
