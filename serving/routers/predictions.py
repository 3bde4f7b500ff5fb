"""Predictions: churn and tier-change probabilities with their top reasons (SHAP), for one
customer (features computed on the fly) or a batch of ids. Every churn probability comes
with its 90 % interval, and every answer names the kind of model behind it (``lightgbm``
or the small-shop ``btyd_fallback``)."""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Query
from fastapi.responses import Response

from serving.batch_answer import encode, in_request_order, prediction_rows
from serving.customer_paths import CUSTOMER, CustomerId
from serving.deps import (
    NowDep,
    PredictionsReader,
    ReadyModelsDep,
    Services,
    ServicesDep,
    run_scoring,
)
from serving.errors import Problem, customer_not_found, problem_responses
from serving.intervals import interval_fields, model_kinds
from serving.models import CHURN, TIER_CHANGE, ModelSet, prediction_fields
from serving.schemas import PredictionOut, PredictionsIn, PredictionsOut
from serving.scoring import batch_features, customer_features, effective_tiers, score
from tier_ml.store.service import iso_instant

router = APIRouter(tags=["predictions"])


def prediction_out(
    row: dict[str, Any], tier: str | None, now_us: int, models: ModelSet
) -> PredictionOut:
    return PredictionOut(
        customer_id=str(row["customer_id"]),
        as_of=iso_instant(now_us),
        tier=tier,
        **prediction_fields(row),
        **interval_fields(row),
        model_versions=models.versions(),
        model_kinds=model_kinds(models),
    )


def _count(services: Services, n: int) -> None:
    services.metrics.predictions.labels(CHURN).inc(n)
    services.metrics.predictions.labels(TIER_CHANGE).inc(n)


@router.get(
    f"/v1/customers/{CUSTOMER}/predictions",
    response_model=PredictionOut,
    summary="Churn, upgrade and downgrade probabilities for one customer, with top reasons",
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def get_customer_predictions(
    customer_id: CustomerId,
    principal: PredictionsReader,
    services: ServicesDep,
    models: ReadyModelsDep,
    now_us: NowDep,
    top_reasons: Annotated[
        int | None, Query(ge=0, le=20, description="Reasons per model (default 3)")
    ] = None,
) -> PredictionOut:
    k = services.settings.top_reasons if top_reasons is None else top_reasons

    def work() -> PredictionOut:
        features = customer_features(services.engine, customer_id, services.policy(), now_us)
        if features is None or len(features) == 0:
            raise customer_not_found(customer_id)
        scored = score(models, features, k)
        tier = features["tier"].iloc[0] if "tier" in features else None
        return prediction_out(
            scored.iloc[0].to_dict(), None if pd.isna(tier) else str(tier), now_us, models
        )

    answer = await run_scoring(services, work)
    _count(services, 1)
    return answer


@router.post(
    "/v1/predictions",
    response_model=PredictionsOut,
    summary="Predictions for a batch of customer ids (at most TIER_ML_MAX_PREDICTION_IDS)",
    responses=problem_responses(401, 403, 413, 415, 422, 503),
)
async def post_predictions(
    body: PredictionsIn,
    principal: PredictionsReader,
    services: ServicesDep,
    models: ReadyModelsDep,
    now_us: NowDep,
) -> Response:
    limit = services.settings.max_prediction_ids
    if len(body.customer_ids) > limit:
        raise Problem(
            413,
            f"{len(body.customer_ids):,} ids; at most {limit:,} per request",
            field="customer_ids",
            location="body",
        )
    ids = list(dict.fromkeys(body.customer_ids))

    def work() -> tuple[pd.DataFrame, dict[str, str]]:
        features = batch_features(services.engine, ids, services.policy(), now_us)
        scored = in_request_order(score(models, features, body.top_reasons), ids)
        return scored, effective_tiers(services.engine, ids, now_us)

    scored, tier_of = await run_scoring(services, work)
    _count(services, len(scored))
    # Built column-wise as plain values and encoded once (10,000 pydantic objects, or a
    # dict per row through the per-row helpers and json.dumps, would cost more than the
    # scoring); the shape is PredictionsOut, which the schema tests check.
    versions = models.versions()
    kinds = model_kinds(models)
    as_of = iso_instant(now_us)
    predictions = prediction_rows(scored, tier_of, as_of, versions, kinds)
    scored_ids = {p.customer_id for p in predictions}
    answer = {
        "as_of": as_of,
        "model_versions": versions,
        "model_kinds": kinds,
        "predictions": predictions,
        "missing": [c for c in ids if c not in scored_ids],
    }
    return Response(encode(answer), media_type="application/json")
