"""The method's confirm-by-face deletion: identify first, delete only on confirmation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from app import recognition
from app.api.common import audit, read_frames
from app.api.deps import AdminKey, Multipart, RuntimeDep, SessionDep, attempt, audit_context
from app.api.schemas import DeletionConfirm, DeletionDone, DeletionRequestPublic, PersonRef
from app.core.errors import ApiError, error_responses
from app.store import crud
from app.store.models import Person

router = APIRouter(prefix="/v1/deletion-requests", tags=["deletion"])


@router.post(
    "",
    response_model=DeletionRequestPublic,
    status_code=201,
    dependencies=[attempt("deletion_request"), Multipart],
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
    summary="Find who a burst is, and get a one-time token to delete them",
)
def request_deletion(
    request: Request, runtime: RuntimeDep, session: SessionDep, principal: AdminKey, frames: Annotated[list[UploadFile], File()]
) -> DeletionRequestPublic:
    audit_context(request, "deletion_request")
    decision = recognition.identify(runtime, session, read_frames(frames, runtime))
    if not decision.granted or decision.best is None:
        raise ApiError(404, "no_matching_person", "this burst matches nobody enrolled", {"reason": decision.reason})
    person = session.get(Person, decision.best.person_id)
    assert person is not None
    token, row = crud.create_deletion_request(session, person.id, decision.best.distance, runtime.settings.DELETION_TOKEN_TTL_S)
    audit(
        session,
        request,
        principal,
        "deletion_request",
        person_id=person.id,
        distance=decision.best.distance,
        threshold=decision.threshold,
        model_id=runtime.model_id,
        frames_used=decision.burst.used,
    )
    return DeletionRequestPublic(
        person=PersonRef(id=person.id, name=person.name),
        distance=round(decision.best.distance, 6),
        token=token,
        expires_at=crud.as_aware(row.expires_at),
    )


@router.post(
    "/confirm",
    response_model=DeletionDone,
    responses=error_responses(400, 401, 403, 404, 422, 429, 503),
    summary="Confirm a deletion with its token: deletes that person and nobody else",
)
def confirm_deletion(request: Request, body: DeletionConfirm, session: SessionDep, principal: AdminKey) -> DeletionDone:
    claimed = crud.claim_deletion_request(session, body.token)
    if claimed is None:
        raise ApiError(404, "invalid_or_expired_token", "unknown, used or expired deletion token")
    person = session.get(Person, claimed.person_id)
    if person is None:
        raise ApiError(404, "person_not_found", "the person of this request no longer exists")
    ref = PersonRef(id=person.id, name=person.name)
    crud.delete_person(session, person.id)
    audit(session, request, principal, "delete", person_id=ref.id, decision="deleted", reason="confirmed_by_face")
    return DeletionDone(deleted=ref)
