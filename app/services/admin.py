"""Administration: people, keys, the threshold and the audit log.

Routes and the command line call these same functions, so an operation is validated and
audited alike whichever way it came (a key revoked from the CLI is audited as over HTTP).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput, NotFound
from app.matching.fusion import pairwise_distances
from app.matching.threshold import Threshold
from app.services import audit
from app.services.audit import Actor
from app.services.recognition import get_person, sync_index, threshold_in_force
from app.services.runtime import Runtime
from app.store import crud
from app.store.models import ApiKey, Event, Person

# -- people --------------------------------------------------------------------------------------


def update_person(session: Session, person_id: int, *, name: str | None, metadata: dict[str, Any] | None, actor: Actor) -> Person:
    """Only the fields given change; metadata, when given, replaces the stored object."""
    person = crud.update_person(session, person=get_person(session, person_id), name=name, metadata=metadata)
    audit.record(session, actor, "update_person", person_id=person_id)
    return person


def delete_person(session: Session, person_id: int, *, actor: Actor) -> tuple[int, str]:
    person = get_person(session, person_id)
    ref = (person.id, person.name)
    crud.delete_person(session, person_id=person_id)
    audit.record(session, actor, "delete", person_id=person_id, decision="deleted")
    return ref


# -- keys ----------------------------------------------------------------------------------------


def create_key(session: Session, *, name: str, scope: str, expires_in_days: int | None, actor: Actor) -> tuple[str, ApiKey]:
    """The key in clear (shown once) and its row; validated by the caller's schema (KeyCreate)."""
    expires = crud.utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    key, row = crud.create_api_key(session, name=name, scope=scope, expires_at=expires)
    audit.record(session, actor, "key_created", created=True, reason=f"{row.name}:{row.scope}")
    return key, row


def revoke_key(session: Session, key_id: int, *, actor: Actor) -> ApiKey:
    row = crud.get_api_key(session, key_id=key_id)
    if row is None:
        raise NotFound.of("key", key_id)
    if crud.revoke_api_key(session, row=row):
        audit.record(session, actor, "key_revoked", reason=row.name)
    return row


# -- threshold -----------------------------------------------------------------------------------


def current_threshold(runtime: Runtime, session: Session) -> Threshold:
    return threshold_in_force(runtime, crud.state(session))


def _describe(threshold: Threshold, frames: int) -> str:
    if threshold.target_far is not None:
        return f"target FAR {threshold.target_far:g} ({threshold.source})"
    return f"distance {threshold.for_frames(frames):.6f} ({threshold.source})"


def set_threshold(
    runtime: Runtime, session: Session, *, distance: float | None = None, target_far: float | None = None, actor: Actor, reason: str = ""
) -> Threshold:
    """Store a raw distance (every burst size) or a target FAR of the model's table (its row
    for each burst size); neither goes back to the model's default."""
    if target_far is not None:
        fars = runtime.thresholds.fars() if runtime.thresholds is not None else []
        if not any(abs(f - target_far) <= 1e-12 * max(1.0, f) for f in fars):
            raise InvalidInput(
                "unsupported_target_far",
                f"the model measured its thresholds at FAR {', '.join(f'{f:g}' for f in fars) or '(none)'}; pick one of them",
                {"supported": fars},
            )
    frames = runtime.thresholds.template_frames if runtime.thresholds else 1
    before = current_threshold(runtime, session)
    crud.set_threshold(session, distance=distance, far=target_far)
    after = current_threshold(runtime, session)
    audit.record(
        session,
        actor,
        "threshold",
        threshold=after.for_frames(frames),
        reason=f"{reason}{_describe(after, frames)}; was {_describe(before, frames)}",
        model_id=runtime.model_id,
    )
    return after


@dataclass(frozen=True)
class Calibration:
    templates_used: int
    min_negative_distance: float | None
    table_threshold: float | None
    recommended: float | None
    applied: bool
    threshold: Threshold


