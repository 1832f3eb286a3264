"""Behaviour of each endpoint that needs no trained model.

People are written straight to the store with chosen vectors, so paging, calibration and
deletion are checked exactly. The flows that need faces (confirm-by-face deletion, adding
frames) identify with the very frames that were enrolled under a tight threshold, where the
distance is ~0 whatever the model: they hold for an untrained package as for the real one.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from app.recognition import Runtime
from app.store import crud
from app.store.db import make_engine, make_session_factory
from app.store.models import ApiKey, Person, Template, TemplateDeletion
from tests.service.conftest import PG_URL, multipart
from tests.service.inputs import grey_jpeg, random_bytes, seed_person, store_counts, unit

# -- threshold ------------------------------------------------------------------------------------


def test_threshold_get_and_put(admin: TestClient, clean_runtime: Runtime) -> None:
    rt = clean_runtime
    default = rt.default_threshold()
    table = rt.package.burst_table
    assert table is not None, "the shipped model must carry thresholds by frames fused"
    by_frames = {str(n): rt.package.threshold_for_frames(int(n)) for n in table["by_frames"]}
    model_part = {
        "default": default,
        "model_id": rt.model_id,
        "template_frames": 5,
        "default_far": 0.001,
        "default_by_frames": by_frames,
    }
    assert admin.get("/v1/threshold").json() == {"threshold": default, "source": "default", **model_part}
    assert default == by_frames["5"]
    put = admin.put("/v1/threshold", json={"threshold": 0.25})
    assert put.status_code == 200, put.text
    assert put.json() == {"threshold": 0.25, "source": "stored", **model_part}
    assert admin.get("/v1/threshold").json()["threshold"] == 0.25
    event = admin.get("/v1/events", params={"kind": "threshold"}).json()["data"][0]
    assert event["threshold"] == 0.25 and event["reason"] == f"was {default:.6f}"

    # Reset: back to the model's thresholds by frames fused, audited once.
    reset = admin.delete("/v1/threshold")
    assert reset.status_code == 200, reset.text
    assert reset.json() == {"threshold": default, "source": "default", **model_part}
    assert admin.delete("/v1/threshold").json()["source"] == "default"  # idempotent
    resets = [e for e in admin.get("/v1/events", params={"kind": "threshold"}).json()["data"] if e["reason"].startswith("reset")]
    assert [(e["threshold"], e["reason"]) for e in resets] == [(None, "reset; was 0.250000")]


def test_calibrate(admin: TestClient, clean_runtime: Runtime) -> None:
    rt = clean_runtime
    default = rt.default_threshold()
    # Too few templates: no negative pair to learn from, nothing applied.
    seed_person(rt, "Only", vectors=unit(rt, 1.0))
    lonely = admin.post("/v1/threshold/calibrate", json={"method": "min_negative", "apply": True}).json()
    assert (lonely["templates_used"], lonely["min_negative_distance"], lonely["recommended"], lonely["applied"]) == (1, None, None, False)

    # Two people 60 degrees apart (distance 1 - cos 60 = 0.5) and a third orthogonal to both.
    seed_person(rt, "Near", vectors=unit(rt, 0.5, math.sqrt(3) / 2))
    seed_person(rt, "Far", vectors=unit(rt, 0.0, 0.0, 1.0))
    dry = admin.post("/v1/threshold/calibrate", json={"method": "min_negative"})
    assert dry.status_code == 200, dry.text
    body = dry.json()
    assert body["templates_used"] == 3
    assert body["min_negative_distance"] == pytest.approx(0.5, abs=1e-5)
    assert body["recommended"] == pytest.approx(0.5, abs=1e-5)
    assert (body["applied"], body["method"], body["threshold"]) == (False, "min_negative", default)
    assert admin.get("/v1/threshold").json()["source"] == "default"

    applied = admin.post("/v1/threshold/calibrate", json={"method": "min_negative", "apply": True}).json()
    assert applied["applied"] is True and applied["threshold"] == pytest.approx(0.5, abs=1e-5)
    now = admin.get("/v1/threshold").json()
    assert (now["threshold"], now["source"], now["default"], now["model_id"]) == (
        pytest.approx(0.5, abs=1e-5),
        "stored",
        default,
        rt.model_id,
    )

    # target_far answers with the threshold the service applies to 5-frame bursts (a template's
    # worth) at that FAR, never the single-photo threshold: strangers' fused bursts lie closer.
    far = admin.post("/v1/threshold/calibrate", json={"method": "target_far", "target_far": 0.001}).json()
    assert far["recommended"] == far["manifest_far_threshold"] == default == rt.package.threshold_for_frames(5)
    assert far["recommended"] != rt.package.threshold_for_far(0.001)
    assert far["applied"] is False
    stricter = admin.post("/v1/threshold/calibrate", json={"method": "target_far", "target_far": 0.0001}).json()
    assert stricter["recommended"] is not None and stricter["recommended"] < far["recommended"]

    for bad in ({"method": "guess"}, {"sample": 1}, {"target_far": 0}, {"target_far": 1.5}, {"apply": "maybe"}, {"extra": 1}):
        refused = admin.post("/v1/threshold/calibrate", json=bad)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_request", bad


# -- persons --------------------------------------------------------------------------------------


def test_persons_list_paging_and_filter(admin: TestClient, clean_runtime: Runtime) -> None:
    ids = [seed_person(clean_runtime, f"Person {i}", seed=i) for i in range(5)]
    ids.append(seed_person(clean_runtime, "Ada Lovelace", seed=9))
    everyone = admin.get("/v1/persons").json()
    assert everyone["count"] == 6
    assert [p["id"] for p in everyone["data"]] == ids
    first = everyone["data"][0]
    assert (first["frame_count"], first["has_template"], first["metadata"], first["search_count"]) == (3, True, {"seeded": True}, 0)
    assert first["created_at"].endswith(("Z", "+00:00"))

    page = admin.get("/v1/persons", params={"offset": 2, "limit": 2}).json()
    assert ([p["id"] for p in page["data"]], page["count"]) == (ids[2:4], 6)
    beyond = admin.get("/v1/persons", params={"offset": 100}).json()
    assert (beyond["data"], beyond["count"]) == ([], 6)

    found = admin.get("/v1/persons", params={"name": "lovel"}).json()
    assert ([p["name"] for p in found["data"]], found["count"]) == (["Ada Lovelace"], 1)

    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "many"}):
        refused = admin.get("/v1/persons", params=bad)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_request", bad


def test_get_patch_person(admin: TestClient, clean_runtime: Runtime) -> None:
    pid = seed_person(clean_runtime, "Ada")
    before = admin.get(f"/v1/persons/{pid}").json()
    patched = admin.patch(f"/v1/persons/{pid}", json={"name": "Ada King", "metadata": {"badge": "A-17"}})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["name"], body["metadata"], body["frame_count"]) == ("Ada King", {"badge": "A-17"}, 3)
    assert body["updated_at"] >= before["updated_at"]
    assert admin.get(f"/v1/persons/{pid}").json()["name"] == "Ada King"

    # Only the fields sent change.
    assert admin.patch(f"/v1/persons/{pid}", json={"metadata": {}}).json()["name"] == "Ada King"
    assert admin.patch(f"/v1/persons/{pid}", json={}).json()["metadata"] == {}

    for bad in ({"name": ""}, {"name": "   "}, {"name": "x" * 201}, {"id": 99}, {"name": 5}):
        refused = admin.patch(f"/v1/persons/{pid}", json=bad)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_request", bad
    refused = admin.patch(f"/v1/persons/{pid}", json={"metadata": [1]})
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_metadata"
    assert admin.get(f"/v1/persons/{pid}").json()["name"] == "Ada King"
    assert admin.get("/v1/events", params={"kind": "update_person", "person_id": pid}).json()["count"] == 3


def test_sample_image(admin: TestClient, clean_runtime: Runtime) -> None:
    without = seed_person(clean_runtime, "No sample")
    refused = admin.get(f"/v1/persons/{without}/sample")
    assert refused.status_code == 404 and refused.json()["code"] == "sample_not_found"

    picture = grey_jpeg(64)
    with_sample = seed_person(clean_runtime, "Sample", seed=1, sample_jpeg=picture)
    sample = admin.get(f"/v1/persons/{with_sample}/sample")
    assert sample.status_code == 200
    assert sample.headers["content-type"] == "image/jpeg"
    assert sample.content == picture


def test_person_without_template_for_this_model(admin: TestClient, clean_runtime: Runtime, door_key: str) -> None:
    with clean_runtime.sessions() as session:
        person = Person(name="Legacy", metadata_={})
        session.add(person)
        session.commit()
        pid = person.id
    body = admin.get(f"/v1/persons/{pid}").json()
    assert (body["has_template"], body["frame_count"]) == (False, 0)
    refused = admin.post(f"/v1/persons/{pid}/verify", headers={"X-API-Key": door_key}, **multipart([grey_jpeg()]))
    assert refused.status_code == 409 and refused.json()["code"] == "no_template_for_model"


def test_delete_person(admin: TestClient, clean_runtime: Runtime) -> None:
    rt = clean_runtime
    keep, gone = seed_person(rt, "Keep", seed=1), seed_person(rt, "Gone", seed=2)
    with rt.sessions() as session:
        rt.index.sync(session)
        gone_template = session.execute(select(Template.id).where(Template.person_id == gone)).scalar_one()
    assert len(rt.index) == 2

    deleted = admin.delete(f"/v1/persons/{gone}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"deleted": {"id": gone, "name": "Gone"}}
    assert admin.get(f"/v1/persons/{gone}").status_code == 404
    assert admin.delete(f"/v1/persons/{gone}").json()["code"] == "person_not_found"

    counts = store_counts(rt)
    assert (counts.persons, counts.templates, counts.frame_embeddings) == (1, 1, 3)
    with rt.sessions() as session:
        tombstones = session.execute(select(TemplateDeletion.template_id)).scalars().all()
        assert tombstones == [gone_template]
        rt.index.sync(session)
    assert rt.index.all_template_ids().tolist() != [gone_template] and len(rt.index) == 1
    assert admin.get(f"/v1/persons/{keep}").status_code == 200
    event = admin.get("/v1/events", params={"kind": "delete"}).json()["data"][0]
    assert (event["person_id"], event["decision"]) == (gone, "deleted")


# -- keys -----------------------------------------------------------------------------------------


def test_keys_create_list_revoke(admin: TestClient, clean_runtime: Runtime) -> None:
    made = admin.post("/v1/keys", json={"name": "front-door", "scope": "door", "expires_in_days": 30})
    assert made.status_code == 201, made.text
    created = made.json()
    key = created["key"]
    assert re.fullmatch(rf"fg_{created['prefix']}_[A-Za-z0-9_-]{{40,}}", key)
    expires = datetime.fromisoformat(created["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)

    # Stored hashed: the key itself is in no column of its row.
    with clean_runtime.sessions() as session:
        row = session.get(ApiKey, created["id"])
        assert row is not None
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        stored = [str(getattr(row, column.key)) for column in ApiKey.__table__.columns]
        assert not any(key in value or key.split("_", 2)[2] in value for value in stored)

    listed = admin.get("/v1/keys").json()
    assert listed["count"] == 2  # the fixture's admin key and this one
    mine = next(k for k in listed["data"] if k["id"] == created["id"])
    assert "key" not in mine and mine["scope"] == "door" and mine["revoked_at"] is None
    assert key not in admin.get("/v1/keys").text

    # The new key works, and its use is recorded.
    used = admin.post("/v1/identify", headers={"X-API-Key": key}, **multipart([grey_jpeg(64)]))
    assert used.status_code == 200, used.text
    assert next(k for k in admin.get("/v1/keys").json()["data"] if k["id"] == created["id"])["last_used_at"] is not None

    revoked = admin.delete(f"/v1/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    again = admin.delete(f"/v1/keys/{created['id']}")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert admin.post("/v1/identify", headers={"X-API-Key": key}, **multipart([grey_jpeg(64)])).json()["code"] == "revoked_api_key"
    missing = admin.delete("/v1/keys/999999")
    assert missing.status_code == 404 and missing.json()["code"] == "key_not_found"

    kinds = [e["kind"] for e in admin.get("/v1/events").json()["data"]]
    assert kinds.count("key_created") == 1 and kinds.count("key_revoked") == 1
    for bad in (
        {"name": "x", "scope": "root"},
        {"name": "", "scope": "door"},
        {"name": "x", "scope": "door", "expires_in_days": 0},
        {"scope": "door"},
    ):
        refused = admin.post("/v1/keys", json=bad)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_request", bad


# -- events ---------------------------------------------------------------------------------------


def test_events_filters_and_refusals_are_audited(admin: TestClient, clean_runtime: Runtime, door_key: str) -> None:
    door = {"X-API-Key": door_key}
    assert admin.post("/v1/identify", headers=door, **multipart([grey_jpeg()], door_id="front")).status_code == 200
    assert admin.post("/v1/identify", headers=door, **multipart([random_bytes()], door_id="back")).status_code == 415
    assert admin.post("/v1/persons", **multipart([grey_jpeg()] * 3, name="Nobody")).status_code == 422
    # Unauthenticated calls are audited too, without any key.
    assert admin.post("/v1/identify", headers={"X-API-Key": ""}, **multipart([grey_jpeg()])).status_code == 401

    everything = admin.get("/v1/events").json()
    assert everything["count"] == 4
    ids = [e["id"] for e in everything["data"]]
    assert ids == sorted(ids, reverse=True)

    def events(**params: Any) -> list[dict[str, Any]]:
        response = admin.get("/v1/events", params=params)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    (denied,) = events(decision="denied")
    assert (denied["kind"], denied["door_id"], denied["reason"]) == ("identify", "front", "no_usable_frames")
    assert denied["key_name"] == "test-door"
    assert denied["frames_rejected"] == {"no_face": 1} and denied["status_code"] == 200
    (refused,) = events(door_id="back")
    assert (refused["decision"], refused["reason"], refused["status_code"]) == ("error", "not_an_image", 415)
    (enrol,) = events(kind="enrol")
    assert (enrol["decision"], enrol["reason"], enrol["status_code"]) == ("error", "not_enough_usable_frames", 422)
    assert enrol["key_name"] == "test-admin"
    (unauthenticated,) = [e for e in events() if e["status_code"] == 401]
    assert (unauthenticated["kind"], unauthenticated["decision"], unauthenticated["reason"]) == ("identify", "error", "missing_api_key")
    assert unauthenticated["key_name"] is None
    assert len(events(decision="error")) == 3

    assert [e["id"] for e in events(limit=1)] == ids[:1]
    assert [e["id"] for e in events(offset=1, limit=1)] == ids[1:2]
    now = datetime.now(UTC)
    assert len(events(since=(now - timedelta(hours=1)).isoformat())) == 4
    assert events(since=(now + timedelta(hours=1)).isoformat()) == []
    assert events(until=(now - timedelta(hours=1)).isoformat()) == []
    # The same instants written in another time zone select the same events.
    plus5 = timezone(timedelta(hours=5))
    assert len(events(since=(now - timedelta(hours=1)).astimezone(plus5).isoformat())) == 4
    assert events(until=(now - timedelta(hours=1)).astimezone(plus5).isoformat()) == []
    for bad in ({"since": "yesterday"}, {"limit": 0}, {"limit": 501}, {"person_id": -1}):
        assert admin.get("/v1/events", params=bad).json()["code"] == "invalid_request", bad


# -- health, request ids, metrics ----------------------------------------------------------------


def test_healthz_and_readyz(client: TestClient, clean_runtime: Runtime) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "checks": {
            "model": clean_runtime.model_id,
            "model_verified": True,
            "templates": len(clean_runtime.index),
            "database": "ok",
        },
    }


def test_request_id(admin: TestClient) -> None:
    echoed = admin.get("/healthz", headers={"X-Request-ID": "door-7f3a"})
    assert echoed.headers["X-Request-ID"] == "door-7f3a"
    assert re.fullmatch(r"[0-9a-f]{32}", admin.get("/healthz").headers["X-Request-ID"])
    # Oversized ids are replaced, not logged verbatim.
    assert re.fullmatch(r"[0-9a-f]{32}", admin.get("/healthz", headers={"X-Request-ID": "x" * 65}).headers["X-Request-ID"])
    # Errors carry it too, and the audit log records it.
    refused = admin.post("/v1/identify", headers={"X-Request-ID": "req-bad-1"}, **multipart([random_bytes()]))
    assert refused.headers["X-Request-ID"] == "req-bad-1"
    assert admin.post("/v1/identify", headers={"X-Request-ID": "req-ok-1"}, **multipart([grey_jpeg()])).status_code == 200
    assert {e["request_id"] for e in admin.get("/v1/events").json()["data"]} == {"req-bad-1", "req-ok-1"}


def test_metrics(admin: TestClient, clean_runtime: Runtime) -> None:
    seed_person(clean_runtime, "One", seed=1)
    seed_person(clean_runtime, "Two", seed=2)
    with clean_runtime.sessions() as session:
        clean_runtime.index.sync(session)
    assert admin.post("/v1/identify", **multipart([grey_jpeg()])).status_code == 200
    response = admin.get("/metrics", headers={"X-API-Key": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(r'^facegate_requests_total\{endpoint="/v1/identify",method="POST",status="200"\} \d', text, re.M)
    for stage in ("decode", "align", "embed"):
        assert re.search(rf'^facegate_stage_seconds_bucket\{{le="[^"]+",stage="{stage}"\}} \d', text, re.M), stage
    assert re.search(r"^facegate_templates_enrolled 2\.0$", text, re.M)
    assert re.search(rf'^facegate_model_info\{{.*model_id="{re.escape(clean_runtime.model_id)}".*\}} 1\.0$', text, re.M)
    assert "facegate_request_seconds_bucket" in text and "facegate_decisions_total" in text


# -- the database going away ---------------------------------------------------------------------


def _unreachable_engine(rt: Runtime) -> Engine:
    if rt.settings.is_sqlite:
        return create_engine("sqlite:////nonexistent-facegate-dir/none.db")
    return create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test", pool_pre_ping=True, connect_args={"connect_timeout": 2})


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


def _assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "2"


def test_database_outage_answers_503_and_recovers(admin: TestClient, clean_runtime: Runtime, door_key: str, swap_engine: Any) -> None:
    pid = seed_person(clean_runtime, "Before the outage")
    assert admin.get("/v1/persons").status_code == 200

    swap_engine(_unreachable_engine(clean_runtime))
    _assert_unavailable(admin.get("/v1/persons"))
    _assert_unavailable(admin.patch(f"/v1/persons/{pid}", json={"name": "During the outage"}))
    _assert_unavailable(admin.post("/v1/identify", headers={"X-API-Key": door_key}, **multipart([grey_jpeg()])))
    ready = admin.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable" and ready.json()["checks"]["database"].startswith("unreachable: ")
    assert admin.get("/healthz").status_code == 200

    swap_engine(None)
    assert admin.get("/readyz").status_code == 200
    assert admin.get(f"/v1/persons/{pid}").json()["name"] == "Before the outage"
    assert admin.post("/v1/identify", headers={"X-API-Key": door_key}, **multipart([grey_jpeg()])).status_code == 200


class TcpProxy:
    """A loopback TCP relay that can be cut and restored: a database outage without touching it."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and break every open one, as a crashed server would."""
        assert self._server is not None
        # shutdown() wakes the thread blocked in accept(); close() alone would not on Linux.
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.mark.postgres
def test_postgres_outage_recovers_by_itself(admin: TestClient, clean_runtime: Runtime, door_key: str, swap_engine: Any) -> None:
    """The real server stays up; the network to it is cut, then restored. No restart, no intervention."""
    if clean_runtime.settings.is_sqlite:
        pytest.skip("a network outage needs the Postgres server")
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    proxied_url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    swap_engine(make_engine(clean_runtime.settings.model_copy(update={"DATABASE_URL": proxied_url})))
    try:
        pid = seed_person(clean_runtime, "Steady")
        door = {"X-API-Key": door_key}
        assert admin.get(f"/v1/persons/{pid}").status_code == 200
        assert admin.post("/v1/identify", headers=door, **multipart([grey_jpeg()])).status_code == 200

        proxy.stop()
        _assert_unavailable(admin.get(f"/v1/persons/{pid}"))
        _assert_unavailable(admin.post("/v1/identify", headers=door, **multipart([grey_jpeg()])))
        assert admin.get("/readyz").status_code == 503

        proxy.start()
        assert admin.get("/readyz").status_code == 200
        assert admin.get(f"/v1/persons/{pid}").status_code == 200
        assert admin.post("/v1/identify", headers=door, **multipart([grey_jpeg()])).status_code == 200
    finally:
        proxy.stop()


