"""The schema check of a feature table, derived from the feature registry.

Every build calls :func:`validate_feature_frame` before returning, so a model
never trains or scores on a table with a missing column, a wrong type, a hole
where a value is required, or a value outside its range. The error names the
column, how many rows fail, and an example row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from features.registry import (
    FEATURE_COLUMNS,
    FEATURES,
    KEY_COLUMNS,
    LABEL_COLUMNS,
    TIER_CHANGES,
    Feature,
)


class FeatureSchemaError(ValueError):
    """A feature table that breaks the schema; the message says which column and why."""


def _example(frame: pd.DataFrame, mask: pd.Series, column: str) -> str:
    row = frame.loc[mask].iloc[0]
    where = f"customer {row['customer_id']!s}" if "customer_id" in frame.columns else "a row"
    if "cutoff" in frame.columns:
        where += f" at {row['cutoff']}"
    return f"e.g. {where}: {row[column]!r}"


_NUMERIC = [f for f in FEATURES if f.kind != "category"]


def _check_types(frame: pd.DataFrame) -> list[str]:
    problems = []
    dtypes = frame.dtypes
    for feature in _NUMERIC:
        dtype = dtypes[feature.name]
        if feature.kind == "int" and not pd.api.types.is_integer_dtype(dtype):
            problems.append(f"column {feature.name!r} must be an integer column, got {dtype}")
        elif feature.kind == "float" and not pd.api.types.is_float_dtype(dtype):
            problems.append(f"column {feature.name!r} must be a float column, got {dtype}")
    return problems


def _column_ok(values: np.ndarray, feature: Feature) -> bool:
    """The cheap test: one min and one max per column (NaN, infinities and bounds all show in them)."""
    if not len(values):
        return True
    if feature.kind == "float" and feature.nullable:
        low, high = np.fmin.reduce(values), np.fmax.reduce(values)  # ignore missing values
        if math.isnan(low):  # all missing
            return True
    else:
        low, high = values.min(), values.max()  # a missing value makes both NaN
    return bool(feature.low <= low and high <= feature.high and not math.isinf(low) and not math.isinf(high))


def _column_problems(frame: pd.DataFrame, values: np.ndarray, feature: Feature) -> list[str]:
    """Which rows of a column that failed :func:`_column_ok` are missing or out of range, with an example."""
    name = feature.name
    numbers = values.astype(np.float64, copy=False)
    missing = np.isnan(numbers)
    with np.errstate(invalid="ignore"):
        outside = ~missing & ((numbers < feature.low) | (numbers > feature.high) | np.isinf(numbers))
    problems = []
    if missing.any() and not feature.nullable:
        mask = pd.Series(missing, index=frame.index)
        problems.append(f"column {name!r}: {int(mask.sum())} missing values ({_example(frame, mask, name)})")
    if outside.any():
        mask = pd.Series(outside, index=frame.index)
        problems.append(
            f"column {name!r}: {int(mask.sum())} values outside [{feature.low:g}, {feature.high:g}] "
            f"({_example(frame, mask, name)})"
        )
    return problems


def _check_values(frame: pd.DataFrame) -> list[str]:
    """Missing and out-of-range values of the numeric features, column by column (no copies)."""
    problems = []
    for feature in _NUMERIC:
        column = frame[feature.name]
        if isinstance(column.dtype, np.dtype):
            values = column.to_numpy()
        else:  # an extension dtype (nullable integers): missing values become NaN
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        if not _column_ok(values, feature):
            problems.extend(_column_problems(frame, values, feature))
    return problems


def _all_text(values: pd.Series) -> bool:
    return len(values) == 0 or pd.api.types.infer_dtype(values, skipna=False) == "string"


def _check_categories(frame: pd.DataFrame) -> list[str]:
    problems = []
    for feature in FEATURES:
        if feature.kind != "category" or _all_text(frame[feature.name]):
            continue
        values = frame[feature.name]
        bad = ~values.map(type).isin([str])
        problems.append(
            f"column {feature.name!r}: {int(bad.sum())} values are not text ({_example(frame, bad, feature.name)})"
        )
    return problems


def _unique_keys(frame: pd.DataFrame) -> pd.Series | None:
    """None when ``(customer_id, cutoff)`` is unique, else the mask of repeated rows.

    Frames are built sorted by cutoff then customer, so strictly increasing keys (one
    vectorised comparison) prove uniqueness; otherwise pandas looks for duplicates.
    """
    if len(frame) < 2:
        return None
    ids = frame["customer_id"].to_numpy()
    cutoffs = np.asarray(frame["cutoff"].values)  # UTC datetime64 for a tz-aware column
    try:
        later = cutoffs[1:] > cutoffs[:-1]
        increasing = later | ((cutoffs[1:] == cutoffs[:-1]) & (ids[1:] > ids[:-1]))
        if increasing.all():
            return None
    except TypeError:  # ids that do not compare (mixed types): the general test below
        pass
    duplicated = frame.duplicated(["customer_id", "cutoff"])
    return duplicated if duplicated.any() else None


def _check_labels(frame: pd.DataFrame) -> list[str]:
    problems = []
    if not pd.api.types.is_integer_dtype(frame["churned"].dtype) or not frame["churned"].isin([0, 1]).all():
        problems.append("column 'churned' must hold integers 0 or 1")
    bad = ~frame["tier_change"].isin(TIER_CHANGES)
    if bad.any():
        problems.append(f"column 'tier_change': {int(bad.sum())} values not in {TIER_CHANGES} ({_example(frame, bad, 'tier_change')})")
    for column in ("tier_at_cutoff", "tier_at_horizon"):
        if not _all_text(frame[column]):
            bad = ~frame[column].map(lambda v: isinstance(v, str))
            problems.append(f"column {column!r}: {int(bad.sum())} values are not tier names")
    return problems


def validate_feature_frame(frame: pd.DataFrame, *, labels: bool | None = None) -> pd.DataFrame:
    """Check a feature (or training) table against the registry; return it, or raise FeatureSchemaError.

    Checks: the key columns then ``FEATURE_COLUMNS`` in order; each feature's type,
    missing values and range; one row per ``(customer_id, cutoff)``; and, when the
    label columns are present (or ``labels`` is True), the labels' values.
    """
    if not isinstance(frame, pd.DataFrame):
        raise FeatureSchemaError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    expected = [*KEY_COLUMNS, *FEATURE_COLUMNS]
    present = list(frame.columns[: len(expected)])
    if present != expected:
        missing = [c for c in expected if c not in frame.columns]
        if missing:
            raise FeatureSchemaError(f"feature table is missing columns {missing}")
        first = next(c for c, p in zip(expected, present, strict=False) if c != p)
        raise FeatureSchemaError(
            f"feature table columns are out of order: expected {first!r} at position {expected.index(first)}"
        )
    problems: list[str] = []
    if frame["customer_id"].isna().any():
        problems.append("column 'customer_id' has missing values")
    if not isinstance(frame["cutoff"].dtype, pd.DatetimeTZDtype) or str(frame["cutoff"].dt.tz) != "UTC":
        problems.append(f"column 'cutoff' must be a UTC timestamp column, got {frame['cutoff'].dtype}")
    types = _check_types(frame)
    problems.extend(types)
    problems.extend(_check_categories(frame))
    if not types:
        problems.extend(_check_values(frame))
    duplicated = _unique_keys(frame)
    if duplicated is not None:
        problems.append(f"{int(duplicated.sum())} duplicate (customer_id, cutoff) rows ({_example(frame, duplicated, 'customer_id')})")
    has_labels = all(c in frame.columns for c in LABEL_COLUMNS) if labels is None else labels
    if has_labels:
        missing_labels = [c for c in LABEL_COLUMNS if c not in frame.columns]
        if missing_labels:
            problems.append(f"training table is missing label columns {missing_labels}")
        else:
            problems.extend(_check_labels(frame))
    if problems:
        raise FeatureSchemaError("feature schema violated: " + "; ".join(problems))
    return frame


def validate_feature_row(row: dict[str, Any]) -> dict[str, Any]:
    """The schema check of one feature row (a dict), without building a frame: the online path's check.

    The same rules as :func:`validate_feature_frame` (types, missing values, ranges);
    raises FeatureSchemaError naming the column.
    """
    problems = []
    where = f"customer {row.get('customer_id')!s}"
    for feature in FEATURES:
        if feature.name not in row:
            problems.append(f"feature row is missing column {feature.name!r}")
            continue
        value = row[feature.name]
        if feature.kind == "category":
            if not isinstance(value, str):
                problems.append(f"column {feature.name!r}: 1 values are not text (e.g. {where}: {value!r})")
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if not feature.nullable:
                problems.append(f"column {feature.name!r}: 1 missing values (e.g. {where}: {value!r})")
            continue
        if feature.kind == "int" and not isinstance(value, int | np.integer):
            problems.append(f"column {feature.name!r} must be an integer column, got {type(value).__name__}")
        elif not feature.low <= value <= feature.high or math.isinf(value):
            problems.append(
                f"column {feature.name!r}: 1 values outside [{feature.low:g}, {feature.high:g}] (e.g. {where}: {value!r})"
            )
    if problems:
        raise FeatureSchemaError("feature schema violated: " + "; ".join(problems))
    return row


def coerce_feature_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Give every feature column its registry dtype (engines return ints and NULLs in many shapes)."""
    columns: dict[str, Any] = {}
    for feature in FEATURES:
        values = frame[feature.name]
        if values.dtype == feature.dtype:
            continue
        if feature.kind == "category":
            columns[feature.name] = values.astype(object)
        elif feature.kind == "int":
            columns[feature.name] = values.astype(np.int64)
        else:
            columns[feature.name] = pd.to_numeric(values, errors="raise").astype(np.float64)
    return frame.assign(**columns) if columns else frame
