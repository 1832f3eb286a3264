"""The audit log and its filters (app/api/routes/events.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fastapi.testclient import TestClient

from app.services.runtime import Runtime
from tests.service.conftest import multipart
from tests.service.inputs import grey_jpeg, random_bytes

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
