"""Promotion: challenger against champion on the same latest holdout; move ``champion`` only
when the challenger is better.

Rule: the challenger wins when its primary metric (churn: ROC AUC; tier change:
macro one-vs-rest AUC) is higher *and* its expected calibration error is not
worse (within ``ece_tolerance``). ``force`` promotes regardless. Every decision
is recorded as an MLflow run with both models' metrics side by side, so a
reviewer can see why a version was or was not promoted.

Model kinds (``lightgbm`` or the small-shop ``btyd_fallback``) are compared by the
same rule on the same rows: both take the same features and return the same
columns. A shop that outgrew small-shop mode moves to LightGBM only when LightGBM
is better on its latest holdout; the kinds are logged and named in the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from tier_ml.policy import Policy
from training.data import EventsSource, TrainingDataError, build_dataset, events_source
from training.evaluate import (
    churn_model_metrics,
    churn_probability,
    tier_change_model_metrics,
    tier_change_probability,
)
from training.registry import alias_version, set_champion
from training.tracking import (
    CHALLENGER,
    CHAMPION,
    DEFAULT_EXPERIMENT,
    MODEL_NAMES,
    ensure_experiment,
    use_tracking,
)

PRIMARY_METRIC = {"churn": "val_roc_auc", "tier_change": "val_macro_auc"}
CALIBRATION_METRIC = "val_ece"


@dataclass
class Promotion:
    """The comparison and decision for one model."""

    kind: str
    challenger_version: str | None
    champion_version: str | None
    promoted: bool
    reason: str
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    challenger_kind: str | None = None
    champion_kind: str | None = None


def holdout(
    events: EventsSource, policy: Policy, as_of: datetime, horizon_days: float
) -> pd.DataFrame:
    """The latest labelled cutoff (``as_of - horizon``): features and labels, nothing after
    as_of; refused when the events end well before as_of (``data_gap_note``)."""
    from training.data import data_gap_note, first_event_time

    source = events_source(events)
    data_gap_note(source, policy, as_of)
    cutoff = (pd.Timestamp(as_of) - pd.Timedelta(days=horizon_days)).to_pydatetime()
    first = first_event_time(source)
    if first is None or first > pd.Timestamp(cutoff):
        raise TrainingDataError(
            f"no labelled holdout yet: the holdout cutoff {cutoff:%Y-%m-%d} (as_of minus the "
            f"horizon) is before the first event ({'none' if first is None else f'{first:%Y-%m-%d}'}); "
            "wait for more history, or promote a small-shop model with --force"
        )
    data = build_dataset(source, policy, [cutoff], horizon_days, as_of)
    if data["churned"].nunique() < 2:
        raise TrainingDataError(
            f"the holdout at {cutoff:%Y-%m-%d} needs customers who churned and who did not"
        )
    return data


def evaluate_version(kind: str, version: str, data: pd.DataFrame) -> dict[str, float]:
    """Load ``name/version`` and compute its metrics on the holdout rows."""
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAMES[kind]}/{version}")
    tiers = data["tier"].astype(str).to_numpy()
    if kind == "churn":
        y = data["churned"].to_numpy(dtype=int)
        return churn_model_metrics(churn_probability(model, data), y, tiers, "val_")
    labels = data["tier_change_index"].to_numpy(dtype=int)
    return tier_change_model_metrics(tier_change_probability(model, data), labels, tiers, "val_")


def version_kind(client, name: str, version: str | None) -> str | None:
    """The version's ``tier_ml.model_kind`` tag (versions from before the tag: lightgbm)."""
    from training.small_shop import LIGHTGBM, MODEL_KIND_TAG

    if version is None:
        return None
    return client.get_model_version(name, version).tags.get(MODEL_KIND_TAG, LIGHTGBM)


