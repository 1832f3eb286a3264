"""The FastAPI application: built in a factory, the model loaded once in the lifespan hook."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import DBAPIError, InterfaceError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import ApiError
from app.api.routes import analyze, deletion, events, health, keys, persons, recognition, threshold
from app.core.config import Settings, get_settings
from app.core.errors import DomainError
from app.core.logging import configure_logging, request_id_var
from app.core.metrics import MODEL, REQUEST_SECONDS, REQUESTS, TEMPLATES
from app.core.validation import MAX_METADATA_DEPTH, deep_member
from app.services import admin, audit
from app.services.audit import Actor
from app.services.runtime import Runtime

log = logging.getLogger("facegate")
CONSOLE_DIR = Path(__file__).parent / "console"

DESCRIPTION = """
Face recognition for door access. Door controllers POST bursts of frames to
`/v1/identify`; admins enrol, list and delete people and manage the threshold.

Every call needs an API key in `X-API-Key` (press **Authorize**): `door` keys may identify
and verify, `admin` keys may do everything. Errors always answer
`{"code": ..., "message": ..., "details": ...}` with a stable `code` (the README lists them all),
and carry the `X-Request-ID` header.
"""

# Codes for the HTTP-level refusals raised by the framework itself (routing, body parsing).
HTTP_ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
HTTP_ERROR_FALLBACK = "http_error"
# How often a replica that started without its database says it is still waiting.
DB_WAIT_LOG_S = 5.0


class BodyLimit:
    """Refuse request bodies above MAX_REQUEST_BYTES with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = ApiError(413, "request_too_large", f"request bodies are limited to {self.max_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse(status_code=413, content=too_large.body())(scope, receive, send)
            return
        received = 0
        started = exceeded = replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise too_large
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                if exceeded and not started:
                    # FastAPI turns an error raised while it reads the body into a 400 "error
                    # parsing the body" (wrapped in an ExceptionGroup by the HTTP middleware):
                    # whatever the app made of the cut-off body, the answer is 413.
                    replaced = started = True
                    await JSONResponse(status_code=413, content=too_large.body())(scope, receive, send)
                    return
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ApiError as exc:
            if started:
                raise
            await JSONResponse(status_code=exc.status, content=exc.body())(scope, receive, send)


class Observe:
    """Request id, the 500 shape, metrics and the request log line, for every request.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs the
    app in a task group and streams the response through memory channels, about a
    millisecond per request that a door waits for.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")
        if not request_id or len(request_id) > 64 or not request_id.isprintable():
            request_id = uuid.uuid4().hex
        started = time.perf_counter()
        scope.setdefault("state", {})["started"] = started
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Whatever failed, the client gets the error shape, the request id and a log line.
            log.exception("unhandled error", extra={"fields": {"method": scope.get("method"), "path": scope.get("path")}})
            if response_started:
                raise
            error = ApiError(500, "internal_error", "internal error; quote the X-Request-ID header when reporting it")
            await asyncio.to_thread(_audit_refusal, Request(scope), error.status, error.code)
            await JSONResponse(status_code=error.status, content=error.body())(scope, receive, send_with_id)
        finally:
            route: Any = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            seconds = time.perf_counter() - started
            REQUESTS.labels(scope.get("method", ""), endpoint, str(status)).inc()
            REQUEST_SECONDS.labels(endpoint).observe(seconds)
            log.info(
                "request",
                extra={"fields": {"method": scope.get("method"), "path": endpoint, "status": status, "ms": round(seconds * 1000, 2)}},
            )
            request_id_var.reset(token)


def _error_response(request: Request, exc: ApiError) -> JSONResponse:
    _audit_refusal(request, exc.status, exc.code)
    return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers)


def _audit_refusal(request: Request, status: int, code: str) -> None:
    """Record a refusal in its own transaction: every refused attempt (identify, enrol, ...)
    and every 401 and 403 on any endpoint. The key's name is recorded when the key is known,
    never the key itself. Rate-limited calls (429) and database outages (503) are not."""
    context = getattr(request.state, "audit", None)
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or status in (429, 503):
        return
    if not context:
        if status not in (401, 403):
            return
        # Refused before the route ran: the operation is the route's name (e.g. list_persons).
        context = {"kind": getattr(request.scope.get("route"), "name", None) or "unknown"}
    principal: Actor | None = getattr(request.state, "principal", None)
    key_name = principal.name if principal else getattr(request.state, "key_name", None)
    try:
        with runtime.sessions() as session:
            audit.record_refusal(
                session,
                kind=context.get("kind", "unknown"),
                code=code,
                status_code=status,
                key_name=key_name,
                request_id=request_id_var.get(),
                started=getattr(request.state, "started", None),
                model_id=runtime.model_id,
                door_id=context.get("door_id"),
                person_id=context.get("person_id"),
            )
            session.commit()
    except Exception:
        log.warning("could not record refused attempt", exc_info=True)


def _validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """One stable code for a request that failed validation, most specific first."""
    details = {"errors": errors}
    if any(e["loc"][-1:] == ["frames"] and e["type"] == "missing" for e in errors):
        return ApiError(422, "no_frames", "send at least one frame in the 'frames' field", details)
    # string_unicode: pydantic's own refusal of a lone surrogate in a str field.
    text = [e for e in errors if e["type"] in ("invalid_text", "string_unicode")]
    if text:
        field = ".".join(str(part) for part in text[0]["loc"][1:]) or "body"
        return ApiError(422, "invalid_text", f"{field}: {text[0]['msg']}", details)
    metadata = [e for e in errors if e["loc"][1:2] == ["metadata"]]
    if metadata:
        return ApiError(422, "invalid_metadata", str(metadata[0]["msg"]), details)
    return ApiError(422, "invalid_request", "the request is not valid", details)


_PART_LIMIT_KIB = MultiPartParser.max_part_size // 1024


def _oversized_part(exc: StarletteHTTPException) -> str | None:
    """For a 400 raised because a form text field went over the part size: the field's name
    ("" when it cannot be told); None for any other 400.

    Starlette's exception does not name the field, but the parser that raised it knows it: it
    is read from the parser's frame in the traceback (``_current_part.field_name``).
    """
    cause = exc.__cause__ or exc.__context__
    if not isinstance(cause, MultiPartException) or "exceeded maximum size" not in cause.message:
        return None
    name = ""
    tb = cause.__traceback__
    while tb is not None:
        part = getattr(tb.tb_frame.f_locals.get("self"), "_current_part", None)
        name = getattr(part, "field_name", None) or name
        tb = tb.tb_next
    return name


def _is_outage(exc: Exception) -> bool:
    """Connection trouble, as opposed to a statement the database refused (bad data, a bug)."""
    return isinstance(exc, OperationalError | InterfaceError | InternalError | PoolTimeout) or bool(
        getattr(exc, "connection_invalidated", False)
    )


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return await asyncio.to_thread(_error_response, request, exc)

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        return await asyncio.to_thread(_error_response, request, ApiError.from_domain(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return await asyncio.to_thread(_error_response, request, _validation_error(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # A JSON body nested past the parser's recursion limit: a validation error of the
            # member it is nested in (e.g. body.metadata), not an unreadable body.
            try:
                member = deep_member(await request.body(), MAX_METADATA_DEPTH + 1)
            except Exception:
                member = None
            loc: list[Any] = ["body", member] if member else ["body"]
            message = f"the JSON is nested deeper than {MAX_METADATA_DEPTH} levels"
            return await validation_error(request, RequestValidationError([{"loc": loc, "msg": message, "type": "json_too_deep"}]))
        oversized = _oversized_part(exc)
        if oversized is not None:
            # A text field over the form parser's part size (1 MiB) is as invalid as one just
            # over its own limit, and answers the same code (invalid_metadata for metadata).
            loc = ["body", oversized] if oversized else ["body"]
            message = f"{oversized or 'a text field'} is over the {_PART_LIMIT_KIB} KiB a form text field may hold"
            return await validation_error(request, RequestValidationError([{"loc": loc, "msg": message, "type": "part_too_large"}]))
        error = ApiError(exc.status_code, HTTP_ERROR_CODES.get(exc.status_code, HTTP_ERROR_FALLBACK), str(exc.detail))
        return JSONResponse(status_code=exc.status_code, content=error.body(), headers=getattr(exc, "headers", None))

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(DBAPIError)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        if not _is_outage(exc):
            # The database is up and refused a statement: a bug, answered as one (500).
            raise exc
        log.error("database unavailable: %s", exc.__class__.__name__)
        error = ApiError(503, "database_unavailable", "the database is unreachable; nothing was stored, retry shortly")
        return JSONResponse(status_code=503, content=error.body(), headers={"Retry-After": "2"})


def _sync_index(runtime: Runtime) -> None:
    TEMPLATES.set(admin.warm_index(runtime))


async def _wait_for_database(runtime: Runtime) -> None:
    """Until the database answers: one log line every DB_WAIT_LOG_S, then one when it does."""
    url = runtime.engine.url.render_as_string(hide_password=True)
    waited = 0.0
    while True:
        await asyncio.sleep(DB_WAIT_LOG_S)
        waited += DB_WAIT_LOG_S
        try:
            await asyncio.to_thread(_sync_index, runtime)
        except (OperationalError, DBAPIError) as exc:
            log.warning("waiting for the database at %s (%.0f s so far, %s)", url, waited, exc.__class__.__name__)
            continue
        log.info("database at %s reachable after %.0f s", url, waited, extra={"fields": {"templates": len(runtime.index)}})
        return


async def _purge_loop(runtime: Runtime) -> None:
    settings = runtime.settings
    while True:
        await asyncio.sleep(settings.PURGE_INTERVAL_S)
        try:
            await asyncio.to_thread(purge, runtime)
        except Exception:
            log.warning("event purge failed", exc_info=True)


def purge(runtime: Runtime) -> tuple[int, int]:
    """Delete events older than the retention and tombstones every replica has seen."""
    with runtime.sessions() as session:
        gone = admin.purge(session, retention_days=runtime.settings.EVENT_RETENTION_DAYS)
        session.commit()
    return gone


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or Runtime(settings)
        app.state.runtime = rt
        MODEL.info({"model_id": rt.model_id, "alignment": rt.package.manifest.alignment_version})
        tasks = [asyncio.create_task(_purge_loop(rt))]
        try:
            _sync_index(rt)
        except (OperationalError, DBAPIError) as exc:
            # Serve anyway: /readyz reports the outage, every request retries the sync, and a
            # background task says it is waiting every few seconds until the database answers.
            log.error("database unreachable at start-up (%s); serving, and waiting for it", exc.__class__.__name__)
            tasks.append(asyncio.create_task(_wait_for_database(rt)))
        for attribute, why in rt.attributes.unavailable.items():
            log.info("attribute model unavailable", extra={"fields": {"task": attribute, "why": why}})
        log.info("ready", extra={"fields": {"model_id": rt.model_id, "templates": len(rt.index), "attributes": rt.attributes.model_ids()}})
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if runtime is None:
                rt.close()

    # The docs pages' Swagger UI and ReDoc assets are served by this process (fastapi-offline
    # ships FastAPI's own CDN files in the wheel): door servers often have no internet.
    app = FastAPIOffline(
        title="facegate",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "recognition", "description": "door controllers: identify and verify"},
            {"name": "persons", "description": "enrolment and people"},
            {"name": "deletion", "description": "confirm-by-face deletion"},
            {"name": "analysis", "description": "face attributes (expression; opt-in gender and age): never part of a decision"},
            {"name": "threshold", "description": "the recognition threshold"},
            {"name": "keys", "description": "API keys"},
            {"name": "audit", "description": "the audit log"},
            {"name": "health", "description": "liveness, readiness, metrics"},
        ],
    )
    install_handlers(app)

    for module in (recognition, analyze, persons, deletion, threshold, health, keys, events):
        app.include_router(module.router)
    # The operators' console: static files over the same API (no build step, no CDN).
    app.mount("/console", StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
    app.add_middleware(BodyLimit, max_bytes=settings.MAX_REQUEST_BYTES)
    app.add_middleware(Observe)
    return app


def app_factory() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    return create_app(settings)