# -- confirm-by-face deletion ---------------------------------------------------------------------


def test_deletion_token_rules(admin: TestClient, clean_runtime: Runtime) -> None:
    rt = clean_runtime
    target, bystander = seed_person(rt, "Target", seed=1), seed_person(rt, "Bystander", seed=2)
    with rt.sessions() as session:
        token, _ = crud.create_deletion_request(session, target, 0.01, ttl_s=120)
        stale, _ = crud.create_deletion_request(session, bystander, 0.01, ttl_s=-1)
        session.commit()

    for wrong in ("not-a-token", token[:-1], stale):
        refused = admin.post("/v1/deletion-requests/confirm", json={"token": wrong})
        assert refused.status_code == 404 and refused.json()["code"] == "invalid_or_expired_token", wrong
    for bad in ({"token": ""}, {}, {"token": token, "person_id": bystander}):
        assert admin.post("/v1/deletion-requests/confirm", json=bad).json()["code"] == "invalid_request", bad

    done = admin.post("/v1/deletion-requests/confirm", json={"token": token})
    assert done.status_code == 200, done.text
    assert done.json() == {"deleted": {"id": target, "name": "Target"}}
    assert admin.get(f"/v1/persons/{target}").status_code == 404
    assert admin.get(f"/v1/persons/{bystander}").status_code == 200
    again = admin.post("/v1/deletion-requests/confirm", json={"token": token})
    assert again.status_code == 404 and again.json()["code"] == "invalid_or_expired_token"
    event = admin.get("/v1/events", params={"kind": "delete"}).json()["data"][0]
    assert (event["person_id"], event["reason"]) == (target, "confirmed_by_face")


