"""The method's confirm-by-face deletion: identify first, delete only on confirmation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from app.api.common import read_frames
from app.api.deps import AdminKey, Multipart, RuntimeDep, SessionDep, attempt, audit_context
from app.api.errors import error_responses
from app.api.schemas import DeletionConfirm, DeletionDone, DeletionRequestPublic, PersonRef
from app.services import recognition

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
    ticket = recognition.request_deletion(runtime, session, read_frames(frames, runtime), actor=principal)
    return DeletionRequestPublic(
        person=PersonRef(id=ticket.person.id, name=ticket.person.name),
        distance=round(ticket.distance, 6),
        token=ticket.token,
        expires_at=ticket.expires_at,
    )


@router.post(
    "/confirm",
    response_model=DeletionDone,
    responses=error_responses(400, 401, 403, 404, 422, 429, 503),
    summary="Confirm a deletion with its token: deletes that person and nobody else",
)
def confirm_deletion(body: DeletionConfirm, session: SessionDep, principal: AdminKey) -> DeletionDone:
    person_id, name = recognition.confirm_deletion(session, body.token, actor=principal)
    return DeletionDone(deleted=PersonRef(id=person_id, name=name))
