"""Helpers shared by routes: reading uploaded frames, shaping frames and people."""

from __future__ import annotations

from typing import Any

from fastapi import UploadFile

from app.api.errors import ApiError
from app.api.schemas import FrameAttributes, FramePublic, PersonPublic
from app.services.runtime import Runtime
from app.store import crud
from app.store.models import Person
from app.vision.pipeline import Burst


def read_frames(frames: list[UploadFile] | None, runtime: Runtime) -> list[bytes]:
    settings = runtime.settings
    if not frames:
        raise ApiError(422, "no_frames", "send at least one frame in the 'frames' field")
    if len(frames) > settings.MAX_FRAMES:
        raise ApiError(413, "too_many_frames", f"{len(frames)} frames; the limit is {settings.MAX_FRAMES}")
    out = []
    for i, upload in enumerate(frames):
        data = upload.file.read(settings.MAX_FRAME_BYTES + 1)
        if len(data) > settings.MAX_FRAME_BYTES:
            raise ApiError(413, "frame_too_large", f"frame {i} exceeds {settings.MAX_FRAME_BYTES} bytes", {"frame": i})
        out.append(data)
    return out


def frames_public(burst: Burst, attributes: dict[int, dict[str, Any]] | None = None) -> list[FramePublic]:
    attributes = attributes or {}
    return [
        FramePublic(
            index=r.index,
            used=r.used,
            reason=r.reason,
            faces=r.faces,
            face_box=[round(v, 1) for v in r.face_box] if r.face_box else None,
            attributes=FrameAttributes.model_validate(attributes[r.index]) if r.index in attributes else None,
        )
        for r in burst.reports
    ]


def person_public(person: Person, frame_count: int | None) -> PersonPublic:
    return PersonPublic(
        id=person.id,
        name=person.name,
        metadata=person.metadata_ or {},
        frame_count=frame_count or 0,
        has_template=frame_count is not None,
        search_count=person.search_count or 0,
        last_matched_at=crud.as_aware(person.last_matched_at),
        created_at=crud.as_aware(person.created_at),
        updated_at=crud.as_aware(person.updated_at),
    )
