"""The audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminKey, RuntimeDep, SessionDep
from app.api.errors import error_responses
from app.api.schemas import EventPublic, EventsPublic
from app.core.validation import InstantCheck, TextCheck
from app.store import crud

router = APIRouter(prefix="/v1/events", tags=["audit"])


@router.get("", response_model=EventsPublic, responses=error_responses(401, 403, 422, 429, 503), summary="Audit events, newest first")
def list_events(
    runtime: RuntimeDep,
    session: SessionDep,
    _: AdminKey,
    since: Annotated[datetime | None, Query(description="inclusive, ISO 8601"), InstantCheck] = None,
    until: Annotated[datetime | None, Query(description="exclusive, ISO 8601"), InstantCheck] = None,
    door_id: Annotated[str | None, Query(max_length=200), TextCheck] = None,
    person_id: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    decision: Annotated[str | None, Query(max_length=20, description="granted, denied, enrolled, deleted, error"), TextCheck] = None,
    kind: Annotated[str | None, Query(max_length=40), TextCheck] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> EventsPublic:
    runtime.journal.flush()  # this replica's door decisions still being written are read too
    rows, count = crud.list_events(
        session, since=since, until=until, door_id=door_id, person_id=person_id, decision=decision, kind=kind, offset=offset, limit=limit
    )
    data = []
    for r in rows:
        item = EventPublic.model_validate(r, from_attributes=True)
        item.created_at = crud.as_aware(r.created_at)
        data.append(item)
    return EventsPublic(data=data, count=count)
