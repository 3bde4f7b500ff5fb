"""The ML models the service answers with: MLflow pyfunc models loaded by registry alias.

At start-up (and on ``POST /v1/admin/models/reload``) :class:`ModelHolder` resolves
``models:/<name>@<alias>`` (alias ``champion`` by default) to a version and loads
that exact version, so the version reported is the one serving. A reload builds
the new set first and swaps it in one assignment: requests in flight finish on
the old models. A model that cannot be loaded leaves the set incomplete; the
prediction endpoints then answer 503 with the reason, while the tier endpoints
keep serving.

Models follow the contract of the training room: input a DataFrame of
``features.FEATURE_COLUMNS``; output ``churn_probability`` (churn model) or
``p_down, p_same, p_up`` (tier-change model), plus ``reasons`` (JSON) when
asked for ``top_reasons`` > 0, plus whatever other columns a model version adds
(they are passed through, never filtered).

Fast path: ``PyFuncModel.predict`` re-checks the input against the logged
signature on every call (15-40 % of a one-row prediction). The service's feature
frames come from the feature builders, which validate them already, so
:class:`DirectCall` calls the python model behind the pyfunc directly when the
frame has exactly the dtypes the signature's enforcement would pass unchanged
(float64 for ``double``, int64 for ``long``, text for ``string``), with the
signature's parameter defaults filled in as MLflow does. Any other frame takes
the full ``PyFuncModel.predict`` path, so answers (and errors) stay the same;
tests check both paths give identical frames.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from serving.settings import ServingSettings

log = logging.getLogger("serving.models")
CHURN, TIER_CHANGE = "churn", "tier_change"


#: MLflow signature types whose enforcement passes a column of this numpy dtype unchanged.
_UNCHANGED_DTYPES = {"double": "float64", "long": "int64", "string": "object", "boolean": "bool"}
_PARAM_TYPES: dict[str, type] = {"long": int, "integer": int, "double": float, "float": float,
                                 "string": str, "boolean": bool}  # fmt: skip


@dataclass(frozen=True)
class DirectCall:
    """The python model inside a pyfunc, called without MLflow's per-call schema enforcement.

    Only used for frames that enforcement would pass through untouched (see
    :meth:`accepts`); the model's own ``predict`` then sees exactly what
    ``PyFuncModel.predict`` would have given it.
    """

    python_model: Any  # mlflow.pyfunc.PythonModel
    context: Any  # mlflow.pyfunc.PythonModelContext
    dtypes: dict[str, str]  # column -> the numpy dtype enforcement leaves unchanged
    text_columns: tuple[str, ...]
    param_types: dict[str, type]
    param_defaults: dict[str, Any]

    def accepts(self, frame: pd.DataFrame) -> bool:
        if list(frame.columns) != list(self.dtypes):
            return False
        for name, dtype in zip(frame.columns, frame.dtypes, strict=True):
            if dtype.name != self.dtypes[name]:
                return False
        return all(
            pd.api.types.infer_dtype(frame[name], skipna=True) in ("string", "empty")
            for name in self.text_columns
        )

    def __call__(self, frame: pd.DataFrame, params: dict[str, Any]) -> Any:
        given = {name: self.param_types[name](value) for name, value in params.items()}
        return self.python_model.predict(
            self.context, frame, params={**self.param_defaults, **given}
        )


def direct_call(model: Any) -> DirectCall | None:
    """The fast path of a loaded pyfunc, or None when it must go through ``PyFuncModel.predict``
    (no column signature, type-hint signatures, unusual column or parameter types...)."""
    try:
        python_model = model.unwrap_python_model()
        context = model._model_impl.context
        metadata = model.metadata
        if metadata._is_signature_from_type_hint() or metadata._is_type_hint_from_example():
            return None
        hints = getattr(python_model, "predict_type_hints", None)
        if getattr(hints, "input", None) not in (None, pd.DataFrame):
            return None
        schema = metadata.get_input_schema()
        if schema is None or not schema.has_input_names() or schema.is_tensor_spec():
            return None
        dtypes: dict[str, str] = {}
        for spec in schema.inputs:
            kind = getattr(spec.type, "name", None)
            if kind not in _UNCHANGED_DTYPES:
                return None
            dtypes[spec.name] = _UNCHANGED_DTYPES[kind]
        param_types: dict[str, type] = {}
        defaults: dict[str, Any] = {}
        params_schema = metadata.get_params_schema()
        for param in params_schema.params if params_schema is not None else []:
            kind = getattr(param.dtype, "name", None)
            if kind not in _PARAM_TYPES or param.shape is not None:
                return None
            param_types[param.name] = _PARAM_TYPES[kind]
            defaults[param.name] = param.default
        if "top_reasons" not in param_types:
            return None
    except Exception:  # not a python-model pyfunc, or MLflow internals changed: the slow path
        return None
    text = tuple(name for name, dtype in dtypes.items() if dtype == "object")
    return DirectCall(python_model, context, dtypes, text, param_types, defaults)


@dataclass(frozen=True)
class LoadedModel:
    """One model version, loaded."""

    name: str
    alias: str
    version: str
    run_id: str | None
    model: Any  # mlflow.pyfunc.PyFuncModel
    input_columns: tuple[str, ...] | None
    direct: DirectCall | None = None

    def predict(self, features: pd.DataFrame, top_reasons: int) -> pd.DataFrame:
        """Every output column of the model, one row per feature row (index reset)."""
        frame = features if self.input_columns is None else features[list(self.input_columns)]
        params = {"top_reasons": int(top_reasons)}
        if self.direct is not None and self.direct.accepts(frame):
            output = self.direct(frame, params)
        else:
            output = self.model.predict(_naive_utc(frame), params=params)
        output = output if isinstance(output, pd.DataFrame) else pd.DataFrame(output)
        return output.reset_index(drop=True)


@dataclass(frozen=True)
class ModelSet:
    """The models serving now, and why any is missing."""

    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    loaded_at: float = 0.0

    @property
    def ready(self) -> bool:
        return CHURN in self.models and TIER_CHANGE in self.models

    def versions(self) -> dict[str, str | None]:
        return {
            kind: (m.version if (m := self.models.get(kind)) else None)
            for kind in (CHURN, TIER_CHANGE)
        }

    def unavailable_reason(self) -> str:
        missing = [kind for kind in (CHURN, TIER_CHANGE) if kind not in self.models]
        reasons = "; ".join(f"{kind}: {self.errors.get(kind, 'not loaded')}" for kind in missing)
        return (
            "no prediction model is loaded ("
            + reasons
            + "). Train and promote one (`tier-ml train`, alias champion), then "
            "POST /v1/admin/models/reload"
        )


def _naive_utc(frame: pd.DataFrame) -> pd.DataFrame:
    """Timezone-aware time columns as naive UTC: MLflow's schema enforcement only takes naive
    datetimes, while the feature builders return aware ones."""
    aware = [c for c, dtype in frame.dtypes.items() if isinstance(dtype, pd.DatetimeTZDtype)]
    if not aware:
        return frame
    frame = frame.copy()
    for column in aware:
        frame[column] = frame[column].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


def _input_columns(model: Any) -> tuple[str, ...] | None:
    try:
        schema = model.metadata.get_input_schema()
    except Exception:  # a model logged without a signature: pass the frame as it is
        return None
    if schema is None or not schema.has_input_names():
        return None
    return tuple(schema.input_names())


def load_model(settings: ServingSettings, name: str) -> LoadedModel:
    """``models:/name@alias`` resolved to its version, and that version loaded."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(name, settings.model_alias)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    return LoadedModel(
        name,
        settings.model_alias,
        str(version.version),
        version.run_id,
        model,
        _input_columns(model),
        direct_call(model),
    )