def calibrate(
    runtime: Runtime,
    session: Session,
    *,
    method: Literal["min_negative", "target_far"],
    target_far: float,
    sample: int,
    apply: bool,
    actor: Actor,
) -> Calibration:
    """Two rules. ``target_far``: the model's threshold at that FAR for bursts of a template's
    frames, from the same table the service applies (applying it stores the FAR, so every
    burst size gets its own row). ``min_negative``: the origin's smallest distance between two
    enrolled people (applying it stores that distance)."""
    vectors = crud.sample_templates(session, model_id=runtime.model_id, limit=sample)
    min_negative = None
    if len(vectors) >= 2:
        d = pairwise_distances(vectors)
        d[np.diag_indices_from(d)] = np.inf
        min_negative = float(d.min())
    table = runtime.thresholds
    table_t = None
    if table is not None:
        try:
            table_t = table.at(table.template_frames, target_far)
        except KeyError:
            table_t = None
    recommended = table_t if method == "target_far" else min_negative
    applied = False
    if apply and recommended is not None and 0.0 < recommended < 1.0:
        if method == "target_far":
            set_threshold(runtime, session, target_far=target_far, actor=actor, reason="calibrated: ")
        else:
            set_threshold(runtime, session, distance=recommended, actor=actor, reason="calibrated min_negative: ")
        applied = True
    return Calibration(len(vectors), min_negative, table_t, recommended, applied, current_threshold(runtime, session))


@dataclass(frozen=True)
class Distributions:
    bins: list[float]
    frames: int
    genuine: list[int] | None  # from the model's evaluation (None when the package has none)
    impostor: list[int] | None
    enrolled_nearest: list[int]  # each enrolled template's distance to its nearest other template
    templates_used: int


def distributions(runtime: Runtime, session: Session, *, sample: int) -> Distributions:
    """Distance histograms for the threshold page: genuine and impostor bursts of a template's
    frames from the model's evaluation, and the enrolled templates' nearest-neighbour distances
    binned the same way."""
    table = runtime.package.burst_table or {}
    histograms = table.get("histograms") or {}
    frames = int(table.get("template_frames", 5))
    measured = (histograms.get("by_frames") or {}).get(str(frames)) or {}
    bins = [float(b) for b in histograms.get("bins") or np.linspace(0.0, 2.0, 101)]
    vectors = crud.sample_templates(session, model_id=runtime.model_id, limit=sample)
    nearest: list[int] = [0] * (len(bins) - 1)
    if len(vectors) >= 2:
        d = pairwise_distances(vectors)
        d[np.diag_indices_from(d)] = np.inf
        nearest = [int(c) for c in np.histogram(d.min(axis=1), bins=bins)[0]]
    return Distributions(
        bins=bins,
        frames=frames,
        genuine=[int(c) for c in measured["genuine"]] if "genuine" in measured else None,
        impostor=[int(c) for c in measured["impostor"]] if "impostor" in measured else None,
        enrolled_nearest=nearest,
        templates_used=len(vectors),
    )


# -- audit log and housekeeping ---------------------------------------------------------------


def list_events(session: Session, **filters: Any) -> tuple[list[Event], int]:
    return crud.list_events(session, **filters)


def purge(session: Session, *, retention_days: int, now: datetime | None = None) -> tuple[int, int]:
    """Delete events older than the retention and tombstones every replica has seen (a day)."""
    now = now or crud.utcnow()
    events_gone = crud.purge_events(session, older_than=now - timedelta(days=retention_days))
    tombstones_gone = crud.purge_tombstones(session, older_than=now - timedelta(days=1))
    return events_gone, tombstones_gone


def warm_index(runtime: Runtime) -> int:
    """Load every template into the index (start-up); returns how many are held."""
    with runtime.sessions() as session:
        sync_index(runtime, session)
    return len(runtime.index)
