"""Reading, setting and calibrating the recognition threshold."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminKey, RuntimeDep, SessionDep
from app.api.errors import error_responses
from app.api.schemas import CalibratePublic, CalibrateRequest, DistributionsPublic, FarRow, ThresholdPublic, ThresholdUpdate
from app.matching.threshold import Threshold
from app.services import admin
from app.services.runtime import Runtime

router = APIRouter(prefix="/v1/threshold", tags=["threshold"])


def _frames(runtime: Runtime) -> int:
    return runtime.thresholds.template_frames if runtime.thresholds is not None else 5


def _public(runtime: Runtime, threshold: Threshold) -> ThresholdPublic:
    table = runtime.thresholds
    frames = _frames(runtime)
    return ThresholdPublic(
        threshold=threshold.for_frames(frames),
        source=threshold.source,
        target_far=threshold.target_far,
        by_frames=threshold.by_frames(),
        default=table.at(frames) if table else None,
        default_far=table.default_far if table else None,
        default_by_frames=table.by_frames_at() if table else None,
        far_table=[FarRow(far=far, by_frames=table.by_frames_at(far)) for far in table.fars()] if table else [],
        model_id=runtime.model_id,
        template_frames=frames,
    )


@router.get("", response_model=ThresholdPublic, responses=error_responses(401, 403, 429, 503), summary="The threshold in force")
def get_threshold(runtime: RuntimeDep, session: SessionDep, _: AdminKey) -> ThresholdPublic:
    return _public(runtime, admin.current_threshold(runtime, session))


@router.put("", response_model=ThresholdPublic, responses=error_responses(400, 401, 403, 422, 429, 503), summary="Set the threshold")
def put_threshold(body: ThresholdUpdate, runtime: RuntimeDep, session: SessionDep, principal: AdminKey) -> ThresholdPublic:
    """A security level, `{"target_far": 0.0001}` (one of the FARs in `far_table`; every burst
    size then uses its own row), or a raw distance, `{"threshold": 0.25}`, used for every burst
    size alike (so more frames make it looser for strangers: prefer a target FAR). Stored in the
    database: every replica uses it from its next request; audited."""
    threshold = admin.set_threshold(runtime, session, distance=body.threshold, target_far=body.target_far, actor=principal)
    return _public(runtime, threshold)


@router.delete(
    "", response_model=ThresholdPublic, responses=error_responses(401, 403, 429, 503), summary="Go back to the model's thresholds"
)
def reset_threshold(runtime: RuntimeDep, session: SessionDep, principal: AdminKey) -> ThresholdPublic:
    """Forget the stored choice: every burst size uses the model's own threshold again."""
    current = admin.current_threshold(runtime, session)
    if current.source in ("default", "configured"):
        return _public(runtime, current)
    return _public(runtime, admin.set_threshold(runtime, session, actor=principal, reason="reset to "))


@router.post(
    "/calibrate",
    response_model=CalibratePublic,
    responses=error_responses(400, 401, 403, 422, 429, 503),
    summary="Recommend a threshold from the model's table or the enrolled templates",
)
def calibrate(body: CalibrateRequest, runtime: RuntimeDep, session: SessionDep, principal: AdminKey) -> CalibratePublic:
    """Two rules: `target_far`, the model's threshold at that FAR for bursts of a template's
    frames (the same table the service applies; applying it stores the FAR, so each burst size
    gets its own row), and `min_negative`, the origin's smallest distance between two enrolled
    people (applying it stores that distance). Applied only when `apply` is true."""
    result = admin.calibrate(
        runtime, session, method=body.method, target_far=body.target_far, sample=body.sample, apply=body.apply, actor=principal
    )
    return CalibratePublic(
        templates_used=result.templates_used,
        min_negative_distance=result.min_negative_distance,
        manifest_far_threshold=result.table_threshold,
        recommended=result.recommended,
        method=body.method,
        applied=result.applied,
        threshold=result.threshold.for_frames(_frames(runtime)),
    )


@router.get(
    "/distributions",
    response_model=DistributionsPublic,
    responses=error_responses(401, 403, 422, 429, 503),
    summary="Distance histograms: the model's genuine and impostor bursts, the enrolled templates' nearest neighbours",
)
def distributions(
    runtime: RuntimeDep, session: SessionDep, _: AdminKey, sample: Annotated[int, Query(ge=2, le=5000)] = 2000
) -> DistributionsPublic:
    result = admin.distributions(runtime, session, sample=sample)
    threshold = admin.current_threshold(runtime, session).for_frames(result.frames)
    return DistributionsPublic(**result.__dict__, threshold=threshold)
