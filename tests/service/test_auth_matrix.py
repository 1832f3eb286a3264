"""Every endpoint x every kind of credential, read from the app's own OpenAPI document.

A route added later is covered automatically: it must either be listed as public or answer
401 without a key, and this module fails until it knows how to call it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api import deps
from app.core.config import Settings
from app.main import create_app
from app.services.runtime import Runtime
from app.store import crud
from tests.service.conftest import make_key, multipart, stale_keys
from tests.service.inputs import grey_jpeg, seed_person

PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
PUBLIC_DOCS = ["/docs", "/redoc", "/openapi.json"]
DOOR = {("POST", "/v1/identify"), ("POST", "/v1/persons/{person_id}/verify")}
ANALYSIS = {("POST", "/v1/analyze")}


def operations() -> list[tuple[str, str]]:
    # The document depends only on the routes, not on a database or a model package.
    spec = create_app(Settings(LOG_FORMAT="text")).openapi()
    return sorted((method.upper(), path) for path, ops in spec["paths"].items() for method in ops)


SECURED = [op for op in operations() if op not in PUBLIC]


def _request(method: str, path: str, person_id: int, key_id: int) -> dict[str, Any]:
    """How to call each secured operation with a well-formed request."""
    frames = [grey_jpeg(64)]
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/v1/identify"): multipart(frames, door_id="auth-door"),
        ("POST", "/v1/persons/{person_id}/verify"): multipart(frames),
        ("POST", "/v1/persons"): multipart(frames, name="Auth"),
        ("POST", "/v1/persons/{person_id}/frames"): multipart(frames),
        ("POST", "/v1/frames/check"): multipart(frames),
        ("POST", "/v1/analyze"): multipart(frames),
        ("POST", "/v1/deletion-requests"): multipart(frames),
        ("PATCH", "/v1/persons/{person_id}"): {"json": {"name": "Renamed"}},
        ("POST", "/v1/deletion-requests/confirm"): {"json": {"token": "not-a-token"}},
        ("POST", "/v1/keys"): {"json": {"name": "made-in-matrix", "scope": "door"}},
        ("PUT", "/v1/threshold"): {"json": {"threshold": 0.25}},
        ("POST", "/v1/threshold/calibrate"): {"json": {}},
    }
    if method in ("POST", "PUT", "PATCH") and (method, path) not in bodies:
        pytest.fail(f"{method} {path} is new: teach the auth matrix how to call it")
    return {"method": method, "url": path.format(person_id=person_id, key_id=key_id), **bodies.get((method, path), {})}


@pytest.fixture
def credentials(clean_runtime: Runtime) -> dict[str, str]:
    rt = clean_runtime
    revoked, expired = stale_keys(rt)
    return {
        "invalid": "fg_000000000000_" + "x" * 43,
        "malformed": "not-even-a-key",
        "revoked": revoked,
        "expired": expired,
        "door": make_key(rt, "door"),
        "analysis": make_key(rt, "analysis"),
        "door+analysis": make_key(rt, "door+analysis"),
        "admin": make_key(rt, "admin"),
    }


def test_the_matrix_knows_every_operation() -> None:
    ops = set(operations())
    assert ops >= PUBLIC
    assert ops >= DOOR
    assert ops >= ANALYSIS
    assert len(SECURED) >= 15


@pytest.mark.parametrize(("method", "path"), SECURED, ids=[f"{m} {p}" for m, p in SECURED])
def test_every_credential_on_every_endpoint(
    client: TestClient, clean_runtime: Runtime, credentials: dict[str, str], method: str, path: str
) -> None:
    person_id = seed_person(clean_runtime)
    with clean_runtime.sessions() as session:
        _, spare = crud.create_api_key(session, name="spare", scope="door")
        session.commit()
        key_id = spare.id
    request = _request(method, path, person_id, key_id)

    def call(key: str | None) -> Any:
        headers = {"X-API-Key": key} if key is not None else {}
        return client.request(**request, headers=headers)

    expected_401 = {
        None: "missing_api_key",
        "": "missing_api_key",
        credentials["invalid"]: "invalid_api_key",
        credentials["malformed"]: "invalid_api_key",
        credentials["revoked"]: "revoked_api_key",
        credentials["expired"]: "expired_api_key",
    }
    for key, code in expected_401.items():
        response = call(key)
        assert response.status_code == 401, (key, response.text)
        assert response.json()["code"] == code
        assert response.headers["WWW-Authenticate"] == "APIKey"

    door = call(credentials["door"])
    if (method, path) in DOOR:
        assert door.status_code == 200, door.text
    else:
        assert door.status_code == 403, door.text
        assert door.json()["code"] == "insufficient_scope"

    # Analysis keys read face attributes and open no door; a door key granted analysis does both.
    for scope, allowed in (("analysis", ANALYSIS), ("door+analysis", DOOR | ANALYSIS)):
        answer = call(credentials[scope])
        if (method, path) in allowed:
            assert answer.status_code not in (401, 403) and answer.status_code < 500, (scope, answer.text)
        else:
            assert answer.status_code == 403 and answer.json()["code"] == "insufficient_scope", (scope, answer.text)

    admin = call(credentials["admin"])
    assert admin.status_code not in (401, 403), admin.text
    assert admin.status_code < 500, admin.text


def test_openapi_declares_the_api_key_scheme(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert len(schemes) == 1
    ((name, scheme),) = schemes.items()
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": scheme["description"]}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if (method.upper(), path) in PUBLIC:
                assert "security" not in op, (method, path)
            else:
                assert op["security"] == [{name: []}], (method, path)
                assert {"401", "429", "503"} <= set(op["responses"]), (method, path)
    # The "Authorize" button of the interactive docs comes from that scheme.
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text


def test_public_endpoints_need_no_key(client: TestClient) -> None:
    for method, path in sorted(PUBLIC):
        response = client.request(method, path)
        assert response.status_code == 200, (path, response.text)
    for path in PUBLIC_DOCS:
        assert client.get(path).status_code == 200, path


def test_a_revoked_key_stops_working_at_once(admin: TestClient, clean_runtime: Runtime) -> None:
    made = admin.post("/v1/keys", json={"name": "short-lived", "scope": "admin"}).json()
    with TestClient(admin.app, raise_server_exceptions=False) as other:
        other.headers["X-API-Key"] = made["key"]
        assert other.get("/v1/persons").status_code == 200
        assert admin.delete(f"/v1/keys/{made['id']}").status_code == 200
        refused = other.get("/v1/persons")
        assert refused.status_code == 401 and refused.json()["code"] == "revoked_api_key"


def test_auth_disabled_serves_anonymously(clean_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clean_runtime, "settings", clean_runtime.settings.model_copy(update={"AUTH_ENABLED": False}))
    with TestClient(create_app(clean_runtime.settings, runtime=clean_runtime), raise_server_exceptions=False) as anonymous:
        assert anonymous.get("/v1/persons").status_code == 200


# -- rate limits ---------------------------------------------------------------------------------


@pytest.fixture
def fresh_limiter() -> Iterator[None]:
    """The limiter is process-wide and SQLite reuses key ids after a wipe: start from nothing."""
    deps._limiter.storage.reset()
    yield
    deps._limiter.storage.reset()


@pytest.fixture
def limited_client(clean_runtime: Runtime, fresh_limiter: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    # Per minute rather than per second: the third call must land in the window on a loaded machine.
    limited = clean_runtime.settings.model_copy(update={"RATE_LIMIT_DOOR": "2/minute", "RATE_LIMIT_ADMIN": "3/minute"})
    monkeypatch.setattr(clean_runtime, "settings", limited)
    with TestClient(create_app(limited, runtime=clean_runtime), raise_server_exceptions=False) as c:
        yield c


def test_rate_limit_answers_429_with_retry_after(limited_client: TestClient, clean_runtime: Runtime) -> None:
    door, other_door, admin = make_key(clean_runtime, "door"), make_key(clean_runtime, "door"), make_key(clean_runtime, "admin")
    no_frames = {"data": {"door_id": "rl"}, "files": {"note": ("n.txt", b"x", "text/plain")}}
    for _ in range(2):
        # Authenticated and counted, then refused for having no frames: cheap calls.
        r = limited_client.post("/v1/identify", headers={"X-API-Key": door}, **no_frames)
        assert r.status_code == 422 and r.json()["code"] == "no_frames"
    third = limited_client.post("/v1/identify", headers={"X-API-Key": door}, **multipart([grey_jpeg(64)]))
    assert third.status_code == 429, third.text
    assert third.json()["code"] == "rate_limited"
    assert 1 <= int(third.headers["Retry-After"]) <= 60
    # Verify shares the door bucket of that key.
    assert limited_client.post("/v1/persons/1/verify", headers={"X-API-Key": door}, **no_frames).status_code == 429

    # Another key has its own bucket.
    assert limited_client.post("/v1/identify", headers={"X-API-Key": other_door}, **no_frames).status_code == 422

    # Admin calls count against the admin limit.
    statuses = [limited_client.get("/v1/persons", headers={"X-API-Key": admin}).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]

    # Refusals for rate limiting are not written to the audit log (they would let a flood fill it).
    events = [limited_client.get("/v1/events", headers={"X-API-Key": make_key(clean_runtime, "admin")}).json()]
    assert all(e["reason"] != "rate_limited" for e in events[0]["data"])


def test_rate_limit_per_second_window(clean_runtime: Runtime, fresh_limiter: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's setting, RATE_LIMIT_DOOR=2/second: at most two of a quick burst pass."""
    limited = clean_runtime.settings.model_copy(update={"RATE_LIMIT_DOOR": "2/second"})
    monkeypatch.setattr(clean_runtime, "settings", limited)
    door = make_key(clean_runtime, "door")
    with TestClient(create_app(limited, runtime=clean_runtime), raise_server_exceptions=False) as c:
        no_frames = {"files": {"note": ("n.txt", b"x", "text/plain")}}
        responses = [c.post("/v1/identify", headers={"X-API-Key": door}, **no_frames) for _ in range(6)]
    statuses = [r.status_code for r in responses]
    # The first two always pass; six calls in well under a second on any machine meet the limit.
    assert statuses[:2] == [422, 422] and 429 in statuses, statuses
    refused = responses[statuses.index(429)]
    assert refused.json()["code"] == "rate_limited" and refused.headers["Retry-After"] == "1"