def load_model_set(settings: ServingSettings) -> ModelSet:
    """Both models, each loaded on its own (one failing leaves the other loaded)."""
    models: dict[str, LoadedModel] = {}
    errors: dict[str, str] = {}
    for kind, name in (
        (CHURN, settings.churn_model_name),
        (TIER_CHANGE, settings.tier_change_model_name),
    ):
        try:
            models[kind] = load_model(settings, name)
            log.info(
                "loaded model %s@%s (version %s)", name, settings.model_alias, models[kind].version
            )
        except (
            Exception
        ) as exc:  # the registry is outside the service: any failure means "no model"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            errors[kind] = (
                f"{name}@{settings.model_alias} could not be loaded from {settings.mlflow_tracking_uri}: {first}"
            )
            log.warning("%s", errors[kind])
    return ModelSet(models, errors, time.time())


class ModelHolder:
    """The current :class:`ModelSet`, replaced whole on reload (one reload at a time)."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.current = ModelSet(errors={CHURN: "not loaded yet", TIER_CHANGE: "not loaded yet"})
        self._reload_lock = threading.Lock()

    def reload(self) -> ModelSet:
        with self._reload_lock:
            self.current = load_model_set(self.settings)
            settle_heap()
            return self.current


def settle_heap() -> None:
    """Collect once, then move every object alive now (modules, loaded models, the store
    engine) out of the cyclic garbage collector's reach (``gc.freeze``).

    Why: a loaded service holds a few hundred thousand long-lived objects; every full
    collection walks them all. A batch prediction creates about a million short-lived
    values, which triggers several full collections (0.1-0.3 s of a 10,000-id request),
    and any request that happens to trigger one pays tens of milliseconds. Frozen objects
    are still freed by reference counting; the unfreeze before the collection lets a
    reload's replaced models be collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    if not _UNFREEZE_AT_EXIT:  # so that the interpreter's last collection sees everything
        _UNFREEZE_AT_EXIT.append(atexit.register(gc.unfreeze))