@pytest.fixture
def tight(admin: TestClient) -> TestClient:
    """A threshold so tight only the very frames that were enrolled match (distance ~0)."""
    assert admin.put("/v1/threshold", json={"threshold": 0.01}).status_code == 200
    return admin


def _enrol(http: TestClient, name: str, photos: list[bytes]) -> dict[str, Any]:
    response = http.post("/v1/persons", **multipart(photos, name=name))
    assert response.status_code == 201, response.text
    return response.json()


def test_confirm_by_face_deletion_with_real_faces(
    tight: TestClient, clean_runtime: Runtime, door_key: str, door_faces: dict[str, list[bytes]]
) -> None:
    alice_photos, bob_photos = (door_faces[name][:3] for name in list(door_faces)[:2])
    alice, bob = _enrol(tight, "Alice", alice_photos), _enrol(tight, "Bob", bob_photos)
    assert alice["frame_count"] == 3
    assert [(f["index"], f["used"], f["reason"], f["faces"]) for f in alice["frames"]] == [(i, True, None, 1) for i in range(3)]
    assert all(len(f["face_box"]) == 4 for f in alice["frames"])
    assert tight.get(f"/v1/persons/{alice['id']}/sample").headers["content-type"] == "image/jpeg"

    again = tight.post("/v1/persons", **multipart(alice_photos, name="Alice again"))
    assert again.status_code == 409 and again.json()["code"] == "already_enrolled"
    assert again.json()["details"]["person_id"] == alice["id"]

    # Not enrolled: no token.
    stranger = tight.post("/v1/deletion-requests", **multipart(door_faces[list(door_faces)[2]][:3]))
    assert stranger.status_code == 404 and stranger.json()["code"] == "no_matching_person"

    asked = tight.post("/v1/deletion-requests", **multipart(alice_photos))
    assert asked.status_code == 201, asked.text
    request = asked.json()
    assert request["person"] == {"id": alice["id"], "name": "Alice"} and request["distance"] <= 0.01
    assert datetime.fromisoformat(request["expires_at"]) > datetime.now(UTC)
    assert tight.get(f"/v1/persons/{alice['id']}").status_code == 200  # nothing deleted yet

    done = tight.post("/v1/deletion-requests/confirm", json={"token": request["token"]})
    assert done.status_code == 200 and done.json()["deleted"]["id"] == alice["id"]
    assert tight.post("/v1/deletion-requests/confirm", json={"token": request["token"]}).json()["code"] == "invalid_or_expired_token"
    remaining = tight.get("/v1/persons").json()
    assert [p["id"] for p in remaining["data"]] == [bob["id"]]

    door = {"X-API-Key": door_key}
    gone = tight.post("/v1/identify", headers=door, **multipart(alice_photos)).json()
    assert gone["decision"] == "denied" and gone["person"] is None
    still = tight.post("/v1/identify", headers=door, **multipart(bob_photos)).json()
    assert still["decision"] == "granted" and still["person"]["id"] == bob["id"]


