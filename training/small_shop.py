"""Small-shop mode: when the data is too small for LightGBM, say so and fall back to BTYD.

Why: Klaviyo's predictions need 500 customers with orders and 180 days of history;
smaller shops get nothing. A boosted model on a few hundred customers (or on one or
two labelled cutoffs) overfits and its calibration rests on a handful of churners.
The BG/NBD model needs no labels at all (it is fitted on the histories as they are
at ``as_of``), has four parameters, and its uncertainty can be stated. Below the
thresholds here, ``train_models`` trains the BTYD fallback (training.fallback)
instead of LightGBM and marks the run, the registered versions and the API answers
with ``model_kind = btyd_fallback``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

import pandas as pd

from training.data import EventsSource, TrainingDataError

LIGHTGBM, BTYD_FALLBACK = "lightgbm", "btyd_fallback"
MODEL_KINDS = (LIGHTGBM, BTYD_FALLBACK)
#: Tag on runs and registered versions, and key in the pyfunc model's metadata.
MODEL_KIND_TAG = "tier_ml.model_kind"
FALLBACK_REASON_TAG = "tier_ml.fallback_reason"
SmallShopMode = Literal["auto", "off", "force"]
SMALL_SHOP_MODES = ("auto", "off", "force")


@dataclass(frozen=True)
class SmallShopThresholds:
    """Below any of these, training falls back to BTYD (``mode="auto"``).

    ``mode="off"`` never falls back (LightGBM or a clear error, the old behaviour);
    ``mode="force"`` always trains the fallback. The fallback itself needs at least
    ``fallback_min_customers`` customers with an order.
    """

    min_customers: int = 500
    min_history_days: float = 180.0
    #: Churned and retained rows each, in every part of the temporal split.
    min_labels: int = 30
    mode: SmallShopMode = "auto"
    fallback_min_customers: int = 20

    def __post_init__(self) -> None:
        if self.mode not in SMALL_SHOP_MODES:
            raise ValueError(f"small-shop mode must be one of {SMALL_SHOP_MODES}, got {self.mode!r}")

    def as_params(self) -> dict[str, object]:
        return {f"small_shop_{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DataSizes:
    """What the thresholds are judged on."""

    customers: int  # customers with at least one placed order at or before as_of
    history_days: float  # first event to as_of

    def as_params(self) -> dict[str, object]:
        return {"data_customers": self.customers, "data_history_days": round(self.history_days, 1)}


def data_sizes(source: EventsSource, as_of: datetime) -> DataSizes:
    """Customers with an order and days of history at ``as_of`` (one DuckDB scan)."""
    from tier_ml.batch import connect, register_source
    from tier_ml.events import EventReadError

    limit = int(pd.Timestamp(as_of).value // 1000)
    con = connect()
    try:
        register_source(con, source)
        customers, first = con.execute(
            "SELECT count(DISTINCT customer_id) FILTER (WHERE event_type = 'placed'), min(at_us) "
            "FROM src WHERE at_us <= ?",
            [limit],
        ).fetchone()
    except EventReadError as exc:
        raise TrainingDataError(str(exc)) from None
    finally:
        con.close()
    history = 0.0 if first is None else (limit - int(first)) / 86_400e6
    return DataSizes(int(customers or 0), history)


def size_reason(sizes: DataSizes, thresholds: SmallShopThresholds) -> str | None:
    """Why the data is too small for LightGBM, or None when it is large enough."""
    if thresholds.mode == "off":
        return None
    if thresholds.mode == "force":
        return "small-shop mode forced"
    reasons = []
    if sizes.customers < thresholds.min_customers:
        reasons.append(
            f"{sizes.customers:,} customers with an order < {thresholds.min_customers:,}"
        )
    if sizes.history_days < thresholds.min_history_days:
        reasons.append(
            f"{sizes.history_days:.0f} days of history < {thresholds.min_history_days:g}"
        )
    return "; ".join(reasons) or None


def label_reason(parts: dict[str, pd.DataFrame], thresholds: SmallShopThresholds) -> str | None:
    """Why the labelled rows are too few for early stopping and calibration, or None."""
    if thresholds.mode == "off":
        return None
    for name, rows in parts.items():
        churned = int(rows["churned"].sum()) if len(rows) else 0
        retained = len(rows) - churned
        if min(churned, retained) < thresholds.min_labels:
            return (
                f"the {name} cutoffs have {churned:,} churned and {retained:,} retained rows "
                f"(need {thresholds.min_labels:,} of each)"
            )
    return None