def decide(
    kind: str,
    challenger: dict[str, float],
    champion: dict[str, float],
    force: bool = False,
    ece_tolerance: float = 0.0,
) -> tuple[bool, str]:
    """Whether the challenger should become champion, and why (one line)."""
    primary = PRIMARY_METRIC[kind]
    new, old = challenger.get(primary), champion.get(primary)
    new_ece, old_ece = challenger.get(CALIBRATION_METRIC), champion.get(CALIBRATION_METRIC)
    facts = f"{primary} {new} vs {old}, ece {new_ece} vs {old_ece}"
    if force:
        return True, f"forced ({facts})"
    if new is None or old is None or new_ece is None or old_ece is None:
        return False, f"a metric is undefined on the holdout ({facts})"
    if new <= old:
        return False, f"{primary} not better: {new:.4f} <= {old:.4f}"
    if new_ece > old_ece + ece_tolerance:
        return False, f"calibration worse: ece {new_ece:.4f} > {old_ece:.4f} + {ece_tolerance:g}"
    return True, f"{primary} {new:.4f} > {old:.4f} and ece {new_ece:.4f} <= {old_ece:.4f} + {ece_tolerance:g}"


def promote(
    events: EventsSource,
    policy: Policy,
    as_of: datetime,
    horizon_days: float = 90,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    force: bool = False,
    kinds: tuple[str, ...] = ("churn", "tier_change"),
    ece_tolerance: float = 0.0,
) -> list[Promotion]:
    """Compare challenger and champion of each model on the latest holdout; maybe promote."""
    import mlflow
    from mlflow import MlflowClient

    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware, got {as_of!r}")
    uri = use_tracking(tracking_uri)
    client = MlflowClient()
    pending: list[tuple[str, str, str | None]] = []
    results: list[Promotion] = []
    for kind in kinds:
        name = MODEL_NAMES[kind]
        challenger = alias_version(client, name, CHALLENGER)
        champion = alias_version(client, name, CHAMPION)
        if challenger is None:
            results.append(Promotion(kind, None, champion, False, f"{name} has no challenger"))
        elif challenger == champion:
            results.append(
                Promotion(kind, challenger, champion, False, "the challenger is already champion")
            )
        else:
            pending.append((kind, challenger, champion))
    if not pending:
        return results
    data = holdout(events, policy, as_of, horizon_days)
    cutoff = pd.Timestamp(data["cutoff"].iloc[0])
    experiment_id = ensure_experiment(experiment, uri)
    for kind, challenger, champion in pending:
        new = evaluate_version(kind, challenger, data)
        old = evaluate_version(kind, champion, data) if champion is not None else {}
        kinds_of = (
            version_kind(client, MODEL_NAMES[kind], challenger),
            version_kind(client, MODEL_NAMES[kind], champion),
        )
        if champion is None:
            promoted, reason = True, "no champion yet"
        else:
            promoted, reason = decide(kind, new, old, force, ece_tolerance)
            if kinds_of[0] != kinds_of[1]:
                reason = f"{kinds_of[0]} challenger vs {kinds_of[1]} champion: {reason}"
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"promote {kind} v{challenger}"
        ) as run:
            mlflow.log_params(
                {
                    "model_name": MODEL_NAMES[kind],
                    "challenger_version": challenger,
                    "champion_version": champion or "",
                    "holdout_cutoff": f"{cutoff:%Y-%m-%d}",
                    "horizon_days": horizon_days,
                    "as_of": as_of.isoformat(),
                    "policy_fingerprint": policy.fingerprint,
                    "force": force,
                    "ece_tolerance": ece_tolerance,
                    "primary_metric": PRIMARY_METRIC[kind],
                    "challenger_model_kind": kinds_of[0],
                    "champion_model_kind": kinds_of[1] or "",
                }
            )
            mlflow.log_metrics({f"challenger_{k}": v for k, v in new.items()})
            mlflow.log_metrics({f"champion_{k}": v for k, v in old.items()})
            mlflow.set_tags(
                {
                    "tier_ml.kind": "promote",
                    "tier_ml.decision": "promoted" if promoted else "kept",
                    "tier_ml.reason": reason,
                }
            )
        if promoted:
            set_champion(client, MODEL_NAMES[kind], challenger)
        results.append(Promotion(kind, challenger, champion, promoted, reason, new, old,
                                 run.info.run_id, *kinds_of))  # fmt: skip
    return results
