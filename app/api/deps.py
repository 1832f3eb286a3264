"""Dependencies: the runtime, a database session, the calling key (an Actor) and its rate limit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from app.core.logging import request_id_var
from app.services import auth
from app.services.audit import Actor
from app.services.runtime import Runtime
from app.store.db import session_scope

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key from `facegate keys create` or POST /v1/keys")
_limiter = MovingWindowRateLimiter(MemoryStorage())


# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency on its
# thread pool, a thread hop per dependency per request for a door waiting on the answer.
async def get_runtime(request: Request) -> Runtime:
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


def _authenticate(
    request: Request, runtime: Runtime, session: Session, key: str | None, needed: Literal["door", "analysis", "admin"]
) -> Actor:
    """The key is read on the request's own session: one connection and transaction per request."""
    if not runtime.settings.AUTH_ENABLED:
        actor = Actor(name="anonymous", scope="admin")
    else:
        try:
            actor = auth.authenticate(session, key, needed=needed)
        except (auth.KeyRefused, auth.ScopeRefused) as exc:
            # The audit of a refusal names the key (never records the key itself).
            request.state.key_name = exc.key_name
            raise
    actor = replace(actor, request_id=request_id_var.get(), started=getattr(request.state, "started", None))
    request.state.principal = actor
    limit = parse(runtime.settings.RATE_LIMIT_ADMIN if needed == "admin" else runtime.settings.RATE_LIMIT_DOOR)
    bucket = f"{actor.key_id or actor.name}:{needed}"
    if not _limiter.hit(limit, bucket):
        reset = _limiter.get_window_stats(limit, bucket).reset_time
        retry = max(1, int(reset - datetime.now(UTC).timestamp() + 0.999))
        raise ApiError(429, "rate_limited", f"more than {limit} requests for this key", headers={"Retry-After": str(retry)})
    return actor


def door_key(request: Request, runtime: RuntimeDep, session: SessionDep, key: Annotated[str | None, Security(api_key_header)]) -> Actor:
    return _authenticate(request, runtime, session, key, "door")


def admin_key(request: Request, runtime: RuntimeDep, session: SessionDep, key: Annotated[str | None, Security(api_key_header)]) -> Actor:
    return _authenticate(request, runtime, session, key, "admin")


def analysis_key(request: Request, runtime: RuntimeDep, session: SessionDep, key: Annotated[str | None, Security(api_key_header)]) -> Actor:
    return _authenticate(request, runtime, session, key, "analysis")


DoorKey = Annotated[Actor, Depends(door_key)]
AnalysisKey = Annotated[Actor, Depends(analysis_key)]
AdminKey = Annotated[Actor, Depends(admin_key)]


async def require_multipart(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "expected_multipart", f"send frames as multipart/form-data, not {content_type or 'no content type'}")


Multipart = Depends(require_multipart)


def attempt(kind: str) -> Any:
    """A route dependency naming what the request attempts, listed first in the route's
    ``dependencies``: it runs before the key is checked and the form validated, so an attempt
    refused by either is audited under its kind too."""

    async def name_the_attempt(request: Request) -> None:
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
