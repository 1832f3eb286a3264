"""Service fixtures: one Runtime per database backend, wiped between tests.

Every service test runs against SQLite and against the PostgreSQL server on 127.0.0.1:5432
(database ``test``); the Postgres half skips with a reason when that server is unreachable.
Tests that need real faces read ../shared and skip with a reason when it is absent.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from app.cli import migrate
from app.core.config import REPO_ROOT, SHARED_DIR, Settings
from app.main import create_app
from app.matching.index import TemplateIndex
from app.services.runtime import Runtime
from app.store import crud
from app.store.db import make_session_factory
from app.vision.embedder import find_package, list_packages

SHARED = SHARED_DIR
FACES = SHARED / "data" / "faces"
PG_URL = os.environ.get("FACEGATE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = ["events", "deletion_requests", "template_deletions", "frame_embeddings", "templates", "persons", "api_keys"]


def model_store() -> Path:
    store = Path(os.environ.get("FACEGATE_TEST_MODEL_STORE", REPO_ROOT / "model_store"))
    if not list_packages(store):
        pytest.skip(f"no model package in {store}: run the training pipeline and training.export first")
    return store


def postgres_reachable() -> str | None:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"


def reset_postgres() -> None:
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def test_settings(url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "DATABASE_URL": url,
        "MODEL_STORE": model_store(),
        "AUTH_ENABLED": True,
        "RATE_LIMIT_DOOR": "10000/second",
        "RATE_LIMIT_ADMIN": "10000/second",
        "MIN_ENROL_FRAMES": 3,
        "LOG_FORMAT": "text",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'facegate.db'}"
    else:
        reason = postgres_reachable()
        if reason:
            pytest.skip(f"PostgreSQL at {PG_URL} unreachable ({reason})")
        reset_postgres()
        url = PG_URL
    migrate(url, wait_s=5)
    return url


@pytest.fixture(scope="session")
def runtime(database_url: str) -> Iterator[Runtime]:
    rt = Runtime(test_settings(database_url))
    yield rt
    rt.close()


def wipe(rt: Runtime) -> None:
    assert rt.journal.flush(), "the journal did not drain"  # no decision of the last test lands after the wipe
    with rt.engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("UPDATE store_state SET generation = 0, threshold = NULL, threshold_far = NULL WHERE id = 1"))
    rt.index = TemplateIndex(rt.model_id, rt.package.embedding_size)


@pytest.fixture
def clean_runtime(runtime: Runtime) -> Runtime:
    wipe(runtime)
    return runtime


def make_key(rt: Runtime, scope: str, name: str | None = None) -> str:
    with rt.sessions() as session:
        key, _ = crud.create_api_key(session, name=name or f"test-{scope}", scope=scope)
        session.commit()
    return key


def stale_keys(rt: Runtime, revoked_name: str = "revoked", expired_name: str = "expired") -> tuple[str, str]:
    """Two admin keys the service must refuse: one revoked, one expired, a minute ago."""
    revoked, expired = make_key(rt, "admin", revoked_name), make_key(rt, "admin", expired_name)
    with rt.sessions() as session:
        for key, column in ((revoked, "revoked_at"), (expired, "expires_at")):
            row = crud.find_api_key(session, key=key)
            assert row is not None
            setattr(row, column, crud.utcnow() - timedelta(minutes=1))
        session.commit()
    return revoked, expired


@pytest.fixture
def admin_key(clean_runtime: Runtime) -> str:
    return make_key(clean_runtime, "admin")


@pytest.fixture
def door_key(clean_runtime: Runtime) -> str:
    return make_key(clean_runtime, "door")


@pytest.fixture
def client(clean_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(clean_runtime.settings, runtime=clean_runtime), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def admin(client: TestClient, admin_key: str) -> TestClient:
    client.headers["X-API-Key"] = admin_key
    return client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(clean_runtime: Runtime) -> Iterator[str]:
    """The real app behind uvicorn on a loopback port: tests talk HTTP to it."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(clean_runtime.settings, runtime=clean_runtime), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        pytest.fail("live server did not start")
    yield base
    server.should_exit = True
    thread.join(timeout=10)


