"""Recency, frequency, monetary and BTYD inputs read off the feature frame.

Why: the baselines and the BG/NBD inputs must see exactly the history the
LightGBM model sees, so they are derived from ``features`` columns (never
recomputed from events). One place maps feature names to the BTYD notation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Feature columns the RFM view needs.
RFM_SOURCE_COLUMNS = ("recency_days", "tenure_days", "orders_lifetime", "spend_lifetime")


def rfm_inputs(frame: pd.DataFrame) -> pd.DataFrame:
    """``frequency`` (repeat orders), ``recency`` (days first → last order, BTYD's t_x),
    ``age`` (days first order → cutoff, BTYD's T), ``days_since_last``, ``monetary``."""
    missing = [name for name in RFM_SOURCE_COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"feature frame lacks {missing} needed for the RFM inputs")
    age = pd.to_numeric(frame["tenure_days"], errors="coerce").to_numpy(dtype=float)
    since_last = pd.to_numeric(frame["recency_days"], errors="coerce").to_numpy(dtype=float)
    orders = pd.to_numeric(frame["orders_lifetime"], errors="coerce").to_numpy(dtype=float)
    spend = pd.to_numeric(frame["spend_lifetime"], errors="coerce").to_numpy(dtype=float)
    age = np.nan_to_num(np.maximum(age, 0.0))
    since_last = np.nan_to_num(np.clip(since_last, 0.0, None))
    since_last = np.minimum(since_last, age)
    orders = np.nan_to_num(np.maximum(orders, 1.0), nan=1.0)
    return pd.DataFrame(
        {
            "frequency": orders - 1.0,
            "recency": age - since_last,
            "age": age,
            "days_since_last": since_last,
            "monetary": np.nan_to_num(spend) / orders,
            "orders": orders,
        },
        index=frame.index,
    )
