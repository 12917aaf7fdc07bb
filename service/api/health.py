"""Operations routes: liveness, readiness, Prometheus metrics and the model listing."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import Authorized, OperationsAuthorized, ResourcesDep
from service.api.errors import problem_responses
from service.api.schemas import Health, Liveness, ModelsResponse
from service.errors import ModelNotFoundError

router = APIRouter()


@router.get("/healthz", response_model=Liveness, tags=["operations"], summary="The process lives",
            dependencies=[OperationsAuthorized], responses=problem_responses(401))
async def healthz() -> Liveness:
    return Liveness(status="ok")  # alive only: what is loaded is /readyz's answer


@router.get("/readyz", response_model=Health, tags=["operations"], dependencies=[OperationsAuthorized],
            responses={503: {"model": Health, "description": "No model loaded and warmed up yet (or not "
                                                            "TSM_DEFAULT_MODEL's, when it is set), or no decoder "
                                                            "process running (the system refused to start one)"},
                       **problem_responses(401)},
            summary="At least one model version is loaded and warmed up and a decoder process runs")
async def readyz(res: ResourcesDep) -> JSONResponse:
    models = sum(1 for mv in res.repository.serving.values() if mv.state.value == "ready")
    # Without a decoder every /classify would answer 503: take the replica out of rotation until one starts.
    decoders = res.pool.usable()
    default = res.repository.default_unready() if models else None  # unnamed requests would all get 503
    ready = models > 0 and decoders > 0 and default is None
    why = ([] if models else [f"no model is loaded yet: {res.repository.nothing_served()}"]) + \
        ([default] if default else []) + \
        ([] if decoders else ["no decoder process could be started (the system refused a new process)"])
    body = Health(status="ready" if ready else "not-ready", models_ready=models, decoders_ready=decoders,
                  detail="; ".join(why) or None).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "5"})


@router.get("/metrics", tags=["operations"], summary="Prometheus exposition", response_class=Response,
            dependencies=[OperationsAuthorized], responses=problem_responses(401))
async def metrics(res: ResourcesDep) -> Response:
    return Response(res.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/models", response_model=ModelsResponse, dependencies=[Authorized], tags=["models"],
            responses=problem_responses(401),
            summary="Every known model version with its manifest and state")
async def list_models(res: ResourcesDep) -> ModelsResponse:
    return ModelsResponse(models=res.repository.describe())


@router.get("/models/{name}", response_model=ModelsResponse, dependencies=[Authorized], tags=["models"],
            responses=problem_responses(401, 404),
            summary="The versions of one model")
async def get_model(name: str, res: ResourcesDep) -> ModelsResponse:
    versions = res.repository.describe(name)
    if not versions:
        why = res.repository.notices.missing_pin(name)
        raise ModelNotFoundError(f"no model named {name!r} is known" + (f" ({why})" if why else ""))
    return ModelsResponse(models=versions)
