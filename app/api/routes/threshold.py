"""Reading, setting and calibrating the recognition threshold."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request

from app.api.common import audit
from app.api.deps import AdminKey, RuntimeDep, SessionDep
from app.api.schemas import CalibratePublic, CalibrateRequest, ThresholdPublic, ThresholdUpdate
from app.core.errors import error_responses
from app.store import crud
from app.vision.fusion import pairwise_distances

router = APIRouter(prefix="/v1/threshold", tags=["threshold"])


def _public(runtime: RuntimeDep, session: SessionDep) -> ThresholdPublic:
    stored = crud.stored_threshold(session)
    table = runtime.package.burst_table
    return ThresholdPublic(
        threshold=runtime.threshold(session),
        source="stored" if stored is not None else "default",
        default=runtime.default_threshold(),
        model_id=runtime.model_id,
        template_frames=runtime.package.template_frames,
        default_far=runtime.package.default_far,
        default_by_frames=None if table is None else {int(n): runtime.default_threshold(int(n)) for n in table["by_frames"]},
    )


@router.get("", response_model=ThresholdPublic, responses=error_responses(401, 403, 429, 503), summary="The threshold in force")
def get_threshold(runtime: RuntimeDep, session: SessionDep, _: AdminKey) -> ThresholdPublic:
    return _public(runtime, session)


@router.put("", response_model=ThresholdPublic, responses=error_responses(400, 401, 403, 422, 429, 503), summary="Set the threshold")
def put_threshold(
    request: Request, body: ThresholdUpdate, runtime: RuntimeDep, session: SessionDep, principal: AdminKey
) -> ThresholdPublic:
    """Stored in the database: every replica uses it from its next request."""
    old = runtime.threshold(session)
    crud.set_threshold(session, body.threshold)
    audit(session, request, principal, "threshold", threshold=body.threshold, reason=f"was {old:.6f}", model_id=runtime.model_id)
    return _public(runtime, session)


@router.delete(
    "", response_model=ThresholdPublic, responses=error_responses(401, 403, 429, 503), summary="Go back to the model's thresholds"
)
def reset_threshold(request: Request, runtime: RuntimeDep, session: SessionDep, principal: AdminKey) -> ThresholdPublic:
    """Forget the stored distance: every burst size uses the model's own threshold again."""
    old = crud.stored_threshold(session)
    if old is not None:
        crud.set_threshold(session, None)
        audit(session, request, principal, "threshold", threshold=None, reason=f"reset; was {old:.6f}", model_id=runtime.model_id)
    return _public(runtime, session)


@router.post(
    "/calibrate",
    response_model=CalibratePublic,
    responses=error_responses(400, 401, 403, 422, 429, 503),
    summary="Recommend a threshold from the enrolled templates",
)
def calibrate(request: Request, body: CalibrateRequest, runtime: RuntimeDep, session: SessionDep, principal: AdminKey) -> CalibratePublic:
    """Two rules: `min_negative`, the origin's smallest distance between two enrolled people
    (every pair of templates is a negative pair), and `target_far`, the model's measured
    threshold for that false-accept rate on bursts of a template's number of frames (the
    threshold the service applies to such bursts by default). Applied only when `apply` is true."""
    sample = crud.sample_templates(session, runtime.model_id, body.sample)
    min_negative = None
    if len(sample) >= 2:
        d = pairwise_distances(sample)
        d[np.diag_indices_from(d)] = np.inf
        min_negative = float(d.min())
    manifest_t = runtime.package.threshold_for_frames(runtime.package.template_frames, body.target_far)
    recommended = manifest_t if body.method == "target_far" else min_negative
    applied = False
    if body.apply and recommended is not None and 0.0 < recommended < 1.0:
        crud.set_threshold(session, recommended)
        applied = True
        audit(
            session, request, principal, "threshold", threshold=recommended, reason=f"calibrated:{body.method}", model_id=runtime.model_id
        )
    return CalibratePublic(
        templates_used=len(sample),
        min_negative_distance=min_negative,
        manifest_far_threshold=manifest_t,
        recommended=recommended,
        method=body.method,
        applied=applied,
        threshold=runtime.threshold(session),
    )
