"""API keys: created with a scope, shown once, stored hashed, listed, revoked."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.common import audit
from app.api.deps import AdminKey, RowId, SessionDep
from app.api.schemas import KeyCreate, KeyCreated, KeyPublic, KeysPublic
from app.core.errors import error_responses, not_found
from app.store import crud
from app.store.models import ApiKey

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def key_public(row: ApiKey) -> KeyPublic:
    return KeyPublic.model_validate(row, from_attributes=True)


@router.post(
    "", response_model=KeyCreated, status_code=201, responses=error_responses(400, 401, 403, 422, 429, 503), summary="Create a key"
)
def create_key(request: Request, body: KeyCreate, session: SessionDep, principal: AdminKey) -> KeyCreated:
    expires = crud.utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    key, row = crud.create_api_key(session, body.name, body.scope, expires)
    audit(session, request, principal, "key_created", reason=f"{row.name}:{row.scope}")
    return KeyCreated(**key_public(row).model_dump(), key=key)


@router.get("", response_model=KeysPublic, responses=error_responses(401, 403, 429, 503), summary="List keys (never the keys themselves)")
def list_keys(
    session: SessionDep, _: AdminKey, offset: Annotated[int, Query(ge=0, le=10**9)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> KeysPublic:
    from sqlalchemy import func, select

    rows = session.execute(select(ApiKey).order_by(ApiKey.id).offset(offset).limit(limit)).scalars().all()
    count = session.execute(select(func.count()).select_from(ApiKey)).scalar_one()
    return KeysPublic(data=[key_public(r) for r in rows], count=int(count))


@router.delete("/{key_id}", response_model=KeyPublic, responses=error_responses(401, 403, 404, 422, 429, 503), summary="Revoke a key")
def revoke_key(request: Request, key_id: RowId, session: SessionDep, principal: AdminKey) -> KeyPublic:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise not_found("key", key_id)
    if row.revoked_at is None:
        row.revoked_at = crud.utcnow()
        session.flush()
        audit(session, request, principal, "key_revoked", reason=row.name)
    return key_public(row)
