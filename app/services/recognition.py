"""The recognition flows: identify, verify, enrol, add frames, delete by face.

Each reads like the pipeline it is: frames -> burst -> fuse -> scan -> rescore -> decide.
The threshold is resolved once per request (:func:`threshold_in_force`) and travels as a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.metrics import DECISIONS, STAGE_SECONDS, TEMPLATES
from app.matching.decision import Decision, Match, decide, no_usable_frames, within
from app.matching.fusion import distance, fuse
from app.matching.threshold import Threshold
from app.services import analysis, audit
from app.services.audit import Actor
from app.services.runtime import Runtime
from app.store import crud
from app.store.models import Person
from app.vision.pipeline import Burst, crop_to_jpeg, process_burst


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    burst: Burst
    person: Person | None = None  # the granted (or verified) person
    attributes: dict[int, dict[str, Any]] = field(default_factory=dict)  # frame index -> face attributes, when asked for


# -- the steps ---------------------------------------------------------------------------------


def sync_index(runtime: Runtime, session: Session, generation: int | None = None) -> bool:
    """Bring this replica's index up to the database's generation. True if anything changed."""
    if generation is None:
        generation = crud.state(session).generation
    if generation == runtime.index.generation:
        return False
    deleted, batches = crud.template_changes(session, model_id=runtime.model_id, since=runtime.index.generation)
    runtime.index.apply(generation, deleted, batches)
    TEMPLATES.set(len(runtime.index))
    return True


def threshold_in_force(runtime: Runtime, state: crud.State) -> Threshold:
    """An admin's stored choice, else DEFAULT_THRESHOLD, else the model's table."""
    return Threshold.resolve(
        runtime.thresholds, stored_distance=state.threshold, stored_far=state.threshold_far, configured=runtime.settings.DEFAULT_THRESHOLD
    )


def prepare(runtime: Runtime, session: Session) -> Threshold:
    """What every matching request does first: one read of the store's state, the index
    brought up to date, the threshold resolved."""
    state = crud.state(session)
    sync_index(runtime, session, state.generation)
    return threshold_in_force(runtime, state)


def embed_burst(runtime: Runtime, frames: Sequence[bytes]) -> Burst:
    """decode -> check -> align -> embed every frame (the frames are bounded by the caller)."""
    burst = process_burst(frames, runtime.aligners, runtime.embedder, runtime.limits)
    for stage, seconds in burst.timings.items():
        STAGE_SECONDS.labels(stage=stage).observe(seconds)
    return burst


def scan(runtime: Runtime, session: Session, query: np.ndarray) -> list[Match]:
    """Shortlist with the int8 index, then rescore the shortlist on the exact stored vectors."""
    with STAGE_SECONDS.labels(stage="scan").time():
        candidates = runtime.index.scan(query, runtime.settings.SCAN_RESCORE_K)
        exact = crud.template_vectors(session, template_ids=[c.template_id for c in candidates])
        return [Match(person_id, float(distance(query, vector))) for person_id, vector in exact.values()]


def frame_details(burst: Burst) -> list[dict[str, Any]]:
    return [{"index": r.index, "used": r.used, "reason": r.reason, "faces": r.faces} for r in burst.reports]


def require_frames(burst: Burst, minimum: int) -> None:
    if burst.used < minimum:
        raise InvalidInput(
            "not_enough_usable_frames",
            f"{burst.used} usable frames; at least {minimum} are needed",
            {"usable": burst.used, "required": minimum, "rejected": burst.rejected(), "frames": frame_details(burst)},
        )


def get_person(session: Session, person_id: int) -> Person:
    person = crud.get_person(session, person_id=person_id)
    if person is None:
        raise NotFound.of("person", person_id)
    return person


def _journal_decision(actor: Actor, kind: str, runtime: Runtime, outcome: Outcome, **fields: Any) -> None:
    """Count the decision and hand its audit event (and a grant's match count) to the journal,
    which writes them off the response path (``app.services.journal``)."""
    decision = outcome.decision
    verdict = "granted" if decision.granted else "denied"
    DECISIONS.labels(kind=kind, decision=verdict, reason=decision.reason).inc()
    event = audit.event_fields(
        actor,
        kind,
        decision=verdict,
        reason=decision.reason,
        distance=decision.best.distance if decision.best else None,
        threshold=decision.threshold,
        margin=decision.margin,
        model_id=runtime.model_id,
        frames_used=outcome.burst.used,
        frames_rejected=outcome.burst.rejected(),
        **fields,
    )
    matched = decision.person_id if kind == "identify" and decision.granted else None
    runtime.journal.submit(event, matched_person=matched)


# -- the flows ---------------------------------------------------------------------------------


def check_frames(runtime: Runtime, frames: Sequence[bytes]) -> Burst:
    """What each frame would give (face found, quality, the reason a frame would be left out),
    without matching or storing anything: the console's feedback before an enrolment."""
    return embed_burst(runtime, frames)


def find(runtime: Runtime, session: Session, frames: Sequence[bytes]) -> Outcome:
    """Who is this burst? The decision alone: nothing counted, nothing audited."""
    burst = embed_burst(runtime, frames)
    threshold = prepare(runtime, session).for_frames(burst.used)
    if burst.used < runtime.settings.MIN_IDENTIFY_FRAMES:
        return Outcome(no_usable_frames(threshold), burst)
    query = fuse(burst.embeddings)
    decision = decide(scan(runtime, session, query), threshold)
    person = crud.get_person(session, person_id=decision.person_id) if decision.person_id is not None else None
    if decision.granted and person is None:
        # Deleted between the scan and now: a person who no longer exists is never granted.
        decision = Decision(False, "no_match", threshold)
    return Outcome(decision, burst, person)


def identify(
    runtime: Runtime,
    session: Session,
    frames: Sequence[bytes],
    *,
    actor: Actor,
    door_id: str | None,
    attributes: tuple[str, ...] = (),
) -> Outcome:
    """A door asks: grant or deny. A grant counts as the person's match; every answer is audited.

    ``attributes`` (e.g. ``("expression",)``) are computed after the decision, from the same
    crops, and never change it."""
    outcome = find(runtime, session, frames)
    if attributes:
        outcome = replace(outcome, attributes=analysis.attributes_of(runtime, outcome.burst, attributes))
    _journal_decision(
        actor,
        "identify",
        runtime,
        outcome,
        door_id=door_id,
        person_id=outcome.decision.person_id,
        **analysis.audit_fields(runtime, outcome.attributes),
    )
    return outcome


def verify(runtime: Runtime, session: Session, person_id: int, frames: Sequence[bytes], *, actor: Actor, door_id: str | None) -> Outcome:
    """1:1: is this burst the given person?"""
    person = get_person(session, person_id)
    template = crud.person_template(session, person_id=person_id, model_id=runtime.model_id)
    if template is None:
        raise Conflict("no_template_for_model", f"person {person_id} has no template for model {runtime.model_id}: re-enrol")
    burst = embed_burst(runtime, frames)
    threshold = prepare(runtime, session).for_frames(burst.used)
    if burst.used < runtime.settings.MIN_IDENTIFY_FRAMES:
        decision = no_usable_frames(threshold)
    else:
        decision = decide([Match(person_id, float(distance(fuse(burst.embeddings), template)))], threshold)
    outcome = Outcome(decision, burst, person)
    _journal_decision(actor, "verify", runtime, outcome, door_id=door_id, person_id=person_id)
    return outcome


def enrol(
    runtime: Runtime, session: Session, name: str, metadata: dict[str, Any], frames: Sequence[bytes], *, actor: Actor
) -> tuple[Person, Burst]:
    """One template, the sum vector of the usable frames; refused when the face is enrolled already."""
    burst = embed_burst(runtime, frames)
    require_frames(burst, runtime.settings.MIN_ENROL_FRAMES)
    threshold = prepare(runtime, session).for_frames(burst.used)
    query = fuse(burst.embeddings)
    existing = decide(scan(runtime, session, query), threshold)
    if existing.granted and existing.best is not None:
        raise Conflict(
            "already_enrolled",
            f"this face already matches person {existing.best.person_id}",
            {"person_id": existing.best.person_id, "distance": round(existing.best.distance, 6), "threshold": threshold},
        )
    sample = crop_to_jpeg(burst.sample_crop) if burst.sample_crop is not None else None
    person = crud.create_person(session, name=name, metadata=metadata, sample_jpeg=sample)
    crud.add_frame_embeddings(session, person_id=person.id, model_id=runtime.model_id, vectors=burst.embeddings)
    crud.put_template(session, person_id=person.id, model_id=runtime.model_id, vector=query, frame_count=burst.used)
    audit.record(
        session,
        actor,
        "enrol",
        created=True,
        person_id=person.id,
        model_id=runtime.model_id,
        frames_used=burst.used,
        frames_rejected=burst.rejected(),
        decision="enrolled",
    )
    return person, burst


def add_frames(runtime: Runtime, session: Session, person_id: int, frames: Sequence[bytes], *, actor: Actor) -> tuple[Person, Burst, int]:
    """Add frames to a person and re-fuse the template from all of them; refused when the new
    burst is not that person's face. Returns the person, the burst and the frames now fused."""
    person = get_person(session, person_id)
    burst = embed_burst(runtime, frames)
    require_frames(burst, 1)
    template = crud.person_template(session, person_id=person_id, model_id=runtime.model_id)
    if template is not None:
        threshold = prepare(runtime, session).for_frames(burst.used)
        d = float(distance(fuse(burst.embeddings), template))
        if not within(d, threshold):
            raise Conflict(
                "face_mismatch",
                f"these frames do not match person {person_id} (distance {d:.3f} > {threshold:.3f})",
                {"person_id": person_id, "distance": round(d, 6), "threshold": threshold},
            )
    crud.add_frame_embeddings(session, person_id=person_id, model_id=runtime.model_id, vectors=burst.embeddings)
    everything = crud.frame_vectors(session, person_id=person_id, model_id=runtime.model_id)
    crud.put_template(session, person_id=person_id, model_id=runtime.model_id, vector=fuse(everything), frame_count=len(everything))
    crud.update_person(session, person=person)
    audit.record(
        session,
        actor,
        "add_frames",
        person_id=person_id,
        model_id=runtime.model_id,
        frames_used=burst.used,
        frames_rejected=burst.rejected(),
    )
    return person, burst, len(everything)


@dataclass(frozen=True)
class DeletionTicket:
    person: Person
    distance: float
    token: str
    expires_at: Any


def request_deletion(runtime: Runtime, session: Session, frames: Sequence[bytes], *, actor: Actor) -> DeletionTicket:
    """Delete by face, step 1: who is this burst? A one-time token to delete them. Not a door
    match: the person's match count is left alone."""
    outcome = find(runtime, session, frames)
    decision = outcome.decision
    if outcome.person is None or decision.best is None:
        raise NotFound("no_matching_person", "this burst matches nobody enrolled", {"reason": decision.reason})
    token, row = crud.create_deletion_request(
        session, person_id=outcome.person.id, distance=decision.best.distance, ttl_s=runtime.settings.DELETION_TOKEN_TTL_S
    )
    audit.record(
        session,
        actor,
        "deletion_request",
        created=True,
        person_id=outcome.person.id,
        distance=decision.best.distance,
        threshold=decision.threshold,
        model_id=runtime.model_id,
        frames_used=outcome.burst.used,
    )
    return DeletionTicket(outcome.person, decision.best.distance, token, crud.as_aware(row.expires_at))


def confirm_deletion(session: Session, token: str, *, actor: Actor) -> tuple[int, str]:
    """Delete by face, step 2: the token deletes that person and nobody else. Returns (id, name)."""
    claimed = crud.claim_deletion_request(session, token=token)
    if claimed is None:
        raise NotFound("invalid_or_expired_token", "unknown, used or expired deletion token")
    person = crud.get_person(session, person_id=claimed.person_id)
    if person is None:
        raise NotFound("person_not_found", "the person of this request no longer exists")
    ref = (person.id, person.name)
    crud.delete_person(session, person_id=person.id)
    audit.record(session, actor, "delete", person_id=ref[0], decision="deleted", reason="confirmed_by_face")
    return ref
