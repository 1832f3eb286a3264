"""POST /v1/frames/check: per-frame feedback before an enrolment, nothing matched or stored."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.services.runtime import Runtime
from tests.service.conftest import multipart
from tests.service.inputs import dark_face, grey_jpeg, random_bytes, store_counts


def test_frames_are_judged_and_nothing_is_stored(
    admin: TestClient, clean_runtime: Runtime, door_key: str, faces: dict[str, list[bytes]]
) -> None:
    photos = next(iter(faces.values()))
    before = store_counts(clean_runtime)
    answer = admin.post("/v1/frames/check", **multipart([photos[0], grey_jpeg(), dark_face(photos[1]), photos[2], photos[3]]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    reasons = [f["reason"] for f in body["frames"]]
    assert reasons[1] == "no_face" and reasons[2] == "too_dark", reasons
    assert body["usable"] == 3 and body["enough_to_enrol"] is True  # MIN_ENROL_FRAMES is 3 in the tests
    assert store_counts(clean_runtime) == before
    assert admin.get("/v1/events").json()["count"] == 0  # a check is not an attempt: nothing audited

    refused = admin.post("/v1/frames/check", **multipart([random_bytes()]))
    assert refused.status_code == 415 and refused.json()["code"] == "not_an_image"
    door = admin.post("/v1/frames/check", headers={"X-API-Key": door_key}, **multipart([photos[0]]))
    assert door.status_code == 403 and door.json()["code"] == "insufficient_scope"