def test_add_frames_and_verify_with_real_faces(
    tight: TestClient, clean_runtime: Runtime, door_key: str, door_faces: dict[str, list[bytes]]
) -> None:
    alice_photos, bob_photos = (door_faces[name][:3] for name in list(door_faces)[:2])
    alice = _enrol(tight, "Alice", alice_photos)
    before = store_counts(clean_runtime)

    mismatch = tight.post(f"/v1/persons/{alice['id']}/frames", **multipart(bob_photos))
    assert mismatch.status_code == 409, mismatch.text
    assert mismatch.json()["code"] == "face_mismatch"
    assert mismatch.json()["details"]["person_id"] == alice["id"] and mismatch.json()["details"]["distance"] > 0.01
    assert store_counts(clean_runtime) == before

    # The enrolled photos again: within the tight threshold whatever the model.
    added = tight.post(f"/v1/persons/{alice['id']}/frames", **multipart(alice_photos))
    assert added.status_code == 200, added.text
    assert added.json()["frame_count"] == 6
    after = store_counts(clean_runtime)
    assert after.frame_embeddings == before.frame_embeddings + 3
    assert (after.templates, after.generation) == (before.templates, before.generation + 1)

    door = {"X-API-Key": door_key}
    same = tight.post(f"/v1/persons/{alice['id']}/verify", headers=door, **multipart(alice_photos)).json()
    assert (same["decision"], same["person"]["id"]) == ("granted", alice["id"])
    other = tight.post(f"/v1/persons/{alice['id']}/verify", headers=door, **multipart(bob_photos)).json()
    assert (other["decision"], other["reason"]) == ("denied", "no_match")
    assert other["distance"] is None  # a denied door learns no distance to hill-climb on
    as_admin = tight.post(f"/v1/persons/{alice['id']}/verify", **multipart(bob_photos)).json()
    assert as_admin["decision"] == "denied" and as_admin["distance"] > same["distance"]


