"""Admin endpoints over enrolled people."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile

from app.api.common import frames_public, person_public, read_frames
from app.api.deps import AdminKey, Multipart, RowId, RuntimeDep, SessionDep, attempt, audit_context
from app.api.errors import ApiError, error_responses
from app.api.schemas import DeletionDone, PersonPublic, PersonRef, PersonsPublic, PersonUpdate, PersonWithFrames
from app.core.validation import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, InvalidValue, NameCheck, TextCheck, parse_metadata
from app.services import admin, recognition
from app.store import crud

router = APIRouter(prefix="/v1/persons", tags=["persons"])

# OpenAPI links from an enrolled person to what can be done with them next: clients (and the
# stateful API tests) follow enrol -> get -> patch -> frames -> delete by the id in the answer.
_PERSON_ID = {"person_id": "$response.body#/id"}
PERSON_LINKS = {
    name: {"operationId": operation, "parameters": _PERSON_ID}
    for name, operation in {
        "GetPerson": "get_person_v1_persons__person_id__get",
        "UpdatePerson": "update_person_v1_persons__person_id__patch",
        "GetSample": "get_sample_v1_persons__person_id__sample_get",
        "AddFrames": "add_frames_v1_persons__person_id__frames_post",
        "DeletePerson": "delete_person_v1_persons__person_id__delete",
    }.items()
}


def _metadata(raw: str | None) -> dict[str, Any]:
    try:
        return parse_metadata(raw)
    except InvalidValue as exc:
        raise ApiError(422, exc.code, exc.message, {"field": "metadata"}) from exc


@router.post(
    "",
    response_model=PersonWithFrames,
    status_code=201,
    dependencies=[attempt("enrol"), Multipart],
    responses={201: {"links": PERSON_LINKS}, **error_responses(400, 401, 403, 409, 413, 415, 422, 429, 503)},
    summary="Enrol a person from a burst of frames",
)
def enrol(
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: AdminKey,
    name: Annotated[str, Form(min_length=1, max_length=200, description="surrounding white space is stripped"), NameCheck],
    frames: Annotated[list[UploadFile], File(description="at least MIN_ENROL_FRAMES usable frames")],
    metadata: Annotated[
        str | None,
        Form(
            description=f'a JSON object, e.g. {{"badge": "A-17"}}: at most {MAX_METADATA_BYTES // 1024} KiB, '
            f"nested at most {MAX_METADATA_DEPTH} levels, no control characters"
        ),
    ] = None,
) -> PersonWithFrames:
    """Enrol one template: the sum vector of the usable frames.

    Refused with 409 `already_enrolled` (and the person) when the burst already matches
    someone, and with 422 `not_enough_usable_frames` below MIN_ENROL_FRAMES usable frames.

    `curl -H "X-API-Key: $ADMIN" -F name="Ada Lovelace" -F metadata='{"badge":"A-17"}' -F frames=@1.jpg ... http://localhost:8000/v1/persons`
    """
    audit_context(request, "enrol")
    meta = _metadata(metadata)
    person, burst = recognition.enrol(runtime, session, name, meta, read_frames(frames, runtime), actor=principal)
    public = person_public(person, burst.used)
    return PersonWithFrames(**public.model_dump(), frames=frames_public(burst))


@router.get("", response_model=PersonsPublic, responses=error_responses(401, 403, 429, 503), summary="List enrolled people")
def list_persons(
    runtime: RuntimeDep,
    session: SessionDep,
    _: AdminKey,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    name: Annotated[
        str | None, Query(max_length=200, description="case-insensitive substring of the name (% and _ are literal)"), TextCheck
    ] = None,
) -> PersonsPublic:
    runtime.journal.flush()  # match counts of this replica's door decisions still being written
    persons, count = crud.list_persons(session, offset=offset, limit=limit, name=name)
    counts = crud.frame_counts(session, person_ids=[p.id for p in persons], model_id=runtime.model_id)
    return PersonsPublic(data=[person_public(p, counts.get(p.id)) for p in persons], count=count)


@router.get(
    "/{person_id}",
    response_model=PersonPublic,
    responses={200: {"links": PERSON_LINKS}, **error_responses(401, 403, 404, 422, 429, 503)},
    summary="One person",
)
def get_person(person_id: RowId, runtime: RuntimeDep, session: SessionDep, _: AdminKey) -> PersonPublic:
    runtime.journal.flush()  # its match count, when a door decision of this replica is still being written
    person = recognition.get_person(session, person_id)
    return person_public(person, crud.frame_counts(session, person_ids=[person_id], model_id=runtime.model_id).get(person_id))


@router.get(
    "/{person_id}/sample",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **error_responses(401, 403, 404, 422, 429, 503)},
    summary="The person's sample aligned face (JPEG)",
)
def get_sample(person_id: RowId, session: SessionDep, _: AdminKey) -> Response:
    person = recognition.get_person(session, person_id)
    if not person.sample_jpeg:
        raise ApiError(404, "sample_not_found", f"person {person_id} has no sample image")
    return Response(content=person.sample_jpeg, media_type="image/jpeg")


@router.patch(
    "/{person_id}",
    response_model=PersonPublic,
    responses={200: {"links": PERSON_LINKS}, **error_responses(400, 401, 403, 404, 422, 429, 503)},
    summary="Rename or re-tag",
)
def update_person(person_id: RowId, body: PersonUpdate, runtime: RuntimeDep, session: SessionDep, principal: AdminKey) -> PersonPublic:
    """Only the fields sent change. `metadata`, when sent, **replaces** the stored object as a
    whole: it is not merged, so keys left out are removed; send the complete object, or `{}` to
    clear it. Leave `metadata` out to keep it as it is.

    `curl -X PATCH -H "X-API-Key: $ADMIN" -H 'content-type: application/json' -d '{"metadata": {"badge": "A-18"}}' http://localhost:8000/v1/persons/7`
    """
    person = admin.update_person(session, person_id, name=body.name, metadata=body.metadata, actor=principal)
    return person_public(person, crud.frame_counts(session, person_ids=[person_id], model_id=runtime.model_id).get(person_id))


@router.post(
    "/{person_id}/frames",
    response_model=PersonWithFrames,
    dependencies=[attempt("add_frames"), Multipart],
    responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
    summary="Add frames; the template is re-fused from all the person's frames",
)
def add_frames(
    request: Request,
    person_id: RowId,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: AdminKey,
    frames: Annotated[list[UploadFile], File()],
) -> PersonWithFrames:
    """Refused with 409 `face_mismatch` when the new frames are not this person's face.

    Answers like enrolment: the person (with `frame_count`, every frame now fused into the
    template) and what became of each frame of this burst."""
    audit_context(request, "add_frames", person_id=person_id)
    person, burst, total = recognition.add_frames(runtime, session, person_id, read_frames(frames, runtime), actor=principal)
    return PersonWithFrames(**person_public(person, total).model_dump(), frames=frames_public(burst))


@router.delete(
    "/{person_id}", response_model=DeletionDone, responses=error_responses(401, 403, 404, 422, 429, 503), summary="Delete a person"
)
def delete_person(person_id: RowId, session: SessionDep, principal: AdminKey) -> DeletionDone:
    """Removes the person's templates, frame embeddings and sample image. Past audit events
    keep the person id but hold no face data."""
    deleted_id, name = admin.delete_person(session, person_id, actor=principal)
    return DeletionDone(deleted=PersonRef(id=deleted_id, name=name))