# -- real faces --------------------------------------------------------------------------------


def _holdout(store: Path) -> set[str] | None:
    package = find_package(store)
    split = package / "split.json"
    if split.exists():
        return set(json.loads(split.read_text())["val"])
    return None


@pytest.fixture(scope="session")
def faces() -> dict[str, list[bytes]]:
    """Photos of people the shipped model never trained on, from CelebA in-the-wild crops.

    Identity -> JPEG bytes of every photo, for identities with at least 8 photos.
    """
    root = FACES / "celeba_wild"
    if not root.is_dir():
        pytest.skip(f"real face photos not found at {root} (../shared is absent)")
    holdout = _holdout(model_store())
    people: dict[str, list[bytes]] = {}
    for folder in sorted(root.iterdir()):
        if holdout is not None and folder.name not in holdout:
            continue
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 8:
            people[folder.name] = [p.read_bytes() for p in photos]
    if len(people) < 3:
        pytest.skip("fewer than 3 held-out identities with 8 photos in ../shared")
    return people


def _well_lit(name: str) -> bool:
    """Yale B names light directions as A<azimuth>E<elevation>: keep light from near the camera."""
    match = re.search(r"A([+-]\d+)E([+-]\d+)", name)
    return match is not None and abs(int(match.group(1))) <= 25 and abs(int(match.group(2))) <= 20


@pytest.fixture(scope="session")
def door_faces() -> dict[str, list[bytes]]:
    """People under a fixed camera and steady light, as at a door: Extended Yale B, frontal,
    light from near the camera. No Yale B identity was ever trained on (the model trains on
    CelebA only). Identity -> JPEG bytes, for identities with at least 8 such photos.
    """
    root = FACES / "yale_b"
    if not root.is_dir():
        pytest.skip(f"real face photos not found at {root} (../shared is absent)")
    import cv2

    from app.vision.align import FaceAligner

    people: dict[str, list[bytes]] = {}
    # Face Mesh misses the face in a few Yale photos: keep the ones it finds, so the tests
    # exercise the flows rather than the detector.
    with FaceAligner() as aligner:
        for folder in sorted(root.iterdir()):
            photos = [
                p
                for p in sorted(folder.glob("*.jpg"))
                if _well_lit(p.name) and aligner.align(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)).face is not None
            ]
            if len(photos) >= 8:
                people[folder.name] = [p.read_bytes() for p in photos]
    if len(people) < 3:
        pytest.skip("fewer than 3 Yale B identities with 8 well-lit photos in ../shared")
    return people


def multipart(frames: list[bytes], **fields: str) -> dict[str, object]:
    return {
        "files": [("frames", (f"f{i}.jpg", data, "image/jpeg")) for i, data in enumerate(frames)],
        "data": fields,
    }


@pytest.fixture
def tight(admin: TestClient) -> TestClient:
    """A threshold so tight only the very frames that were enrolled match (distance ~0)."""
    assert admin.put("/v1/threshold", json={"threshold": 0.01}).status_code == 200
    return admin


@pytest.fixture
def swap_engine(clean_runtime: Runtime) -> Iterator[Any]:
    """Point the runtime at another engine for a while; the real one is always put back."""
    original = clean_runtime.engine, clean_runtime.sessions
    made: list[Engine] = []

    def swap(engine: Engine | None) -> None:
        if engine is None:
            clean_runtime.engine, clean_runtime.sessions = original
        else:
            made.append(engine)
            clean_runtime.engine, clean_runtime.sessions = engine, make_session_factory(engine)

    yield swap
    clean_runtime.engine, clean_runtime.sessions = original
    for engine in made:
        engine.dispose()
