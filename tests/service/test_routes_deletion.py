"""Confirm-by-face deletion (app/api/routes/deletion.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient

from app.services.runtime import Runtime
from app.store import crud
from tests.service.conftest import multipart
from tests.service.inputs import enrol, seed_person

# -- confirm-by-face deletion ---------------------------------------------------------------------


def test_deletion_token_rules(admin: TestClient, clean_runtime: Runtime) -> None:
    rt = clean_runtime
    target, bystander = seed_person(rt, "Target", seed=1), seed_person(rt, "Bystander", seed=2)
    with rt.sessions() as session:
        token, _ = crud.create_deletion_request(session, person_id=target, distance=0.01, ttl_s=120)
        stale, _ = crud.create_deletion_request(session, person_id=bystander, distance=0.01, ttl_s=-1)
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


def test_confirm_by_face_deletion_with_real_faces(
    tight: TestClient, clean_runtime: Runtime, door_key: str, door_faces: dict[str, list[bytes]]
) -> None:
    alice_photos, bob_photos = (door_faces[name][:3] for name in list(door_faces)[:2])
    alice, bob = enrol(tight, "Alice", alice_photos), enrol(tight, "Bob", bob_photos)
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
    alice_now = tight.get(f"/v1/persons/{alice['id']}")
    assert alice_now.status_code == 200  # nothing deleted yet
    # Finding who to delete is not a door match: the match count and time are left alone.
    assert (alice_now.json()["search_count"], alice_now.json()["last_matched_at"]) == (0, None)

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
