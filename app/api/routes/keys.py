"""API keys: created with a scope, shown once, stored hashed, listed, revoked."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminKey, RowId, SessionDep
from app.api.errors import error_responses
from app.api.schemas import KeyCreate, KeyCreated, KeyPublic, KeysPublic
from app.services import admin
from app.store import crud
from app.store.models import ApiKey

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def key_public(row: ApiKey) -> KeyPublic:
    return KeyPublic.model_validate(row, from_attributes=True)


@router.post(
    "", response_model=KeyCreated, status_code=201, responses=error_responses(400, 401, 403, 422, 429, 503), summary="Create a key"
)
def create_key(body: KeyCreate, session: SessionDep, principal: AdminKey) -> KeyCreated:
    key, row = admin.create_key(session, name=body.name, scope=body.scope, expires_in_days=body.expires_in_days, actor=principal)
    return KeyCreated(**key_public(row).model_dump(), key=key)


@router.get("", response_model=KeysPublic, responses=error_responses(401, 403, 429, 503), summary="List keys (never the keys themselves)")
def list_keys(
    session: SessionDep, _: AdminKey, offset: Annotated[int, Query(ge=0, le=10**9)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> KeysPublic:
    rows, count = crud.list_api_keys(session, offset=offset, limit=limit)
    return KeysPublic(data=[key_public(r) for r in rows], count=count)


@router.delete("/{key_id}", response_model=KeyPublic, responses=error_responses(401, 403, 404, 422, 429, 503), summary="Revoke a key")
def revoke_key(key_id: RowId, session: SessionDep, principal: AdminKey) -> KeyPublic:
    return key_public(admin.revoke_key(session, key_id, actor=principal))
