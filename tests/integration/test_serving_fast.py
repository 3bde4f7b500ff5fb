"""The service's fast paths give the same answers as the slow ones: the direct model call
equals ``PyFuncModel.predict`` (and passes every output column through), the store batch
feature path equals the canonical ledger path (features and predictions), the Parquet
ledger path equals the DataFrame one, the lookup's hand-built JSON equals ``CustomerOut``;
and ``GET /v1/customers/{id}?include=predictions`` shows the models' chances.

Real SQLite store with the training fixture's history, real MLflow models
(``tests/integration/training_fixtures.py``), the app in process."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.models import CHURN, TIER_CHANGE, ModelSet, load_model_set, predict_frame, reasons_list
from serving.schemas import CustomerOut
from serving.scoring import batch_features, customer_features
from tests.e2e import serving_support as support
from tests.integration.ledger_reference import ledger_batch_features
from tier_ml.money import instant_to_micros
from tier_ml.store.service import active_policy, export_tiers, open_store, set_override

NOW_US = instant_to_micros(support.AS_OF)
TIERS_ONLY = support.KEYS["tiers:read"]


@pytest.fixture(scope="module")
def prepared(trained_models, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(store URL, tracking URI): the fixture's history in a store, one override set."""
    folder = tmp_path_factory.mktemp("serving-fast")
    url = support.build_store(folder / "store.sqlite", trained_models.data.events)
    engine = open_store(url)
    first = export_tiers(engine, NOW_US)["customer_id"].astype(str).iloc[0]
    set_override(engine, first, "VIP", "ops", "goodwill", NOW_US, None)
    engine.dispose()
    return url, trained_models.tracking_uri


@pytest.fixture(scope="module")
def engine(prepared: tuple[str, str]) -> Iterator[Any]:
    engine = open_store(prepared[0])
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def customer_ids(engine: Any) -> list[str]:
    return export_tiers(engine, NOW_US)["customer_id"].astype(str).tolist()


@pytest.fixture(scope="module")
def models(prepared: tuple[str, str]) -> ModelSet:
    settings = support.settings_for(*prepared)
    return load_model_set(settings)


@pytest.fixture(scope="module")
def frames(engine: Any, customer_ids: list[str]) -> dict[str, pd.DataFrame]:
    """Feature frames as the service builds them: one customer, and a batch."""
    policy = active_policy(engine).policy
    one = customer_features(engine, customer_ids[3], policy, NOW_US)
    many = batch_features(engine, customer_ids[:400], policy, NOW_US)
    missing_region = many.head(5).copy()
    missing_region.loc[missing_region.index[0], "region"] = None
    return {"one": one, "many": many, "missing region": missing_region}


