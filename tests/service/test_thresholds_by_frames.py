"""The threshold in force depends on how many usable frames a request fused, and denied doors learn no distance.

Real faces (Extended Yale B, never trained on) through the whole pipeline; the thresholds are
the shipped model's table by frames fused.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.services.runtime import Runtime
from tests.service.conftest import multipart


def test_each_burst_size_meets_its_own_threshold(
    admin: TestClient, client: TestClient, door_key: str, clean_runtime: Runtime, door_faces: dict[str, list[bytes]]
) -> None:
    rt = clean_runtime
    alice, stranger = list(door_faces)[:2]
    enrolled = admin.post("/v1/persons", **multipart(door_faces[alice][:5], name="Alice"))  # type: ignore[arg-type]
    assert enrolled.status_code == 201, enrolled.text
    door = {"X-API-Key": door_key}
    seen = set()
    for count in (1, 2, 3):
        answer = client.post("/v1/identify", headers=door, **multipart(door_faces[alice][5 : 5 + count])).json()  # type: ignore[arg-type]
        used = answer["frames_used"]
        assert used >= 1, answer
        assert answer["threshold"] == rt.thresholds.at(used), answer
        seen.add(answer["threshold"])
    assert len(seen) > 1, "the table's rows differ by burst size, so the thresholds applied must too"

    # A stranger denied at a door gets the decision and the threshold, not how close he came.
    denied = client.post("/v1/identify", headers=door, **multipart(door_faces[stranger][:3])).json()  # type: ignore[arg-type]
    assert denied["decision"] == "denied", denied
    assert denied["distance"] is None and denied["margin"] is None
    # An admin asking the same sees the evidence; so does the audit log.
    as_admin = admin.post("/v1/identify", **multipart(door_faces[stranger][:3])).json()  # type: ignore[arg-type]
    assert as_admin["decision"] == "denied" and as_admin["distance"] is not None
    events = admin.get("/v1/events", params={"kind": "identify", "decision": "denied"}).json()["data"]
    assert all(e["distance"] is not None for e in events)

    # A stored distance is an admin's explicit choice: it applies to every burst size.
    assert admin.put("/v1/threshold", json={"threshold": 0.42}).status_code == 200
    fixed = client.post("/v1/identify", headers=door, **multipart(door_faces[alice][5:6])).json()  # type: ignore[arg-type]
    assert fixed["threshold"] == 0.42
