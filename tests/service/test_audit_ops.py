"""Audit and operations: refusals and real status codes in the audit log, the CLI on a new
database, the documented PATCH semantics, and a server that says it is waiting for its database.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text

import app.main
from app import cli
from app.api import deps
from app.core.config import REPO_ROOT, get_settings
from app.main import create_app
from app.services.runtime import Runtime
from app.store.db import make_session_factory
from app.store.models import Event
from tests.service.conftest import make_key, multipart, stale_keys
from tests.service.inputs import grey_jpeg, seed_person

# -- 401 and 403 are audited, without the key ---------------------------------------------------------


def test_every_auth_refusal_is_audited_without_the_key(client: TestClient, clean_runtime: Runtime) -> None:
    rt = clean_runtime
    revoked, expired = stale_keys(rt, "gone-key", "old-key")
    door, admin = make_key(rt, "door", "lobby-door"), make_key(rt, "admin", "auditor")
    unknown = "fg_000000000000_" + "s3cr3t" * 8
    frames = multipart([grey_jpeg(64)], door_id="front")
    calls = [
        # (key sent, method, path, request kwargs) -> (status, code, kind, key_name)
        (None, "POST", "/v1/identify", frames, (401, "missing_api_key", "identify", None)),
        (unknown, "POST", "/v1/identify", frames, (401, "invalid_api_key", "identify", None)),
        ("not-even-a-key", "GET", "/v1/persons", {}, (401, "invalid_api_key", "list_persons", None)),
        (revoked, "GET", "/v1/events", {}, (401, "revoked_api_key", "list_events", "gone-key")),
        (expired, "POST", "/v1/keys", {"json": {"name": "x", "scope": "door"}}, (401, "expired_api_key", "create_key", "old-key")),
        (door, "GET", "/v1/persons", {}, (403, "insufficient_scope", "list_persons", "lobby-door")),
        (door, "POST", "/v1/persons", multipart([grey_jpeg(64)] * 3, name="Eve"), (403, "insufficient_scope", "enrol", "lobby-door")),
    ]
    for key, method, path, kwargs, (status, code, _, _) in calls:
        headers = {"X-API-Key": key} if key is not None else {}
        response = client.request(method, path, headers=headers, **kwargs)
        assert (response.status_code, response.json()["code"]) == (status, code), (path, response.text)

    listed = client.get("/v1/events", headers={"X-API-Key": admin}, params={"decision": "error", "limit": 500})
    events = sorted(listed.json()["data"], key=lambda e: e["id"])
    assert [(e["status_code"], e["reason"], e["kind"], e["key_name"]) for e in events] == [expected for *_, expected in calls]
    assert all(e["request_id"] for e in events)
    # The presented keys are nowhere in the log, whole or in part.
    text = json.dumps(events)
    for key in (unknown, revoked, expired, door):
        assert key not in text and key.split("_", 2)[-1] not in text


def test_rate_limited_calls_are_still_not_audited(clean_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    deps._limiter.storage.reset()
    limited = clean_runtime.settings.model_copy(update={"RATE_LIMIT_ADMIN": "1/minute"})
    monkeypatch.setattr(clean_runtime, "settings", limited)
    key = make_key(clean_runtime, "admin")
    try:
        with TestClient(create_app(limited, runtime=clean_runtime), raise_server_exceptions=False) as c:
            statuses = [c.get("/v1/persons", headers={"X-API-Key": key}).status_code for _ in range(3)]
    finally:
        deps._limiter.storage.reset()
    assert statuses == [200, 429, 429]
    with clean_runtime.sessions() as session:
        assert session.execute(select(func.count()).select_from(Event)).scalar_one() == 0


# -- the audit log records the status the client got ---------------------------------------------------


def test_created_key_is_audited_as_201(admin: TestClient) -> None:
    made = admin.post("/v1/keys", json={"name": "front-door", "scope": "door"})
    assert made.status_code == 201
    (event,) = admin.get("/v1/events", params={"kind": "key_created"}).json()["data"]
    assert event["status_code"] == 201
    revoked = admin.delete(f"/v1/keys/{made.json()['id']}")
    assert revoked.status_code == 200
    (event,) = admin.get("/v1/events", params={"kind": "key_revoked"}).json()["data"]
    assert event["status_code"] == 200


def test_creations_with_faces_are_audited_as_201(admin: TestClient, door_faces: dict[str, list[bytes]]) -> None:
    """Enrol and the deletion request answer 201 and are audited as 201; add-frames answers
    in the shape of enrolment."""
    assert admin.put("/v1/threshold", json={"threshold": 0.01}).status_code == 200
    photos = door_faces[next(iter(door_faces))][:3]
    enrolled = admin.post("/v1/persons", **multipart(photos, name="Ada"))
    assert enrolled.status_code == 201, enrolled.text
    asked = admin.post("/v1/deletion-requests", **multipart(photos))
    assert asked.status_code == 201, asked.text
    added = admin.post(f"/v1/persons/{enrolled.json()['id']}/frames", **multipart(photos))
    assert added.status_code == 200, added.text
    assert set(added.json()) == set(enrolled.json())
    assert added.json()["frame_count"] == 6 and len(added.json()["frames"]) == 3

    statuses = {e["kind"]: e["status_code"] for e in admin.get("/v1/events").json()["data"]}
    assert (statuses["enrol"], statuses["deletion_request"], statuses["add_frames"]) == (201, 201, 200)


# -- PATCH semantics and response shapes, documented -----------------------------------------------


def test_patch_replaces_metadata_and_says_so(admin: TestClient, clean_runtime: Runtime) -> None:
    pid = seed_person(clean_runtime, "Ada")
    assert admin.patch(f"/v1/persons/{pid}", json={"metadata": {"badge": "A-17", "floor": 3}}).status_code == 200
    replaced = admin.patch(f"/v1/persons/{pid}", json={"metadata": {"badge": "A-18"}}).json()
    assert replaced["metadata"] == {"badge": "A-18"}  # floor is gone: replaced, not merged
    assert admin.patch(f"/v1/persons/{pid}", json={"name": "Ada King"}).json()["metadata"] == {"badge": "A-18"}

    spec = admin.get("/openapi.json").json()
    operation = spec["paths"]["/v1/persons/{person_id}"]["patch"]
    assert "replaces" in operation["description"] and "not merged" in operation["description"]
    field = spec["components"]["schemas"]["PersonUpdate"]["properties"]["metadata"]
    assert "replaces the stored metadata as a whole" in field["description"]
    readme = (REPO_ROOT / "README.md").read_text()
    assert "**PATCH semantics.**" in readme and "**replaces**" in readme

    def response_schema(path: str, status: str) -> Any:
        return spec["paths"][path]["post"]["responses"][status]["content"]["application/json"]["schema"]

    assert response_schema("/v1/persons/{person_id}/frames", "200") == response_schema("/v1/persons", "201")


# -- a server started without its database says it is waiting ----------------------------------------


def _unreachable(rt: Runtime) -> Any:
    if rt.settings.is_sqlite:
        return create_engine("sqlite:////nonexistent-facegate-dir/none.db")
    return create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2})


def test_server_waiting_for_its_database_says_so(
    clean_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rt = clean_runtime
    seed_person(rt, "Waiting")
    real_engine, real_sessions = rt.engine, rt.sessions
    down = _unreachable(rt)
    monkeypatch.setattr(app.main, "DB_WAIT_LOG_S", 0.1)
    monkeypatch.setattr(rt, "engine", down)
    monkeypatch.setattr(rt, "sessions", make_session_factory(down))
    caplog.set_level(logging.INFO, logger="facegate")

    def waiting() -> int:
        return sum(r.getMessage().startswith("waiting for the database") for r in caplog.records)

    try:
        with TestClient(create_app(rt.settings, runtime=rt), raise_server_exceptions=False) as c:
            deadline = time.monotonic() + 10
            while waiting() < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert waiting() >= 3
            assert c.get("/readyz").status_code == 503
            monkeypatch.setattr(rt, "engine", real_engine)
            monkeypatch.setattr(rt, "sessions", real_sessions)

            def reachable() -> bool:
                return any(r.getMessage().startswith("database at ") and "reachable after" in r.getMessage() for r in caplog.records)

            while not reachable() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert reachable()
            assert c.get("/readyz").json()["checks"]["templates"] == 1
            settled = waiting()
            time.sleep(0.3)
            assert waiting() == settled, "still saying it waits once the database answered"
    finally:
        down.dispose()
    assert any("unreachable at start-up" in r.getMessage() for r in caplog.records)


# -- the CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def cli_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """DATABASE_URL of a database that was never migrated (the file does not even exist)."""
    path = tmp_path / "new" / "facegate.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_keys_create_on_a_new_database(cli_database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["keys", "create", "--name", "  alice  ", "--scope", "admin"])
    out, err = capsys.readouterr()
    (created,) = _json_lines(out)
    assert (created["name"], created["scope"]) == ("alice", "admin") and created["key"].startswith("fg_")
    assert err.strip() == "store this key now: it is not shown again"
    assert cli_database.exists()

    cli.main(["keys", "create", "--name", "door", "--scope", "door", "--expires-in-days", "30"])
    cli.main(["keys", "revoke", str(created["id"])])
    capsys.readouterr()
    cli.main(["keys", "list"])
    out, err = capsys.readouterr()
    alice, door = _json_lines(out)
    assert err == ""
    assert alice["expires_at"] is None and alice["last_used_at"] is None and alice["revoked"] is True
    assert door["revoked_at"] is None and door["revoked"] is False
    for moment in (alice["created_at"], alice["revoked_at"], door["created_at"], door["expires_at"]):
        assert datetime.fromisoformat(moment).utcoffset() == timedelta(0), moment
    assert "key" not in alice and "key_hash" not in alice

    # The command line goes through the same service functions as the API: audited alike.
    engine = create_engine(f"sqlite:///{cli_database}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, key_name, reason, status_code FROM events ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("key_created", "cli", "alice:admin", None),
        ("key_created", "cli", "door:door", None),
        ("key_revoked", "cli", "alice", None),
    ]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--name", "x", "--expires-in-days", "-1"], "--expires-in-days"),
        (["--name", "x", "--expires-in-days", "0"], "--expires-in-days"),
        (["--name", "x", "--expires-in-days", "100000"], "--expires-in-days"),
        (["--name", ""], "--name"),
        (["--name", "   "], "--name"),
        (["--name", "a\x00b"], "control characters"),
        (["--name", "x" * 201], "--name"),
    ],
)
def test_keys_create_validates_like_the_api(
    cli_database: Path, capsys: pytest.CaptureFixture[str], args: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        cli.main(["keys", "create", "--scope", "door", *args])
    message = str(refused.value.code)
    assert message.startswith("facegate keys create: ") and complaint in message
    assert "\n" not in message
    assert not cli_database.exists(), "nothing is written for a refused key"


def test_cli_on_an_unreachable_database_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/test")
    monkeypatch.setattr(cli, "ADMIN_WAIT_S", 1.0)
    monkeypatch.setattr(cli, "WAIT_LOG_S", 0.3)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as refused:
            cli.main(["keys", "list"])
    finally:
        get_settings.cache_clear()
    message = str(refused.value.code)
    assert "unreachable" in message and "127.0.0.1:1" in message and "\n" not in message
    _, err = capsys.readouterr()
    waiting = [line for line in err.splitlines() if line.startswith("waiting for the database at ")]
    assert 2 <= len(waiting) <= 5, err
