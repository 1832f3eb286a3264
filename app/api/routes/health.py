"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import RuntimeDep
from app.api.schemas import Health
from app.core.metrics import TEMPLATES
from app.store.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, summary="Database reachable, model loaded and verified")
def readyz(runtime: RuntimeDep) -> Response:
    checks: dict[str, object] = {
        "model": runtime.model_id,
        "model_verified": True,
        "templates": len(runtime.index),
        # Optional features: reported, never a reason to be unready.
        "attributes": {**runtime.attributes.model_ids(), **{t: f"unavailable: {why}" for t, why in runtime.attributes.unavailable.items()}},
    }
    try:
        ping(runtime.engine)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
        return JSONResponse(status_code=503, content=Health(status="unavailable", checks=checks).model_dump())
    return JSONResponse(content=Health(status="ok", checks=checks).model_dump())


@router.get("/metrics", response_class=Response, summary="Prometheus metrics", responses={200: {"content": {"text/plain": {}}}})
def metrics(runtime: RuntimeDep) -> Response:
    TEMPLATES.set(len(runtime.index))
    return Response(content=generate_latest(), media_type=CONTENT_TYPE_LATEST)
