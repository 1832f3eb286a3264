"""Face analysis: attributes of the faces in a burst, without any identity work."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from app.api.common import frames_public, read_frames
from app.api.deps import AnalysisKey, Multipart, RuntimeDep, SessionDep, attempt, audit_context
from app.api.errors import error_responses
from app.api.schemas import AnalyzePublic
from app.core.validation import TextCheck
from app.services import analysis

router = APIRouter(prefix="/v1", tags=["analysis"])


@router.post(
    "/analyze",
    response_model=AnalyzePublic,
    dependencies=[attempt("analyze"), Multipart],
    responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503),
    summary="Face attributes of a burst: expression; gender and age when turned on. Nothing is matched or stored",
)
def analyze(
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: AnalysisKey,
    frames: Annotated[list[UploadFile], File(description="1..MAX_FRAMES JPEG or PNG frames")],
    attributes: Annotated[
        str | None,
        Form(max_length=100, description="comma-separated: `expression`, `gender_age`; default every attribute this server serves"),
        TextCheck,
    ] = None,
) -> AnalyzePublic:
    """Per frame: whether a face was found, its quality verdict, and for a usable face the
    expression probabilities and top class (and, when GENDER_AGE_ENABLED, the probability of
    `female` and an age estimate). Works with nobody enrolled; reads and writes no person or
    template; never part of a door decision. Only the audit event is written (with the
    attributes only when AUDIT_ATTRIBUTES is on).

    `curl -H "X-API-Key: $KEY" -F frames=@a.jpg http://localhost:8000/v1/analyze`
    """
    audit_context(request, "analyze")
    tasks = analysis.resolve_tasks(runtime, attributes)
    result = analysis.analyze(runtime, session, read_frames(frames, runtime), actor=principal, tasks=tasks)
    return AnalyzePublic(
        models=result.models,
        unavailable=runtime.attributes.unavailable,
        frames_with_face=sum(1 for r in result.burst.reports if r.faces > 0),
        frames_analysed=len(result.attributes),
        frames=frames_public(result.burst, result.attributes),
    )
