"""Operations: liveness, readiness (store reachable, models loaded), Prometheus metrics, and
the model reload (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from serving.deps import Admin, Services, ServicesDep
from serving.errors import problem_responses
from serving.models import CHURN, TIER_CHANGE, ModelSet
from serving.schemas import Health, ModelInfo, ModelsOut, Readiness
from tier_ml.store.views import ping

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Ready to serve: the store answers and the models are loaded (503 otherwise)",
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
def readyz(services: ServicesDep) -> JSONResponse:
    problems = []
    try:
        ping(services.engine)
        store = "ok"
    except Exception as exc:  # any failure to reach the database means "not ready"
        store = f"unreachable: {type(exc).__name__}"
        problems.append(f"store {store}")
    models = services.models.current
    if not models.ready:
        problems.append(models.unavailable_reason())
    auth = (
        "disabled (TIER_ML_AUTH_DISABLED=1): every request has every scope"
        if services.keys.disabled
        else "api keys"
    )
    body = Readiness(
        status="ready" if not problems else "not ready",
        store=store,
        models=models.versions(),
        problems=problems,
        auth=auth,
    )
    return JSONResponse(body.model_dump(), status_code=200 if not problems else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def models_out(models: ModelSet, names: dict[str, str], alias: str) -> ModelsOut:
    return ModelsOut(
        ready=models.ready,
        models={
            kind: ModelInfo(
                name=names[kind],
                alias=alias,
                version=(m.version if (m := models.models.get(kind)) else None),
                run_id=(m.run_id if m else None),
                error=models.errors.get(kind),
            )
            for kind in (CHURN, TIER_CHANGE)
        },
    )


@router.post(
    "/v1/admin/models/reload",
    response_model=ModelsOut,
    summary="Load the models the registry alias points to now (admin)",
    responses=problem_responses(401, 403),
)
def reload_models(principal: Admin, services: ServicesDep) -> ModelsOut:

    models = services.models.reload()
    publish_model_versions(services)
    settings = services.settings
    names = {CHURN: settings.churn_model_name, TIER_CHANGE: settings.tier_change_model_name}
    return models_out(models, names, settings.model_alias)


def publish_model_versions(services: Services) -> None:
    """Set the model-version gauge from the loaded set (0: not loaded)."""
    settings = services.settings
    for kind, name in (
        (CHURN, settings.churn_model_name),
        (TIER_CHANGE, settings.tier_change_model_name),
    ):
        version = services.models.current.versions().get(kind)
        value = float(version) if version and version.isdigit() else 0.0
        services.metrics.model_version.labels(name, settings.model_alias).set(value)
