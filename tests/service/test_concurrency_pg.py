"""Concurrent enrol / delete / identify on the real Postgres, over real HTTP.

Afterwards the store and the in-memory index must agree exactly (no lost and no phantom
templates), and no identify that started after a delete returned may grant the deleted person.

Faces are real photos of distinct held-out people. Each person is enrolled from three copies
of one photo and identified with that photo, under a tight threshold: the distance is ~0 for
the right person whatever the model, so the outcomes test consistency, not model quality.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.main import create_app
from app.services.recognition import sync_index
from app.services.runtime import Runtime
from app.store.models import FrameEmbedding, Person, Template
from tests.service.conftest import multipart

pytestmark = pytest.mark.postgres

THRESHOLD = 0.01


@pytest.fixture
def pg_runtime(clean_runtime: Runtime) -> Runtime:
    if clean_runtime.settings.is_sqlite:
        pytest.skip("concurrency is checked on Postgres; SQLite serialises writers by design")
    return clean_runtime


@pytest.fixture
def photos(door_faces: dict[str, list[bytes]]) -> list[bytes]:
    """One well-lit, frontal photo each of distinct people (faces large enough for every
    quality check, whatever the model)."""
    return [door_faces[name][0] for name in list(door_faces)[:10]]


@dataclass(frozen=True)
class Attempt:
    who: int  # index into photos
    started: float
    finished: float
    status: int
    granted_id: int | None


def _enrol(http: httpx.Client, name: str, photo: bytes) -> int:
    response = http.post("/v1/persons", **multipart([photo] * 3, name=name))  # type: ignore[arg-type]
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _identify(http: httpx.Client, photo: bytes) -> tuple[int, int | None]:
    response = http.post("/v1/identify", **multipart([photo], door_id="concurrency"))  # type: ignore[arg-type]
    if response.status_code != 200:
        return response.status_code, None
    body = response.json()
    return 200, body["person"]["id"] if body["decision"] == "granted" else None


def _store_templates(rt: Runtime) -> dict[int, int]:
    """template id -> person id, for the serving model."""
    with rt.sessions() as session:
        rows = session.execute(select(Template.id, Template.person_id).where(Template.model_id == rt.model_id)).all()
    return {int(r.id): int(r.person_id) for r in rows}


def _index_templates(rt: Runtime) -> dict[int, int]:
    with rt.sessions() as session:
        sync_index(rt, session)
    ids = rt.index.all_template_ids().tolist()
    rows = {tid: rt.index.row_of(tid) for tid in ids}
    return {tid: int(rt.index._person_ids[row]) for tid, row in rows.items()}


def test_parallel_enrol_delete_identify(pg_runtime: Runtime, live_server: str, admin_key: str, door_key: str, photos: list[bytes]) -> None:
    rt = pg_runtime
    doomed, kept, newcomers = [0, 1, 2], [3], [4, 5, 6, 7]
    admin = httpx.Client(base_url=live_server, headers={"X-API-Key": admin_key}, timeout=60)
    assert admin.put("/v1/threshold", json={"threshold": THRESHOLD}).status_code == 200
    person_of: dict[int, int] = {who: _enrol(admin, f"initial-{who}", photos[who]) for who in doomed + kept}

    enrolled: dict[int, tuple[int, float]] = {}  # who -> (person id, when the enrol returned)
    deleted: dict[int, float] = {}  # person id -> when the delete returned
    attempts: list[Attempt] = []
    errors: list[BaseException] = []
    writers_done = threading.Event()
    lock = threading.Lock()

    def guarded(work: Any) -> Any:
        def run(*args: Any) -> None:
            try:
                work(*args)
            except BaseException as exc:  # surfaced in the main thread
                errors.append(exc)

        return run

    @guarded
    def enroller(whos: list[int]) -> None:
        with httpx.Client(base_url=live_server, headers={"X-API-Key": admin_key}, timeout=60) as http:
            for who in whos:
                pid = _enrol(http, f"newcomer-{who}", photos[who])
                with lock:
                    enrolled[who] = (pid, time.monotonic())

    @guarded
    def deleter() -> None:
        with httpx.Client(base_url=live_server, headers={"X-API-Key": admin_key}, timeout=60) as http:
            for who in doomed:
                time.sleep(0.3)
                response = http.delete(f"/v1/persons/{person_of[who]}")
                assert response.status_code == 200, response.text
                with lock:
                    deleted[person_of[who]] = time.monotonic()

    @guarded
    def identifier(offset: int) -> None:
        everyone = doomed + kept + newcomers
        rounds_after = 0
        with httpx.Client(base_url=live_server, headers={"X-API-Key": door_key}, timeout=60) as http:
            i = offset
            while rounds_after < 4:
                who = everyone[i % len(everyone)]
                started = time.monotonic()
                status, granted = _identify(http, photos[who])
                with lock:
                    attempts.append(Attempt(who, started, time.monotonic(), status, granted))
                i += 1
                if writers_done.is_set():
                    rounds_after += 1

    writers = [
        threading.Thread(target=enroller, args=(newcomers[:2],)),
        threading.Thread(target=enroller, args=(newcomers[2:],)),
        threading.Thread(target=deleter),
    ]
    readers = [threading.Thread(target=identifier, args=(k * 3,)) for k in range(3)]
    deadline = time.monotonic() + 90
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    writers_done.set()
    for t in readers:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in writers + readers), "workers did not finish in time"
    if errors:
        raise errors[0]
    assert sorted(enrolled) == newcomers and len(deleted) == len(doomed)
    assert all(a.status == 200 for a in attempts), {a.status for a in attempts}

    # The store: the survivors, each with exactly one template and its three frames; nothing else.
    survivors = {person_of[who] for who in kept} | {pid for pid, _ in enrolled.values()}
    with rt.sessions() as session:
        persons = set(session.execute(select(Person.id)).scalars())
        per_person = dict(
            session.execute(
                select(Template.person_id, func.count()).where(Template.model_id == rt.model_id).group_by(Template.person_id)
            ).all()
        )
        frames = dict(session.execute(select(FrameEmbedding.person_id, func.count()).group_by(FrameEmbedding.person_id)).all())
    assert persons == survivors
    assert per_person == dict.fromkeys(survivors, 1)
    assert frames == dict.fromkeys(survivors, 3)

    # This replica's index holds exactly the store's templates: no lost, no phantom.
    assert _index_templates(rt) == _store_templates(rt)

    # After a delete returned, nobody is granted as the deleted person.
    for pid, returned in deleted.items():
        late = [a for a in attempts if a.started >= returned and a.granted_id == pid]
        assert not late, f"person {pid} granted {len(late)} times after their delete returned"
    # After an enrol returned, the newcomer is recognised.
    for who, (pid, returned) in enrolled.items():
        after = [a for a in attempts if a.who == who and a.started >= returned]
        assert after and all(a.granted_id == pid for a in after), (who, after)
    # Survivors enrolled before the run are granted throughout.
    for who in kept:
        assert all(a.granted_id == person_of[who] for a in attempts if a.who == who)
    admin.close()


@pytest.fixture
def replica(pg_runtime: Runtime) -> Iterator[tuple[TestClient, Runtime]]:
    """A second process's worth of state on the same database: its own model, pool and index."""
    rt = Runtime(pg_runtime.settings.model_copy(update={"ALIGNER_POOL": 1, "DB_POOL_SIZE": 2}))
    try:
        with TestClient(create_app(rt.settings, runtime=rt), raise_server_exceptions=False) as c:
            yield c, rt
    finally:
        rt.close()


