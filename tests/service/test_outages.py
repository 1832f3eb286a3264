"""The database going away, and writes that must be committed before the answer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from app.services.runtime import Runtime
from app.store.db import make_engine
from app.store.models import ApiKey, Person
from tests.service.conftest import PG_URL, multipart
from tests.service.faults import SlowCommitSession, TcpProxy, assert_unavailable, unreachable_engine
from tests.service.inputs import grey_jpeg, seed_person

# -- the database going away ---------------------------------------------------------------------


def test_database_outage_answers_503_and_recovers(admin: TestClient, clean_runtime: Runtime, door_key: str, swap_engine: Any) -> None:
    pid = seed_person(clean_runtime, "Before the outage")
    assert admin.get("/v1/persons").status_code == 200

    swap_engine(unreachable_engine(clean_runtime))
    assert_unavailable(admin.get("/v1/persons"))
    assert_unavailable(admin.patch(f"/v1/persons/{pid}", json={"name": "During the outage"}))
    assert_unavailable(admin.post("/v1/identify", headers={"X-API-Key": door_key}, **multipart([grey_jpeg()])))
    ready = admin.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable" and ready.json()["checks"]["database"].startswith("unreachable: ")
    assert admin.get("/healthz").status_code == 200

    swap_engine(None)
    assert admin.get("/readyz").status_code == 200
    assert admin.get(f"/v1/persons/{pid}").json()["name"] == "Before the outage"
    assert admin.post("/v1/identify", headers={"X-API-Key": door_key}, **multipart([grey_jpeg()])).status_code == 200


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
        assert_unavailable(admin.get(f"/v1/persons/{pid}"))
        assert_unavailable(admin.post("/v1/identify", headers=door, **multipart([grey_jpeg()])))
        assert admin.get("/readyz").status_code == 503

        proxy.start()
        assert admin.get("/readyz").status_code == 200
        assert admin.get(f"/v1/persons/{pid}").status_code == 200
        assert admin.post("/v1/identify", headers=door, **multipart([grey_jpeg()])).status_code == 200
    finally:
        proxy.stop()


# -- a response is sent only once its writes are committed ------------------------------------------


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
