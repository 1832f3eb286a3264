"""Faces in the background: the person at the door is used, people behind do not spoil the frame.

Frames are composed from real photos of held-out people: a large face at the door and a
small one behind it, or two faces of comparable size (refused, as two people at the door).
"""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.services.runtime import Runtime
from tests.service.conftest import multipart
from tests.service.inputs import jpeg, store_counts

DOOR_BOX = (160, 100, 480, 420)  # where the face at the door is pasted (x0, y0, x1, y1)


def scene(front: bytes, behind: bytes, behind_side: int) -> bytes:
    """A 640x480 frame: ``front`` filling the door box, ``behind`` pasted small at the top left."""
    frame = Image.new("RGB", (640, 480), (120, 120, 120))
    side = DOOR_BOX[2] - DOOR_BOX[0]
    frame.paste(Image.open(io.BytesIO(front)).convert("RGB").resize((side, side)), DOOR_BOX[:2])
    frame.paste(Image.open(io.BytesIO(behind)).convert("RGB").resize((behind_side, behind_side)), (10, 10))
    return jpeg(frame)


@pytest.fixture(scope="module")
def crowd(faces: dict[str, list[bytes]]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(frames of person A with person B small behind, other frames of A the same way, A with B comparable)."""
    a, b = list(faces)[:2]
    with_bystander = [scene(photo, faces[b][i % len(faces[b])], 150) for i, photo in enumerate(faces[a][:8])]
    comparable = [scene(faces[a][0], faces[b][0], 260)]
    return with_bystander[:5], with_bystander[5:8], comparable


def test_the_person_at_the_door_is_enrolled_and_recognised(
    admin: TestClient, clean_runtime: Runtime, crowd: tuple[list[bytes], list[bytes], list[bytes]]
) -> None:
    enrol_frames, door_frames, _ = crowd
    enrolled = admin.post("/v1/persons", **multipart(enrol_frames, name="At the door"))  # type: ignore[arg-type]
    assert enrolled.status_code == 201, enrolled.text
    answer = admin.post("/v1/identify", **multipart(door_frames)).json()  # type: ignore[arg-type]
    assert answer["decision"] == "granted" and answer["person"]["id"] == enrolled.json()["id"], answer
    used = [f for f in answer["frames"] if f["used"]]
    assert used and any(f["faces"] == 2 for f in used), answer["frames"]
    for frame in used:
        x0, y0, x1, y1 = frame["face_box"]
        # The face used lies inside the door box, not at the bystander's corner.
        assert DOOR_BOX[0] <= x0 < x1 <= DOOR_BOX[2] and DOOR_BOX[1] <= y0 < y1 <= DOOR_BOX[3], frame


def test_two_comparable_faces_are_refused(
    admin: TestClient, clean_runtime: Runtime, crowd: tuple[list[bytes], list[bytes], list[bytes]]
) -> None:
    _, _, comparable = crowd
    before = store_counts(clean_runtime)
    answer = admin.post("/v1/identify", **multipart(comparable)).json()  # type: ignore[arg-type]
    assert answer["reason"] == "no_usable_frames"
    assert [(f["reason"], f["faces"], f["face_box"]) for f in answer["frames"]] == [("multiple_faces", 2, None)]
    assert store_counts(clean_runtime).persons == before.persons
