"""Door-facing endpoints: identify a burst, verify a burst against one person."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from app.api.common import frames_public, read_frames
from app.api.deps import AdminKey, DoorKey, Multipart, RowId, RuntimeDep, SessionDep, attempt, audit_context
from app.api.errors import error_responses
from app.api.schemas import FramesCheckPublic, IdentifyPublic, PersonRef, VerifyPublic
from app.core.errors import Forbidden
from app.core.validation import TextCheck
from app.services import analysis, recognition

router = APIRouter(prefix="/v1", tags=["recognition"])

FramesField = Annotated[list[UploadFile], File(description="1..MAX_FRAMES JPEG or PNG frames of one person")]
AttributesField = Annotated[
    str | None,
    Form(
        max_length=100,
        description="face attributes to add to each usable frame, comma-separated (`expression`, `gender_age`); "
        "off by default, never part of the decision, and only for keys with the analysis scope",
    ),
    TextCheck,
]
DoorField = Annotated[str | None, Form(max_length=200, description="which door is asking (recorded in the audit log)"), TextCheck]


@router.post(
    "/identify",
    response_model=IdentifyPublic,
    dependencies=[attempt("identify"), Multipart],
    responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503),
    summary="Identify a burst of frames: grant or deny",
)
def identify(
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: DoorKey,
    frames: FramesField,
    door_id: DoorField = None,
    attributes: AttributesField = None,
) -> IdentifyPublic:
    """Decode, check, align, embed and fuse the frames, scan every template, decide.

    Denied when the nearest template is farther than the threshold: an unknown face is never
    matched to whoever happens to be nearest.

    `curl -H "X-API-Key: $KEY" -F frames=@a.jpg -F frames=@b.jpg -F door_id=front http://localhost:8000/v1/identify`
    """
    audit_context(request, "identify", door_id=door_id)
    tasks: tuple[str, ...] = ()
    if attributes is not None and attributes.strip():
        if not principal.may("analysis"):
            raise Forbidden(
                "insufficient_scope", f"attributes need a key with the analysis scope; {principal.name!r} is a {principal.scope} key"
            )
        tasks = analysis.resolve_tasks(runtime, attributes)
    frames_in = read_frames(frames, runtime)
    outcome = recognition.identify(runtime, session, frames_in, actor=principal, door_id=door_id, attributes=tasks)
    decision, person = outcome.decision, outcome.person
    # A denied door gets no distance or margin: numbers that would let a stranger hill-climb
    # towards someone's template. Admins (and the audit log) still see them.
    reveal = decision.granted or principal.is_admin
    return IdentifyPublic(
        decision="granted" if decision.granted else "denied",
        reason=decision.reason,
        person=PersonRef(id=person.id, name=person.name) if person and decision.granted else None,
        distance=round(decision.best.distance, 6) if decision.best and reveal else None,
        threshold=decision.threshold,
        margin=round(decision.margin, 6) if decision.margin is not None and reveal else None,
        model_id=runtime.model_id,
        frames_used=outcome.burst.used,
        frames=frames_public(outcome.burst, outcome.attributes),
        door_id=door_id,
    )


@router.post(
    "/persons/{person_id}/verify",
    response_model=VerifyPublic,
    dependencies=[attempt("verify"), Multipart],
    responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
    summary="Verify (1:1) a burst against one person",
)
def verify(
    request: Request,
    person_id: RowId,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: DoorKey,
    frames: FramesField,
    door_id: DoorField = None,
) -> VerifyPublic:
    """Is this burst the given person? Granted when the distance is within the threshold."""
    audit_context(request, "verify", door_id=door_id, person_id=person_id)
    outcome = recognition.verify(runtime, session, person_id, read_frames(frames, runtime), actor=principal, door_id=door_id)
    decision, person = outcome.decision, outcome.person
    assert person is not None
    reveal = decision.granted or principal.is_admin
    return VerifyPublic(
        decision="granted" if decision.granted else "denied",
        reason=decision.reason,
        person=PersonRef(id=person.id, name=person.name),
        distance=round(decision.best.distance, 6) if decision.best is not None and reveal else None,
        threshold=decision.threshold,
        model_id=runtime.model_id,
        frames_used=outcome.burst.used,
        frames=frames_public(outcome.burst),
    )


@router.post(
    "/frames/check",
    response_model=FramesCheckPublic,
    dependencies=[Multipart],
    responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503),
    summary="Check frames before enrolling: face, quality, what would be used; nothing is matched or stored",
)
def check_frames(runtime: RuntimeDep, _: AdminKey, frames: FramesField) -> FramesCheckPublic:
    burst = recognition.check_frames(runtime, read_frames(frames, runtime))
    return FramesCheckPublic(
        usable=burst.used, enough_to_enrol=burst.used >= runtime.settings.MIN_ENROL_FRAMES, frames=frames_public(burst)
    )
