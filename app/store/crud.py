"""Plain functions over a Session. Callers own the transaction (commit or roll back)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.store.index import vector_from_bytes, vector_to_bytes
from app.store.models import (
    ApiKey,
    DeletionRequest,
    Event,
    FrameEmbedding,
    Person,
    StoreState,
    Template,
    TemplateDeletion,
    utcnow,
)
from app.vision.fusion import fuse

# -- store state -----------------------------------------------------------------------------


def bump_generation(session: Session) -> int:
    """Take the next generation. The row lock it takes serialises template writers."""
    return int(
        session.execute(
            update(StoreState).where(StoreState.id == 1).values(generation=StoreState.generation + 1).returning(StoreState.generation)
        ).scalar_one()
    )


def stored_threshold(session: Session) -> float | None:
    return session.execute(select(StoreState.threshold).where(StoreState.id == 1)).scalar_one()


def set_threshold(session: Session, value: float | None) -> None:
    """Store an admin's threshold; None goes back to the model's thresholds by frames fused."""
    session.execute(update(StoreState).where(StoreState.id == 1).values(threshold=value, threshold_updated_at=utcnow()))


# -- persons and templates -------------------------------------------------------------------


def create_person(
    session: Session, name: str, metadata: dict[str, Any], sample_jpeg: bytes | None, model_id: str, frame_vectors: np.ndarray
) -> Person:
    seq = bump_generation(session)
    person = Person(name=name, metadata_=metadata, sample_jpeg=sample_jpeg)
    session.add(person)
    session.flush()
    for vector in frame_vectors:
        session.add(FrameEmbedding(person_id=person.id, model_id=model_id, vector=vector_to_bytes(vector)))
    session.add(
        Template(
            person_id=person.id, model_id=model_id, vector=vector_to_bytes(fuse(frame_vectors)), frame_count=len(frame_vectors), seq=seq
        )
    )
    session.flush()
    return person


def add_frames(session: Session, person: Person, model_id: str, frame_vectors: np.ndarray) -> Template:
    """Store new frames and re-fuse the template from all of the person's frames."""
    seq = bump_generation(session)
    for vector in frame_vectors:
        session.add(FrameEmbedding(person_id=person.id, model_id=model_id, vector=vector_to_bytes(vector)))
    session.flush()
    blobs = (
        session.execute(select(FrameEmbedding.vector).where(FrameEmbedding.person_id == person.id, FrameEmbedding.model_id == model_id))
        .scalars()
        .all()
    )
    fused = fuse(np.stack([vector_from_bytes(b) for b in blobs]))
    template = session.execute(select(Template).where(Template.person_id == person.id, Template.model_id == model_id)).scalar_one_or_none()
    if template is None:
        template = Template(person_id=person.id, model_id=model_id, vector=vector_to_bytes(fused), frame_count=len(blobs), seq=seq)
        session.add(template)
    else:
        template.vector, template.frame_count, template.seq = vector_to_bytes(fused), len(blobs), seq
    person.updated_at = utcnow()
    session.flush()
    return template


def delete_person(session: Session, person_id: int) -> bool:
    """Remove a person with every template, frame embedding and the sample image.

    Tombstones carry the new generation so every replica drops the templates too.
    """
    if session.get(Person, person_id) is None:
        return False
    seq = bump_generation(session)
    for tid, model_id in session.execute(select(Template.id, Template.model_id).where(Template.person_id == person_id)).all():
        session.add(TemplateDeletion(template_id=tid, model_id=model_id, seq=seq))
    session.execute(delete(FrameEmbedding).where(FrameEmbedding.person_id == person_id))
    session.execute(delete(Template).where(Template.person_id == person_id))
    session.execute(delete(DeletionRequest).where(DeletionRequest.person_id == person_id))
    session.execute(delete(Person).where(Person.id == person_id))
    session.flush()
    return True


def template_vectors(session: Session, template_ids: Sequence[int]) -> dict[int, tuple[int, np.ndarray]]:
    """Exact vectors of the shortlisted templates; deleted ones simply do not come back."""
    if not template_ids:
        return {}
    rows = session.execute(select(Template.id, Template.person_id, Template.vector).where(Template.id.in_(list(template_ids)))).all()
    return {int(r.id): (int(r.person_id), vector_from_bytes(r.vector)) for r in rows}


def person_template(session: Session, person_id: int, model_id: str) -> np.ndarray | None:
    blob = session.execute(
        select(Template.vector).where(Template.person_id == person_id, Template.model_id == model_id)
    ).scalar_one_or_none()
    return None if blob is None else vector_from_bytes(blob)


