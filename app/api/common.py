"""Helpers shared by routes: reading uploaded frames, shaping frames, writing audit events."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request, UploadFile
from sqlalchemy.orm import Session

from app.api.deps import Principal
from app.api.schemas import FramePublic, PersonPublic
from app.core.errors import ApiError
from app.core.logging import request_id_var
from app.core.metrics import DECISIONS
from app.recognition import Decision, Runtime
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


def frames_public(burst: Burst) -> list[FramePublic]:
    return [
        FramePublic(
            index=r.index,
            used=r.used,
            reason=r.reason,
            faces=r.faces,
            face_box=[round(v, 1) for v in r.face_box] if r.face_box else None,
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


def elapsed_ms(request: Request) -> float:
    started = getattr(request.state, "started", None)
    return round((time.perf_counter() - started) * 1000, 2) if started else 0.0


def audit(
    session: Session, request: Request, principal: Principal | None, kind: str, status_code: int | None = None, **fields: Any
) -> None:
    """Record a served request; its status is the route's own (201 for a creation) unless given."""
    if status_code is None:
        status_code = getattr(request.scope.get("route"), "status_code", None) or 200
    crud.record_event(
        session,
        kind=kind,
        request_id=request_id_var.get(),
        key_name=principal.name if principal else None,
        latency_ms=elapsed_ms(request),
        status_code=status_code,
        **fields,
    )


def audit_decision(
    session: Session,
    request: Request,
    principal: Principal,
    kind: str,
    decision: Decision,
    runtime: Runtime,
    door_id: str | None,
    person_id: int | None = None,
) -> None:
    outcome = "granted" if decision.granted else "denied"
    DECISIONS.labels(kind=kind, decision=outcome, reason=decision.reason).inc()
    audit(
        session,
        request,
        principal,
        kind,
        door_id=door_id,
        decision=outcome,
        reason=decision.reason,
        person_id=person_id if person_id is not None else (decision.best.person_id if decision.granted and decision.best else None),
        distance=decision.best.distance if decision.best else None,
        threshold=decision.threshold,
        margin=decision.margin,
        model_id=runtime.model_id,
        frames_used=decision.burst.used,
        frames_rejected=decision.burst.rejected(),
    )
