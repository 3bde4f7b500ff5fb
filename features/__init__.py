"""Point-in-time features and labels (issue 5): one definition for batch and single-customer paths.

- ``FEATURE_COLUMNS`` / ``CATEGORICAL_COLUMNS`` / ``FEATURES``: the registry (``features.registry``).
- ``build_features`` / ``build_training_set`` / ``monthly_cutoffs``: the batch path (``features.build``).
- ``customer_features`` / ``store_customer_features``: the online path (``features.online``).
- ``store_batch_features``: many customers from the tier store (``features.store_batch``).
- ``validate_feature_frame`` / ``FeatureSchemaError``: the schema check (``features.schema``).
- The SQL text every engine runs lives in ``features.sql``.
"""

from features.build import build_feature_sets, build_features, build_training_set, monthly_cutoffs
from features.online import customer_features, store_customer_features
from features.registry import (
    CATEGORICAL_COLUMNS,
    FEATURE_COLUMNS,
    FEATURES,
    KEY_COLUMNS,
    LABEL_COLUMNS,
    Feature,
)
from features.schema import FeatureSchemaError, validate_feature_frame
from features.store_batch import store_batch_features

__all__ = [
    "CATEGORICAL_COLUMNS",
    "FEATURES",
    "FEATURE_COLUMNS",
    "KEY_COLUMNS",
    "LABEL_COLUMNS",
    "Feature",
    "FeatureSchemaError",
    "build_feature_sets",
    "build_features",
    "build_training_set",
    "customer_features",
    "monthly_cutoffs",
    "store_batch_features",
    "store_customer_features",
    "validate_feature_frame",
]
