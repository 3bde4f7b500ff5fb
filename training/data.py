"""Training data: events in, monthly cutoffs, features + labels, a purged temporal split.

Why a purged split: a label at cutoff ``c`` looks at ``(c, c + h]``. If a training
cutoff's label window reached past a validation cutoff, the model would learn
from the very months it is judged on. So each part ends ``h`` before the next
begins: train → (gap) → calibration (early stopping + calibration) → (gap) →
validation (the latest cutoffs, never seen by the booster or the calibrator).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from tier_ml.events import EventReadError, detect_format
from tier_ml.policy import Policy

TIER_CHANGE_INDEX = {"down": 0, "same": 1, "up": 2}


class TrainingDataError(ValueError):
    """The events cannot give a usable training set (too short, too few customers...)."""


EventsSource = str | Path | pd.DataFrame


def events_source(events: EventsSource) -> Path | pd.DataFrame:
    """A path (read by DuckDB for every cutoff, the fast way) or a canonical events frame."""
    if isinstance(events, pd.DataFrame):
        return events
    path = Path(events)
    try:
        detect_format(path)
    except EventReadError as exc:
        raise TrainingDataError(str(exc)) from None
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such events file")
    return path


def first_event_time(events: EventsSource) -> pd.Timestamp | None:
    """The earliest parseable event time (malformed times are ignored here)."""
    from tier_ml.batch import connect, register_source

    con = connect()
    try:
        register_source(con, events)
        value = con.execute("SELECT min(at_us) FROM src").fetchone()[0]
    except EventReadError as exc:
        raise TrainingDataError(str(exc)) from None
    finally:
        con.close()
    return None if value is None else pd.Timestamp(int(value), unit="us", tz="UTC")


#: Days the events may end before ``as_of`` before training, tuning and promotion refuse:
#: label windows past the data see nobody order, so their customers would all look churned.
MAX_DATA_GAP_DAYS = 7.0


def data_gap_note(events: EventsSource, policy: Policy, as_of: datetime) -> str | None:
    """None when the events reach ``as_of`` (within a day); a note when they end up to
    ``MAX_DATA_GAP_DAYS`` before it; a ``TrainingDataError`` when they end earlier still
    (``train --as-of`` three months after the file's last day labelled everyone churned).

    Only the gap is checked, nothing moves: the labels still end at ``as_of``, so events
    after ``as_of`` change nothing, as before.
    """
    from features.build import data_end_us

    try:
        end = data_end_us(events, policy)
    except EventReadError as exc:
        raise TrainingDataError(str(exc)) from None
    if end is None:
        return None
    last = pd.Timestamp(end, unit="us", tz="UTC")
    gap_days = (pd.Timestamp(as_of) - last) / pd.Timedelta(days=1)
    if gap_days <= 1:
        return None
    said = f"the events end {last:%Y-%m-%d %H:%M} UTC, {gap_days:.0f} days before --as-of {as_of:%Y-%m-%d}"
    if gap_days > MAX_DATA_GAP_DAYS:
        raise TrainingDataError(
            f"{said}: the latest labels would see no orders and call their customers churned; "
            f"use --as-of {last:%Y-%m-%d} or events that reach --as-of"
        )
    return f"{said}: the latest labels see {gap_days:.0f} days without orders"


def training_cutoffs(
    first_event: pd.Timestamp,
    as_of: datetime,
    horizon_days: float,
    warmup_days: float = 60.0,
    max_cutoffs: int = 24,
) -> list[datetime]:
    """Monthly cutoffs ending exactly at ``as_of - horizon`` (latest first in the count),
    starting no earlier than ``warmup_days`` after the first event, oldest first."""
    last = pd.Timestamp(as_of) - pd.Timedelta(days=horizon_days)
    earliest = first_event + pd.Timedelta(days=warmup_days)
    cutoffs = []
    for months in range(max_cutoffs):
        cutoff = last - pd.DateOffset(months=months)
        if cutoff < earliest:
            break
        cutoffs.append(cutoff.to_pydatetime())
    return sorted(cutoffs)


@dataclass(frozen=True)
class TemporalSplit:
    """Cutoffs per part: the booster trains on ``train``, early-stops and is calibrated on
    ``calibration``, and is judged on ``validation``."""

    train: list[datetime]
    calibration: list[datetime]
    validation: list[datetime]

    def as_params(self) -> dict[str, str]:
        def text(cutoffs: list[datetime]) -> str:
            return ",".join(c.strftime("%Y-%m-%d") for c in cutoffs)

        return {
            "train_cutoffs": text(self.train),
            "calibration_cutoffs": text(self.calibration),
            "validation_cutoffs": text(self.validation),
        }


def purged_split(
    cutoffs: list[datetime], horizon_days: float, validation: int = 2, calibration: int = 2
) -> TemporalSplit:
    """Latest ``validation`` cutoffs; then ``calibration`` cutoffs whose label windows end by
    the first validation cutoff; then training cutoffs whose windows end by the first
    calibration cutoff. With few cutoffs the parts shrink to one each."""
    horizon = timedelta(days=horizon_days)
    ordered = sorted(cutoffs)
    for n_val, n_cal in ((validation, calibration), (1, calibration), (1, 1)):
        if len(ordered) < n_val:
            continue
        val = ordered[-n_val:]
        cal_pool = [c for c in ordered if c + horizon <= val[0]]
        cal = cal_pool[-n_cal:]
        if len(cal) < n_cal:
            continue
        train = [c for c in ordered if c + horizon <= cal[0]]
        if train:
            return TemporalSplit(train, cal, val)
    span = f"{ordered[0]:%Y-%m-%d}..{ordered[-1]:%Y-%m-%d}" if ordered else "none"
    raise TrainingDataError(
        f"not enough history for a purged temporal split with a {horizon_days:g}-day horizon: "
        f"{len(ordered)} monthly cutoffs ({span}); need at least three cutoffs spaced by the "
        "horizon (about 2 x horizon + 2 months of events before --as-of minus the horizon)"
    )


def build_dataset(
    events: EventsSource,
    policy: Policy,
    cutoffs: list[datetime],
    horizon_days: float,
    as_of: datetime,
    on_progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Features + labels for every cutoff, with labels that see nothing after ``as_of``."""
    from features import build_training_set

    data = build_training_set(
        events, policy, cutoffs, horizon_days=horizon_days, data_end=as_of, on_progress=on_progress
    )
    if data.empty:
        raise TrainingDataError("no customer has an order before the training cutoffs")
    data = data.sort_values(["cutoff", "customer_id"], kind="stable").reset_index(drop=True)
    data["tier_change_index"] = data["tier_change"].map(TIER_CHANGE_INDEX).astype(int)
    return data


def part(data: pd.DataFrame, cutoffs: list[datetime]) -> pd.DataFrame:
    """The rows of ``data`` at the given cutoffs."""
    wanted = pd.DatetimeIndex([pd.Timestamp(c) for c in cutoffs])
    if wanted.tz is None:
        wanted = wanted.tz_localize("UTC")
    column = pd.DatetimeIndex(data["cutoff"])
    if column.tz is None:
        column = column.tz_localize("UTC")
    return data[column.isin(wanted.tz_convert(column.tz))].reset_index(drop=True)


def fingerprint(frame: pd.DataFrame) -> str:
    """A short content hash of the training rows (features and labels): same data, same hash."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()[:16]


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced sample weights: every class carries the same total weight."""
    labels = np.asarray(labels, dtype=int)
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    per_class = np.zeros(n_classes)
    per_class[present] = len(labels) / (present.sum() * counts[present])
    return per_class[labels]