# -- a response is sent only once its writes are committed ------------------------------------------


class SlowCommitSession(Session):
    """Commits take a while, as they do on a loaded database."""

    def commit(self) -> None:
        time.sleep(0.3)
        super().commit()


def test_writes_are_committed_before_the_response(
    live_server: str, clean_runtime: Runtime, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that got its 200 must find the change in the database at once: a door asking
    right after a delete returned must never be let in by the deleted person."""
    rt = clean_runtime
    pid = seed_person(rt, "Leaving")
    monkeypatch.setattr(rt, "sessions", sessionmaker(bind=rt.engine, expire_on_commit=False, class_=SlowCommitSession))
    with httpx.Client(base_url=live_server, headers={"X-API-Key": admin_key}, timeout=30) as http:
        assert http.delete(f"/v1/persons/{pid}").status_code == 200
        with rt.engine.connect() as conn:
            still_there = conn.execute(select(Person.id).where(Person.id == pid)).scalar_one_or_none()
        assert still_there is None, "DELETE answered before its transaction committed"

        renamed = http.patch("/v1/persons/999999", json={"name": "x"})
        assert renamed.status_code == 404
        created = http.post("/v1/keys", json={"name": "visible-at-once", "scope": "door"})
        assert created.status_code == 201
        with rt.engine.connect() as conn:
            assert conn.execute(select(ApiKey.id).where(ApiKey.id == created.json()["id"])).scalar_one_or_none() is not None


def test_person_deleted_during_identify_is_not_granted(
    tight: TestClient, clean_runtime: Runtime, door_faces: dict[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete commits after the scan found the person's template but before the answer."""
    photo = door_faces[next(iter(door_faces))][0]
    pid = _enrol(tight, "Racer", [photo] * 3)["id"]
    scanned = crud.template_vectors

    def scan_then_delete(session: Session, template_ids: Any) -> Any:
        found = scanned(session, template_ids)
        with clean_runtime.sessions() as other:
            crud.delete_person(other, pid)
            other.commit()
        return found

    monkeypatch.setattr(crud, "template_vectors", scan_then_delete)
    answer = tight.post("/v1/identify", **multipart([photo]))
    assert answer.status_code == 200, answer.text
    assert (answer.json()["decision"], answer.json()["person"]) == ("denied", None)
