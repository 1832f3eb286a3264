"""The FastAPI application: built in a factory, the model loaded once in the lifespan hook."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.routes import deletion, events, health, keys, persons, recognition
from app.core.config import Settings, get_settings
from app.core.errors import ApiError
from app.core.logging import configure_logging, request_id_var
from app.core.metrics import MODEL, REQUEST_SECONDS, REQUESTS, TEMPLATES
from app.recognition import Runtime
from app.store import crud

log = logging.getLogger("facegate")

DESCRIPTION = """
Face recognition for door access. Door controllers POST bursts of frames to
`/v1/identify`; admins enrol, list and delete people and manage the threshold.

Every call needs an API key in `X-API-Key` (press **Authorize**): `door` keys may identify
and verify, `admin` keys may do everything. Errors always answer
`{"code": ..., "message": ..., "details": ...}` with a stable `code`.
"""


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


def _error_response(request: Request, exc: ApiError) -> JSONResponse:
    _audit_refusal(request, exc.status, exc.code)
    return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers)


def _audit_refusal(request: Request, status: int, code: str) -> None:
    """A refused identify/enrol/... is still an attempt: record it in its own transaction."""
    context = getattr(request.state, "audit", None)
    runtime = getattr(request.app.state, "runtime", None)
    if not context or runtime is None or status in (401, 429, 503):
        return
    principal = getattr(request.state, "principal", None)
    try:
        with runtime.sessions() as session:
            crud.record_event(
                session,
                kind=context.get("kind", "unknown"),
                door_id=context.get("door_id"),
                person_id=context.get("person_id"),
                decision="error",
                reason=code,
                status_code=status,
                request_id=request_id_var.get(),
                key_name=principal.name if principal else None,
                model_id=runtime.model_id,
                latency_ms=round((time.perf_counter() - request.state.started) * 1000, 2),
            )
            session.commit()
    except Exception:
        log.warning("could not record refused attempt", exc_info=True)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return await asyncio.to_thread(_error_response, request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        missing_frames = any(e["loc"][-1:] == ["frames"] and e["type"] == "missing" for e in errors)
        error = ApiError(
            422,
            "no_frames" if missing_frames else "invalid_request",
            "send at least one frame in the 'frames' field" if missing_frames else "the request is not valid",
            {"errors": errors},
        )
        return await asyncio.to_thread(_error_response, request, error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "request_too_large"}
        error = ApiError(exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"), str(exc.detail))
        return JSONResponse(status_code=exc.status_code, content=error.body(), headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(DBAPIError)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable: %s", exc.__class__.__name__)
        error = ApiError(503, "database_unavailable", "the database is unreachable; nothing was stored, retry shortly")
        return JSONResponse(status_code=503, content=error.body(), headers={"Retry-After": "2"})


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
        events_gone = crud.purge_events(session, crud.utcnow() - timedelta(days=runtime.settings.EVENT_RETENTION_DAYS))
        tombstones_gone = crud.purge_tombstones(session, crud.utcnow() - timedelta(days=1))
        session.commit()
    return events_gone, tombstones_gone


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or Runtime(settings)
        app.state.runtime = rt
        MODEL.info({"model_id": rt.model_id, "alignment": rt.package.manifest["alignment_version"]})
        try:
            with rt.sessions() as session:
                rt.index.sync(session)
            TEMPLATES.set(len(rt.index))
        except (OperationalError, DBAPIError):
            # Serve anyway: /readyz reports the outage and every request retries the sync.
            log.error("database unreachable at start-up; will retry on each request")
        log.info("ready", extra={"fields": {"model_id": rt.model_id, "templates": len(rt.index)}})
        purger = asyncio.create_task(_purge_loop(rt))
        try:
            yield
        finally:
            purger.cancel()
            if runtime is None:
                rt.close()

    app = FastAPI(
        title="facegate",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "recognition", "description": "door controllers: identify and verify"},
            {"name": "persons", "description": "enrolment and people"},
            {"name": "deletion", "description": "confirm-by-face deletion"},
            {"name": "threshold", "description": "the recognition threshold"},
            {"name": "keys", "description": "API keys"},
            {"name": "audit", "description": "the audit log"},
            {"name": "health", "description": "liveness, readiness, metrics"},
        ],
    )
    install_handlers(app)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        if len(request_id) > 64 or not request_id.isprintable():
            request_id = uuid.uuid4().hex
        token = request_id_var.set(request_id)
        request.state.started = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            request_id_var.reset(token)
        route: Any = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        seconds = time.perf_counter() - request.state.started
        REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(endpoint).observe(seconds)
        response.headers["X-Request-ID"] = request_id
        token = request_id_var.set(request_id)
        log.info(
            "request",
            extra={"fields": {"method": request.method, "path": endpoint, "status": response.status_code, "ms": round(seconds * 1000, 2)}},
        )
        request_id_var.reset(token)
        return response

    for module in (recognition, persons, deletion, health, keys, events):
        app.include_router(module.router)
    from app.api.routes import threshold

    app.include_router(threshold.router)
    app.add_middleware(BodyLimit, max_bytes=settings.MAX_REQUEST_BYTES)
    return app


def app_factory() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    return create_app(settings)