def test_two_replicas_share_one_store(
    pg_runtime: Runtime, admin: TestClient, door_key: str, replica: tuple[TestClient, Runtime], photos: list[bytes]
) -> None:
    a, (b, rt_b) = admin, replica
    door = {"X-API-Key": door_key}
    assert a.put("/v1/threshold", json={"threshold": THRESHOLD}).status_code == 200
    assert b.get("/v1/threshold", headers={"X-API-Key": a.headers["X-API-Key"]}).json()["threshold"] == THRESHOLD

    ada = a.post("/v1/persons", **multipart([photos[0]] * 3, name="Ada")).json()
    seen = b.post("/v1/identify", headers=door, **multipart([photos[0]])).json()
    assert (seen["decision"], seen["person"]["id"]) == ("granted", ada["id"])

    # Enrolled through B, refused as a duplicate through A: both see one store.
    bob = b.post("/v1/persons", headers={"X-API-Key": a.headers["X-API-Key"]}, **multipart([photos[1]] * 3, name="Bob"))
    assert bob.status_code == 201, bob.text
    duplicate = a.post("/v1/persons", **multipart([photos[1]] * 3, name="Bob again"))
    assert duplicate.status_code == 409 and duplicate.json()["details"]["person_id"] == bob.json()["id"]

    assert a.delete(f"/v1/persons/{ada['id']}").status_code == 200
    gone = b.post("/v1/identify", headers=door, **multipart([photos[0]])).json()
    assert gone["decision"] == "denied" and gone["person"] is None
    assert b.post("/v1/identify", headers=door, **multipart([photos[1]])).json()["person"]["id"] == bob.json()["id"]

    # Both indexes hold exactly the store's templates.
    store = _store_templates(pg_runtime)
    assert _index_templates(pg_runtime) == store == _index_templates(rt_b)
    assert np.isin(list(store.values()), [bob.json()["id"]]).all()
