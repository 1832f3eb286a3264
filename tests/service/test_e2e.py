"""End to end over real HTTP with real faces: enrol, identify, deny the unknown, delete.

The people are the first three Extended Yale B identities with 8 well-lit frontal photos
(see the ``door_faces`` fixture): a fixed camera and steady light, as at a door. The decision
threshold is the one the service starts with: the model manifest's recommendation.
How the model fares on harder, in-the-wild photos is measured in docs/model.md, not here.
"""

from __future__ import annotations

import httpx

from tests.service.conftest import multipart


def _enrol(http: httpx.Client, name: str, photos: list[bytes]) -> dict:
    r = http.post("/v1/persons", **multipart(photos, name=name, metadata='{"team": "e2e"}'))  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    return r.json()


def _identify(http: httpx.Client, photos: list[bytes]) -> dict:
    r = http.post("/v1/identify", **multipart(photos, door_id="e2e-door"))  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return r.json()


def test_enrol_identify_deny_delete(live_server: str, admin_key: str, door_key: str, door_faces: dict[str, list[bytes]]) -> None:
    faces = door_faces
    names = list(faces)
    alice, bob, stranger = names[0], names[1], names[2]
    with (
        httpx.Client(base_url=live_server, headers={"X-API-Key": admin_key}, timeout=60) as admin,
        httpx.Client(base_url=live_server, headers={"X-API-Key": door_key}, timeout=60) as door,
    ):
        a = _enrol(admin, "Alice", faces[alice][:5])
        b = _enrol(admin, "Bob", faces[bob][:5])
        assert a["frame_count"] >= 3 and b["frame_count"] >= 3

        # Each is recognised from photos that were not used to enrol them.
        for person, who in ((a, alice), (b, bob)):
            answer = _identify(door, faces[who][5:8])
            assert answer["decision"] == "granted", answer
            assert answer["person"]["id"] == person["id"]
            assert answer["distance"] <= answer["threshold"]

        # Someone never enrolled is denied, not matched to the nearest person.
        unknown = _identify(door, faces[stranger][:3])
        assert unknown["decision"] == "denied", unknown
        assert unknown["person"] is None and unknown["reason"] == "no_match"

        # After deleting Alice, her face is denied; Bob is still granted.
        assert admin.delete(f"/v1/persons/{a['id']}").status_code == 200
        gone = _identify(door, faces[alice][5:8])
        assert gone["decision"] == "denied" and gone["person"] is None
        still = _identify(door, faces[bob][5:8])
        assert still["decision"] == "granted" and still["person"]["id"] == b["id"]

        # The door key cannot enrol.
        refused = door.post("/v1/persons", **multipart(faces[stranger][:5], name="Mallory"))  # type: ignore[arg-type]
        assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"