def list_persons(session: Session, offset: int, limit: int, name: str | None = None) -> tuple[list[Person], int]:
    query = select(Person)
    count_query = select(func.count()).select_from(Person)
    if name:
        # A case-insensitive substring: % and _ in the name are themselves, not wildcards.
        matches = Person.name.icontains(name, autoescape=True)
        query = query.where(matches)
        count_query = count_query.where(matches)
    persons = list(session.scalars(query.order_by(Person.id).offset(offset).limit(limit)))
    return persons, int(session.execute(count_query).scalar_one())


def frame_counts(session: Session, person_ids: Sequence[int], model_id: str) -> dict[int, int]:
    if not person_ids:
        return {}
    rows = session.execute(
        select(Template.person_id, Template.frame_count).where(Template.person_id.in_(list(person_ids)), Template.model_id == model_id)
    ).all()
    return {int(r.person_id): int(r.frame_count) for r in rows}


def count_templates(session: Session, model_id: str) -> int:
    return int(session.execute(select(func.count()).select_from(Template).where(Template.model_id == model_id)).scalar_one())


def record_match(session: Session, person_id: int) -> bool:
    """Count the match; False when the person no longer exists (deleted since the scan).

    The row lock this UPDATE takes keeps the person from being deleted until the caller's
    transaction ends, so the person read after it is the one that was matched.
    """
    result = session.execute(
        update(Person).where(Person.id == person_id).values(search_count=Person.search_count + 1, last_matched_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


def sample_templates(session: Session, model_id: str, limit: int) -> np.ndarray:
    blobs = (
        session.execute(select(Template.vector).where(Template.model_id == model_id).order_by(func.random()).limit(limit)).scalars().all()
    )
    return np.stack([vector_from_bytes(b) for b in blobs]) if blobs else np.zeros((0, 0), np.float32)


# -- tokens and keys -------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    # Secrets are 256-bit random: a plain SHA-256 cannot be brute-forced, no salt needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_deletion_request(session: Session, person_id: int, distance: float, ttl_s: int) -> tuple[str, DeletionRequest]:
    token = secrets.token_urlsafe(32)
    request = DeletionRequest(
        token_hash=hash_secret(token), person_id=person_id, distance=distance, expires_at=utcnow() + timedelta(seconds=ttl_s)
    )
    session.add(request)
    session.flush()
    return token, request


def claim_deletion_request(session: Session, token: str) -> DeletionRequest | None:
    """Mark the request used, atomically: of two concurrent confirmations only one wins."""
    now = utcnow()
    claimed = session.execute(
        update(DeletionRequest)
        .where(DeletionRequest.token_hash == hash_secret(token), DeletionRequest.used_at.is_(None), DeletionRequest.expires_at > now)
        .values(used_at=now)
        .returning(DeletionRequest.id)
    ).scalar_one_or_none()
    return None if claimed is None else session.get(DeletionRequest, claimed)


KEY_PREFIX = "fg"


def create_api_key(session: Session, name: str, scope: str, expires_at: datetime | None = None) -> tuple[str, ApiKey]:
    """Returns (the key in clear, shown once, and its row, which holds only the hash)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = f"{KEY_PREFIX}_{prefix}_{secret}"
    row = ApiKey(name=name, scope=scope, prefix=prefix, key_hash=hash_secret(key), expires_at=expires_at)
    session.add(row)
    session.flush()
    return key, row


def find_api_key(session: Session, key: str) -> ApiKey | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = session.execute(select(ApiKey).where(ApiKey.prefix == parts[1])).scalar_one_or_none()
    if row is None or not secrets.compare_digest(row.key_hash, hash_secret(key)):
        return None
    return row


@overload
def as_aware(moment: datetime) -> datetime: ...
@overload
def as_aware(moment: None) -> None: ...
@overload
def as_aware(moment: datetime | None) -> datetime | None: ...
def as_aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# -- events ----------------------------------------------------------------------------------


def record_event(session: Session, **fields: Any) -> Event:
    event = Event(**fields)
    session.add(event)
    session.flush()
    return event


def purge_events(session: Session, older_than: datetime) -> int:
    result = session.execute(delete(Event).where(Event.created_at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)


def purge_tombstones(session: Session, older_than: datetime) -> int:
    result = session.execute(delete(TemplateDeletion).where(TemplateDeletion.created_at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)