_UNFREEZE_AT_EXIT: list[object] = []


def reasons_list(value: Any) -> list[dict[str, Any]]:
    """The model's ``reasons`` cell (a JSON list) as a list; empty when absent."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return []
        return parsed if isinstance(parsed, list) else []
    return list(value) if isinstance(value, list) else []


def prediction_fields(row: dict[str, Any]) -> dict[str, Any]:
    """One scored row's probabilities and reasons under the API's names (API and dashboard)."""
    return {
        "churn_probability": float(row["churn_probability"]),
        "p_upgrade": float(row["p_up"]),
        "p_downgrade": float(row["p_down"]),
        "p_same": float(row["p_same"]),
        "p_keep_tier": 1.0 - float(row["p_down"]),
        "p_reach_next_tier": float(row["p_up"]),
        "churn_reasons": reasons_list(row.get("churn_reasons")),
        "tier_change_reasons": reasons_list(row.get("tier_change_reasons")),
    }


def predict_frame(models: ModelSet, features: pd.DataFrame, top_reasons: int) -> pd.DataFrame:
    """Both models on a feature frame: one row per input row with ``customer_id``, then every
    column the churn model returns (``churn_probability``, ...) and every column the
    tier-change model returns (``p_down``, ``p_same``, ``p_up``, ...). Each model's
    ``reasons`` become ``churn_reasons`` / ``tier_change_reasons`` (present when asked
    for); a tier-change column whose name the churn model already uses is prefixed
    ``tier_change_``."""
    churn = models.models[CHURN].predict(features, top_reasons)
    change = models.models[TIER_CHANGE].predict(features, top_reasons)
    columns: dict[str, Any] = {"customer_id": features["customer_id"].astype(str).to_numpy()}
    for prefix, output in (("churn", churn), ("tier_change", change)):
        for name in output.columns:
            key = f"{prefix}_reasons" if name == "reasons" else str(name)
            if key in columns:
                key = f"{prefix}_{key}"
            values = output[name]
            columns[key] = values.to_numpy() if name == "reasons" else _plain(values)
    out = pd.DataFrame(columns, copy=False)
    if top_reasons > 0:
        for name in ("churn_reasons", "tier_change_reasons"):
            if name not in out:
                out[name] = [None] * len(out)
    return out


def _plain(values: pd.Series) -> Any:
    """Numeric outputs as float arrays (as the API reports them); others as they are."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(float).to_numpy()
    return values.to_numpy()
