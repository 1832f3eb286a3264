"""Identify and verify races (app/api/routes/recognition.py); inputs are in test_bad_uploads.py."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.services.runtime import Runtime
from app.store import crud
from tests.service.conftest import multipart
from tests.service.inputs import enrol


def test_person_deleted_during_identify_is_not_granted(
    tight: TestClient, clean_runtime: Runtime, door_faces: dict[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete commits after the scan found the person's template but before the answer."""
    photo = door_faces[next(iter(door_faces))][0]
    pid = enrol(tight, "Racer", [photo] * 3)["id"]
    scanned = crud.template_vectors

    def scan_then_delete(session: Session, *, template_ids: Any) -> Any:
        found = scanned(session, template_ids=template_ids)
        with clean_runtime.sessions() as other:
            crud.delete_person(other, person_id=pid)
            other.commit()
        return found

    monkeypatch.setattr(crud, "template_vectors", scan_then_delete)
    answer = tight.post("/v1/identify", **multipart([photo]))
    assert answer.status_code == 200, answer.text
    assert (answer.json()["decision"], answer.json()["person"]) == ("denied", None)
