"""Enrolled people: list, get, patch, sample, delete, add frames (app/api/routes/persons.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.services.recognition import sync_index
from app.services.runtime import Runtime
from app.store.models import Person, Template, TemplateDeletion
from tests.service.conftest import multipart
from tests.service.inputs import enrol, grey_jpeg, seed_person, store_counts

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
        sync_index(rt, session)
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
        sync_index(rt, session)
    assert rt.index.all_template_ids().tolist() != [gone_template] and len(rt.index) == 1
    assert admin.get(f"/v1/persons/{keep}").status_code == 200
    event = admin.get("/v1/events", params={"kind": "delete"}).json()["data"][0]
    assert (event["person_id"], event["decision"]) == (gone, "deleted")


def test_add_frames_and_verify_with_real_faces(
    tight: TestClient, clean_runtime: Runtime, door_key: str, door_faces: dict[str, list[bytes]]
) -> None:
    alice_photos, bob_photos = (door_faces[name][:3] for name in list(door_faces)[:2])
    alice = enrol(tight, "Alice", alice_photos)
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
