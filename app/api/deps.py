"""Dependencies: the runtime, a database session, the calling key and its rate limit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session

from app.api.validation import control_character
from app.core.errors import ApiError
from app.recognition import Runtime
from app.store import crud
from app.store.db import session_scope

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key from `facegate keys create` or POST /v1/keys")
_limiter = MovingWindowRateLimiter(MemoryStorage())


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with session_scope(runtime.sessions) as session:
        yield session


# scope="function": commit before the response is sent. With the default ("request") scope
# FastAPI runs the code after `yield` once the response has gone out, so a client could see
# 200 for a delete that is not yet committed (or never is, when the commit fails).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

# A row id in a path: bounded to BIGINT, so an absurd id is a 422, not a driver overflow (500/503).
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@dataclass(frozen=True)
class Principal:
    key_id: int | None
    name: str
    scope: str


def _authenticate(request: Request, runtime: Runtime, key: str | None, needed: str) -> Principal:
    if not runtime.settings.AUTH_ENABLED:
        principal = Principal(None, "anonymous", "admin")
    else:
        if not key:
            raise ApiError(401, "missing_api_key", "send an API key in the X-API-Key header", headers={"WWW-Authenticate": "APIKey"})
        with runtime.sessions() as session:
            # A key with control characters is no key of ours: never sent to the database.
            row = crud.find_api_key(session, key) if control_character(key) is None else None
            now = datetime.now(UTC)
            if row is None:
                raise ApiError(401, "invalid_api_key", "this API key is not known", headers={"WWW-Authenticate": "APIKey"})
            # The audit of a refusal names the key (never records the key itself).
            request.state.key_name = row.name
            if row.revoked_at is not None:
                raise ApiError(401, "revoked_api_key", "this API key has been revoked", headers={"WWW-Authenticate": "APIKey"})
            expires = crud.as_aware(row.expires_at)
            if expires is not None and expires <= now:
                raise ApiError(401, "expired_api_key", "this API key has expired", headers={"WWW-Authenticate": "APIKey"})
            principal = Principal(row.id, row.name, row.scope)
            last = crud.as_aware(row.last_used_at)
            if last is None or (now - last).total_seconds() > 60:
                # Touch at most once a minute: a write per identify would cost more than the scan.
                row.last_used_at = now
                session.commit()
    request.state.principal = principal
    if needed == "admin" and principal.scope != "admin":
        raise ApiError(403, "insufficient_scope", f"this endpoint needs an admin key; {principal.name!r} is a {principal.scope} key")
    limit = parse(runtime.settings.RATE_LIMIT_DOOR if needed == "door" else runtime.settings.RATE_LIMIT_ADMIN)
    bucket = f"{principal.key_id or principal.name}:{needed}"
    if not _limiter.hit(limit, bucket):
        reset = _limiter.get_window_stats(limit, bucket).reset_time
        retry = max(1, int(reset - datetime.now(UTC).timestamp() + 0.999))
        raise ApiError(429, "rate_limited", f"more than {limit} requests for this key", headers={"Retry-After": str(retry)})
    return principal


def door_key(request: Request, runtime: RuntimeDep, key: Annotated[str | None, Security(api_key_header)]) -> Principal:
    return _authenticate(request, runtime, key, "door")


def admin_key(request: Request, runtime: RuntimeDep, key: Annotated[str | None, Security(api_key_header)]) -> Principal:
    return _authenticate(request, runtime, key, "admin")


DoorKey = Annotated[Principal, Depends(door_key)]
AdminKey = Annotated[Principal, Depends(admin_key)]


def require_multipart(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "expected_multipart", f"send frames as multipart/form-data, not {content_type or 'no content type'}")


Multipart = Depends(require_multipart)


def attempt(kind: str) -> Any:
    """A route dependency naming what the request attempts, listed first in the route's
    ``dependencies``: it runs before the key is checked and the form validated, so an attempt
    refused by either is audited under its kind too."""

    def name_the_attempt(request: Request) -> None:
        fields: dict[str, Any] = {"kind": kind}
        raw = request.path_params.get("person_id")
        if isinstance(raw, str) and raw.isdigit() and 1 <= int(raw) < 2**63:
            fields["person_id"] = int(raw)
        request.state.audit = fields

    return Depends(name_the_attempt)


def audit_context(request: Request, kind: str, **fields: Any) -> None:
    """Remember what is being attempted (with what the route has validated by now), so a
    refused attempt is audited too."""
    request.state.audit = {**(getattr(request.state, "audit", None) or {}), "kind": kind, **fields}