@pytest.fixture(scope="module")
def client(prepared: tuple[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(support.settings_for(*prepared))) as test_client:
        yield test_client


def _pyfunc(model: Any, frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """The slow path: MLflow's ``PyFuncModel.predict`` with its schema enforcement."""
    inputs = frame[list(model.input_columns)]
    return model.model.predict(inputs, params={"top_reasons": k}).reset_index(drop=True)


@pytest.mark.parametrize("k", [0, 3])
@pytest.mark.parametrize("which", ["one", "many", "missing region"])
def test_direct_model_call_equals_pyfunc_predict(
    models: ModelSet, frames: dict[str, pd.DataFrame], which: str, k: int
) -> None:
    frame = frames[which]
    for kind in (CHURN, TIER_CHANGE):
        model = models.models[kind]
        assert model.direct is not None and model.direct.accepts(frame[list(model.input_columns)])
        pd.testing.assert_frame_equal(
            model.predict(frame, k), _pyfunc(model, frame, k), check_exact=True
        )


def test_frame_the_signature_would_convert_takes_the_pyfunc_path(
    models: ModelSet, frames: dict[str, pd.DataFrame]
) -> None:
    """An int column as float is something MLflow's enforcement rejects: so must we."""
    from mlflow.exceptions import MlflowException

    model = models.models[CHURN]
    frame = frames["many"].head(3).copy()
    integer = next(c for c, t in model.direct.dtypes.items() if t == "int64")
    frame[integer] = frame[integer].astype(float)
    assert not model.direct.accepts(frame[list(model.input_columns)])
    with pytest.raises(MlflowException):
        model.predict(frame, 0)


class _WithInterval:
    """The real churn model plus an interval column, as a later model version may return."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        out = self.model.predict(context, model_input, params=params)
        out["added_low"] = out["churn_probability"] * 0.9
        out["added_kind"] = "lightgbm"
        return out


def test_every_output_column_is_passed_through(
    models: ModelSet, frames: dict[str, pd.DataFrame]
) -> None:
    churn = models.models[CHURN]
    wider = dataclasses.replace(
        churn,
        direct=dataclasses.replace(
            churn.direct, python_model=_WithInterval(churn.direct.python_model)
        ),
    )
    widened = ModelSet({**models.models, CHURN: wider}, {}, models.loaded_at)
    frame = frames["many"].head(20)
    scored = predict_frame(widened, frame, 2)
    assert scored["customer_id"].tolist() == frame["customer_id"].astype(str).tolist()
    assert (scored["added_low"] == scored["churn_probability"] * 0.9).all()
    assert set(scored["added_kind"]) == {"lightgbm"}
    for name in ("p_down", "p_same", "p_up", "churn_reasons", "tier_change_reasons"):
        assert name in scored
    plain = predict_frame(models, frame, 0)
    assert "churn_reasons" not in plain and "added_low" not in plain
    for model in models.models.values():  # whatever the real models return comes through too
        raw = model.direct.python_model.predict(
            model.direct.context, frame[list(model.input_columns)]
        )
        assert set(raw.columns) - {"reasons"} <= set(plain.columns)


def test_store_batch_path_gives_the_predictions_of_the_ledger_path(
    engine: Any, customer_ids: list[str], models: ModelSet
) -> None:
    """The service's batch features (``features.store_batch_features``) and the canonical
    ledger path give the same feature rows and the same predictions, reasons included, for
    300 customers (the overridden one among them)."""
    policy = active_policy(engine).policy
    ids = customer_ids[:300]
    fast = batch_features(engine, ids, policy, NOW_US)
    slow = ledger_batch_features(engine, ids, policy, NOW_US)
    assert len(fast) == 300
    pd.testing.assert_frame_equal(fast, slow)
    _assert_same_predictions(predict_frame(models, fast, 2), predict_frame(models, slow, 2))


def _assert_same_predictions(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal predictions; a reason's feature value may differ in its last bits (a standard
    deviation summed in another order), its feature and contribution may not."""
    reasons = ["churn_reasons", "tier_change_reasons"]
    pd.testing.assert_frame_equal(got.drop(columns=reasons), want.drop(columns=reasons))
    for name in reasons:
        for left, right in zip(got[name].map(reasons_list), want[name].map(reasons_list), strict=True):
            assert [(r["feature"], r["contribution"]) for r in left] == [
                (r["feature"], r["contribution"]) for r in right
            ]
            assert [r["value"] for r in left] == [
                r["value"] if isinstance(r["value"], str | None) else pytest.approx(r["value"], rel=1e-12)
                for r in right
            ]


def test_a_lone_surrogate_id_in_a_predictions_batch_is_422_not_500(client: TestClient) -> None:
    headers = {"X-API-Key": support.KEYS["predictions:read"], "content-type": "application/json"}
    answer = client.post("/v1/predictions", content=b'{"customer_ids": ["C1", "\\ud800"]}', headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"].startswith("customer_ids")
    assert "unpaired surrogate" in answer.json()["errors"][0]["reason"]


def test_batch_endpoint_reports_unknown_ids_and_answers_the_rest(
    client: TestClient, customer_ids: list[str]
) -> None:
    headers = {"X-API-Key": support.KEYS["predictions:read"]}
    asked = [customer_ids[5], "nobody", customer_ids[0], "x" * 200, "O'Brien \"é\" ]%"]
    response = client.post("/v1/predictions", json={"customer_ids": asked}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["customer_id"] for p in body["predictions"]] == [customer_ids[5], customer_ids[0]]
    assert body["missing"] == ["nobody", "x" * 200, "O'Brien \"é\" ]%"]
    assert body["predictions"][1]["tier"] == "VIP"  # the override, as the lookup shows it
    assert all(0 <= p["churn_probability"] <= 1 for p in body["predictions"])


def test_one_statement_read_equals_the_store_view(
    engine: Any, customer_ids: list[str], prepared: tuple[str, str]
) -> None:
    """A thousand customers: the lookup's read gives the store's own view (in one
    statement, pending orders included; due customers through ``customer_view``), also
    once time has moved on and states are due."""
    from serving.lookup import _simple_view, read_customer
    from tier_ml.store.views import customer_view

    later = NOW_US + 40 * 86_400_000_000
    simple = 0
    for now_us in (NOW_US, later):
        for customer_id in customer_ids[:1000]:
            assert read_customer(engine, customer_id, now_us) == customer_view(
                engine, customer_id, now_us
            ), customer_id
        simple += sum(
            _is_simple(engine, customer_id, now_us, _simple_view)
            for customer_id in customer_ids[:200]
        )
    assert simple > 50  # the one-statement path was taken, not only the fallback
    assert read_customer(engine, "no-such-customer", NOW_US) is None


def _is_simple(engine: Any, customer_id: str, now_us: int, simple_view: Any) -> bool:
    from serving.lookup import _ONE_STATEMENT

    raw = engine.raw_connection()
    try:
        row = raw.cursor().execute(_ONE_STATEMENT, (customer_id, customer_id)).fetchone()
    finally:
        raw.close()
    return row is not None and simple_view(row, now_us) is not None


def test_lookup_json_is_exactly_the_customer_model(
    client: TestClient, customer_ids: list[str]
) -> None:
    """The hand-built body equals what ``CustomerOut`` would serialise, for customers with
    history, pending spend and an override alike."""
    seen = {"history": False, "pending": False, "override": False}
    for customer_id in customer_ids[:150]:
        response = client.get(f"/v1/customers/{customer_id}", headers=support.headers(TIERS_ONLY))
        assert response.status_code == 200
        body = response.json()
        assert "predictions" not in body
        assert CustomerOut.model_validate(body).model_dump(mode="json", exclude_unset=True) == body
        seen["history"] |= bool(body["history"])
        seen["pending"] |= bool(body["pending_orders"])
        seen["override"] |= body["override"] is not None
    assert all(seen.values()), seen


def test_include_predictions_shows_the_models_chances(
    client: TestClient, customer_ids: list[str], models: ModelSet
) -> None:
    for customer_id in customer_ids[5:8]:
        got = client.get(
            f"/v1/customers/{customer_id}",
            params={"include": "predictions"},
            headers=support.headers(),
        )
        assert got.status_code == 200
        body = got.json()
        predictions = body["predictions"]
        assert body.get("predictions_unavailable") is None
        plain = client.get(f"/v1/customers/{customer_id}", headers=support.headers()).json()
        assert {k: v for k, v in body.items() if not k.startswith("predictions")} == plain
        reference = client.get(
            f"/v1/customers/{customer_id}/predictions", headers=support.headers()
        ).json()
        for name in ("churn_probability", "p_keep_tier", "p_reach_next_tier", "p_upgrade"):
            assert predictions[name] == pytest.approx(reference[name], abs=1e-12)
        assert predictions["p_keep_tier"] == pytest.approx(1 - predictions["p_downgrade"])
        assert 0.0 <= predictions["churn_probability"] <= 1.0
        assert predictions["model_versions"] == models.versions()
        for name in ("churn_probability_low", "churn_probability_high"):  # when the model has them
            if reference.get(name) is not None:
                assert predictions[name] == pytest.approx(reference[name], abs=1e-12)
        CustomerOut.model_validate(body)


def test_include_predictions_needs_the_predictions_scope(
    client: TestClient, customer_ids: list[str]
) -> None:
    path = f"/v1/customers/{customer_ids[0]}"
    denied = client.get(
        path, params={"include": "predictions"}, headers=support.headers(TIERS_ONLY)
    )
    assert denied.status_code == 403
    assert denied.headers["content-type"].startswith("application/problem+json")
    assert "predictions:read" in denied.json()["detail"]
    unknown = client.get(path, params={"include": "everything"}, headers=support.headers())
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "include"


def test_include_predictions_without_models_still_answers_the_customer(
    prepared: tuple[str, str], customer_ids: list[str], tmp_path: Path
) -> None:
    settings = support.settings_for(
        prepared[0],
        "sqlite:///" + str(tmp_path / "missing" / "mlflow.db"),
        load_models=False,
    )
    with TestClient(create_app(settings)) as no_models:
        response = no_models.get(
            f"/v1/customers/{customer_ids[0]}",
            params={"include": "predictions"},
            headers=support.headers(),
        )
    assert response.status_code == 200
    body = response.json()
    assert body["predictions"] is None
    assert "no prediction model is loaded" in body["predictions_unavailable"]
    assert body["tier"]


def test_openapi_documents_include_with_an_example(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/customers/{customer_id}"]["get"]
    include = next(p for p in operation["parameters"] if p["name"] == "include")
    assert include["in"] == "query" and not include["required"]
    examples = operation["responses"]["200"]["content"]["application/json"]["examples"]
    assert "p_keep_tier" in examples["with_predictions"]["value"]["predictions"]
