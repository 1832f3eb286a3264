"""The error contract: even a bug answers the error shape, and every code is documented.

A 500 must carry ``{"code", "message", "details"}`` and the ``X-Request-ID`` header, be counted
in /metrics, be logged with the request id, and be audited when it hits an attempt (identify,
enrol, ...). A statement the database refuses is such a bug, not an outage (503). The README's
table of error codes must list exactly the codes the service can answer.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

import app.services.recognition
from app.core.config import REPO_ROOT
from app.core.logging import JsonFormatter
from app.main import HTTP_ERROR_CODES, HTTP_ERROR_FALLBACK, create_app
from app.services.runtime import Runtime
from tests.service.conftest import multipart
from tests.service.inputs import grey_jpeg

# -- a 500 is still an answer ---------------------------------------------------------------------


def _broken_dependency() -> None:
    raise RuntimeError("a dependency failed")


@pytest.fixture
def failing_app(clean_runtime: Runtime, admin_key: str) -> Iterator[TestClient]:
    """The real app plus routes that fail the ways a bug would."""
    app = create_app(clean_runtime.settings, runtime=clean_runtime)

    @app.get("/v1/test-failures/route")
    def failing_route() -> None:
        raise RuntimeError("a route failed")

    @app.get("/v1/test-failures/dependency", dependencies=[Depends(_broken_dependency)])
    def after_failing_dependency() -> None:
        return None

    @app.get("/v1/test-failures/refused-statement")
    def refused_statement() -> None:
        raise DataError("INSERT ...", {}, Exception("invalid byte sequence for encoding UTF8: 0x00"))

    @app.get("/v1/test-failures/constraint")
    def constraint() -> None:
        raise IntegrityError("INSERT ...", {}, Exception("duplicate key"))

    @app.get("/v1/test-failures/outage")
    def outage() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    with TestClient(app, raise_server_exceptions=True) as client:
        client.headers["X-API-Key"] = admin_key
        yield client


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The service's JSON log lines, formatted as they are emitted (with the request id)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("facegate")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def _count(metrics: str, path: str, status: int) -> float:
    match = re.search(rf'^facegate_requests_total\{{endpoint="{re.escape(path)}",method="GET",status="{status}"\}} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("path", ["/v1/test-failures/route", "/v1/test-failures/dependency", "/v1/test-failures/refused-statement"])
def test_a_500_keeps_the_contract(failing_app: TestClient, json_log: io.StringIO, path: str) -> None:
    before = _count(failing_app.get("/metrics").text, path, 500)
    # raise_server_exceptions=True: the test fails here if the exception escapes the app.
    response = failing_app.get(path, headers={"X-Request-ID": "bug-report-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.headers["X-Request-ID"] == "bug-report-1"
    body = response.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == "internal_error" and body["details"] is None
    assert "failed" not in body["message"] and "0x00" not in body["message"], "internals leaked to the client"
    assert _count(failing_app.get("/metrics").text, path, 500) == before + 1

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    mine = [line for line in lines if line["request_id"] == "bug-report-1"]
    request_line = next(line for line in mine if line["message"] == "request")
    assert (request_line["path"], request_line["status"]) == (path, 500)
    error_line = next(line for line in mine if line["message"] == "unhandled error")
    assert error_line["level"] == "ERROR" and "Traceback" in error_line["exception"]


def test_a_constraint_violation_is_a_500_and_an_outage_a_503(failing_app: TestClient) -> None:
    """Only connection trouble means the database is unavailable."""
    violated = failing_app.get("/v1/test-failures/constraint")
    assert violated.status_code == 500 and violated.json()["code"] == "internal_error"
    down = failing_app.get("/v1/test-failures/outage")
    assert down.status_code == 503 and down.json()["code"] == "database_unavailable"
    assert down.headers["Retry-After"] == "2" and down.headers["X-Request-ID"]


def test_a_500_during_an_attempt_is_audited(
    failing_app: TestClient, door_key: str, monkeypatch: pytest.MonkeyPatch, json_log: io.StringIO
) -> None:
    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the scan crashed")

    monkeypatch.setattr(app.services.recognition, "identify", crash)
    response = failing_app.post(
        "/v1/identify", headers={"X-API-Key": door_key, "X-Request-ID": "crash-1"}, **multipart([grey_jpeg()], door_id="front")
    )
    assert response.status_code == 500 and response.json()["code"] == "internal_error"
    assert response.headers["X-Request-ID"] == "crash-1"
    (event,) = failing_app.get("/v1/events", params={"kind": "identify"}).json()["data"]
    assert (event["decision"], event["reason"], event["status_code"]) == ("error", "internal_error", 500)
    assert (event["door_id"], event["request_id"], event["key_name"]) == ("front", "crash-1", "test-door")


# -- every code is documented ---------------------------------------------------------------------


def _domain_statuses() -> dict[str, int]:
    """Every domain error class in app/ (with its subclasses) -> the status the API maps it to."""
    import app.services.auth  # noqa: F401  (defines KeyRefused and ScopeRefused)
    from app.api.errors import STATUS_OF
    from app.core.errors import DomainError

    statuses: dict[str, int] = {}
    pending: list[type[DomainError]] = [DomainError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        mapped = [s for kind, s in STATUS_OF.items() if issubclass(cls, kind)]
        if mapped:
            statuses[cls.__name__] = mapped[0]
    return statuses


def _raised_codes() -> list[tuple[str, int, str, int]]:
    """(file, line, code, status) of every literal ApiError(status, "code", ...), domain error
    ``Kind("code", ...)`` and ``NotFound.of("kind", ...)`` in app/."""
    domain = _domain_statuses()
    found = []
    for path in sorted((REPO_ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            args = list(node.args)
            if name == "ApiError" and len(args) > 1 and isinstance(args[0], ast.Constant):
                if isinstance(args[1], ast.Constant) and isinstance(args[1].value, str):
                    found.append((path.name, node.lineno, args[1].value, int(args[0].value)))
            elif name in domain and args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                found.append((path.name, node.lineno, args[0].value, domain[name]))
            elif (
                name == "of"
                and getattr(getattr(node.func, "value", None), "id", None) == "NotFound"
                and args
                and isinstance(args[0], ast.Constant)
            ):
                found.append((path.name, node.lineno, f"{args[0].value}_not_found", 404))
    return found


def _codes_in_code() -> set[str]:
    return set(HTTP_ERROR_CODES.values()) | {HTTP_ERROR_FALLBACK} | {code for _, _, code, _ in _raised_codes()}


def _codes_in_readme() -> dict[str, str]:
    """The README's error table: code -> status column."""
    text = (REPO_ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}|other) \|", text, re.M)
    assert rows, "the README has no error table"
    table = dict(rows)
    assert len(table) == len(rows), "a code is listed twice"
    return table


def test_every_error_code_is_documented() -> None:
    in_code, documented = _codes_in_code(), _codes_in_readme()
    assert len(in_code) >= 30
    assert sorted(in_code - set(documented)) == [], "codes the service answers that the README does not list"
    assert sorted(set(documented) - in_code) == [], "codes the README lists that nothing answers"


def test_documented_statuses_match_the_code() -> None:
    """Each literal error raised in app/ agrees with the status the README gives its code."""
    documented = _codes_in_readme()
    for path, line, code, status in _raised_codes():
        assert documented[code] == str(status), (path, line, code)
    for status, code in HTTP_ERROR_CODES.items():
        assert documented[code] == str(status), code
