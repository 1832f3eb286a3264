"""Every read and write of the store, as plain functions over a Session.

Arguments after the session are keyword-only. Callers own the transaction (commit or roll
back). Nothing here computes a face vector: the services layer fuses and passes vectors in.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import numpy as np
from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.orm import Session

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

__all__ = ["utcnow"]  # re-exported: callers stamp times with the store's clock


def vector_from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def vector_to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


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


# -- store state -----------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """The replicated state every request reads first, in one query."""

    generation: int
    threshold: float | None  # an admin's raw distance
    threshold_far: float | None  # or an admin's target FAR


def state(session: Session) -> State:
    row = session.execute(select(StoreState.generation, StoreState.threshold, StoreState.threshold_far).where(StoreState.id == 1)).one()
    return State(int(row.generation), row.threshold, row.threshold_far)


def bump_generation(session: Session) -> int:
    """Take the next generation. The row lock it takes serialises template writers."""
    return int(
        session.execute(
            update(StoreState).where(StoreState.id == 1).values(generation=StoreState.generation + 1).returning(StoreState.generation)
        ).scalar_one()
    )


def set_threshold(session: Session, *, distance: float | None = None, far: float | None = None) -> None:
    """Store an admin's choice: a raw distance or a target FAR (not both); neither goes back to
    the model's thresholds."""
    if distance is not None and far is not None:
        raise ValueError("a stored threshold is a distance or a target FAR, not both")
    session.execute(
        update(StoreState).where(StoreState.id == 1).values(threshold=distance, threshold_far=far, threshold_updated_at=utcnow())
    )


def template_changes(
    session: Session, *, model_id: str, since: int, batch: int = 20_000
) -> tuple[list[int], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """What changed after generation ``since``: deleted template ids, and batches of
    (template ids, person ids, vectors) added or re-fused. ``since`` < 0 reads everything."""
    deleted: list[int] = []
    if since >= 0:
        deleted = [
            int(t)
            for t in session.execute(
                select(TemplateDeletion.template_id).where(TemplateDeletion.model_id == model_id, TemplateDeletion.seq > since)
            ).scalars()
        ]
    query = (
        select(Template.id, Template.person_id, Template.vector)
        .where(Template.model_id == model_id, Template.seq > since)
        .execution_options(yield_per=batch)
    )

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for part in session.execute(query).partitions(batch):
            yield (
                np.array([r.id for r in part], dtype=np.int64),
                np.array([r.person_id for r in part], dtype=np.int64),
                np.stack([vector_from_bytes(r.vector) for r in part]),
            )

    return deleted, batches()


# -- persons and templates -------------------------------------------------------------------


def get_person(session: Session, *, person_id: int) -> Person | None:
    return session.get(Person, person_id)


def create_person(session: Session, *, name: str, metadata: dict[str, Any], sample_jpeg: bytes | None) -> Person:
    person = Person(name=name, metadata_=metadata, sample_jpeg=sample_jpeg)
    session.add(person)
    session.flush()
    return person


def update_person(session: Session, *, person: Person, name: str | None = None, metadata: dict[str, Any] | None = None) -> Person:
    """Only what is given changes; metadata, when given, replaces the stored object."""
    if name is not None:
        person.name = name
    if metadata is not None:
        person.metadata_ = metadata
    person.updated_at = utcnow()
    session.flush()
    return person


def add_frame_embeddings(session: Session, *, person_id: int, model_id: str, vectors: np.ndarray) -> None:
    for vector in vectors:
        session.add(FrameEmbedding(person_id=person_id, model_id=model_id, vector=vector_to_bytes(vector)))
    session.flush()


def frame_vectors(session: Session, *, person_id: int, model_id: str) -> np.ndarray:
    """Every stored frame embedding of a person for a model, (n, d)."""
    blobs = (
        session.execute(select(FrameEmbedding.vector).where(FrameEmbedding.person_id == person_id, FrameEmbedding.model_id == model_id))
        .scalars()
        .all()
    )
    return np.stack([vector_from_bytes(b) for b in blobs]) if blobs else np.zeros((0, 0), np.float32)


def put_template(session: Session, *, person_id: int, model_id: str, vector: np.ndarray, frame_count: int) -> Template:
    """Insert or replace a person's template, stamped with a new generation."""
    seq = bump_generation(session)
    template = session.execute(select(Template).where(Template.person_id == person_id, Template.model_id == model_id)).scalar_one_or_none()
    if template is None:
        template = Template(person_id=person_id, model_id=model_id, vector=vector_to_bytes(vector), frame_count=frame_count, seq=seq)
        session.add(template)
    else:
        template.vector, template.frame_count, template.seq = vector_to_bytes(vector), frame_count, seq
    session.flush()
    return template


def delete_person(session: Session, *, person_id: int) -> bool:
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


def template_vectors(session: Session, *, template_ids: Sequence[int]) -> dict[int, tuple[int, np.ndarray]]:
    """Exact vectors of the shortlisted templates; deleted ones simply do not come back."""
    if not template_ids:
        return {}
    rows = session.execute(select(Template.id, Template.person_id, Template.vector).where(Template.id.in_(list(template_ids)))).all()
    return {int(r.id): (int(r.person_id), vector_from_bytes(r.vector)) for r in rows}


def person_template(session: Session, *, person_id: int, model_id: str) -> np.ndarray | None:
    blob = session.execute(
        select(Template.vector).where(Template.person_id == person_id, Template.model_id == model_id)
    ).scalar_one_or_none()
    return None if blob is None else vector_from_bytes(blob)


def list_persons(session: Session, *, offset: int, limit: int, name: str | None = None) -> tuple[list[Person], int]:
    query = select(Person)
    count_query = select(func.count()).select_from(Person)
    if name:
        # A case-insensitive substring: % and _ in the name are themselves, not wildcards.
        matches = Person.name.icontains(name, autoescape=True)
        query = query.where(matches)
        count_query = count_query.where(matches)
    persons = list(session.scalars(query.order_by(Person.id).offset(offset).limit(limit)))
    return persons, int(session.execute(count_query).scalar_one())


def count_persons(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(Person)).scalar_one())


def frame_counts(session: Session, *, person_ids: Sequence[int], model_id: str) -> dict[int, int]:
    if not person_ids:
        return {}
    rows = session.execute(
        select(Template.person_id, Template.frame_count).where(Template.person_id.in_(list(person_ids)), Template.model_id == model_id)
    ).all()
    return {int(r.person_id): int(r.frame_count) for r in rows}


def record_match(session: Session, *, person_id: int, count: int = 1, at: datetime | None = None) -> bool:
    """Count ``count`` door matches, the last at ``at``; False when the person no longer exists."""
    result = session.execute(
        update(Person).where(Person.id == person_id).values(search_count=Person.search_count + count, last_matched_at=at or utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


def sample_templates(session: Session, *, model_id: str, limit: int) -> np.ndarray:
    blobs = (
        session.execute(select(Template.vector).where(Template.model_id == model_id).order_by(func.random()).limit(limit)).scalars().all()
    )
    return np.stack([vector_from_bytes(b) for b in blobs]) if blobs else np.zeros((0, 0), np.float32)


def bulk_insert_templates(
    session: Session, *, model_id: str, names: Sequence[str], vectors: np.ndarray, metadata: dict[str, Any] | None = None
) -> list[int]:
    """Many people with a one-frame template each, under one new generation (benchmarks and
    imports of 100k+ people); returns their ids. No frame embeddings are stored."""
    seq = bump_generation(session)
    now = utcnow()
    ids = list(
        session.execute(
            insert(Person).returning(Person.id, sort_by_parameter_order=True),
            [{"name": n, "metadata_": metadata or {}, "search_count": 0, "created_at": now, "updated_at": now} for n in names],
        ).scalars()
    )
    session.execute(
        insert(Template),
        [
            {
                "person_id": pid,
                "model_id": model_id,
                "vector": vector_to_bytes(v),
                "frame_count": 1,
                "seq": seq,
                "created_at": now,
                "updated_at": now,
            }
            for pid, v in zip(ids, vectors, strict=True)
        ],
    )
    return [int(i) for i in ids]


# -- deletion requests -----------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    # Secrets are 256-bit random: a plain SHA-256 cannot be brute-forced, no salt needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_deletion_request(session: Session, *, person_id: int, distance: float, ttl_s: int) -> tuple[str, DeletionRequest]:
    token = secrets.token_urlsafe(32)
    request = DeletionRequest(
        token_hash=hash_secret(token), person_id=person_id, distance=distance, expires_at=utcnow() + timedelta(seconds=ttl_s)
    )
    session.add(request)
    session.flush()
    return token, request


def claim_deletion_request(session: Session, *, token: str) -> DeletionRequest | None:
    """Mark the request used, atomically: of two concurrent confirmations only one wins."""
    now = utcnow()
    claimed = session.execute(
        update(DeletionRequest)
        .where(DeletionRequest.token_hash == hash_secret(token), DeletionRequest.used_at.is_(None), DeletionRequest.expires_at > now)
        .values(used_at=now)
        .returning(DeletionRequest.id)
    ).scalar_one_or_none()
    return None if claimed is None else session.get(DeletionRequest, claimed)


# -- keys ------------------------------------------------------------------------------------

KEY_PREFIX = "fg"


def create_api_key(session: Session, *, name: str, scope: str, expires_at: datetime | None = None) -> tuple[str, ApiKey]:
    """Returns (the key in clear, shown once, and its row, which holds only the hash)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = f"{KEY_PREFIX}_{prefix}_{secret}"
    row = ApiKey(name=name, scope=scope, prefix=prefix, key_hash=hash_secret(key), expires_at=expires_at)
    session.add(row)
    session.flush()
    return key, row


def find_api_key(session: Session, *, key: str) -> ApiKey | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = session.execute(select(ApiKey).where(ApiKey.prefix == parts[1])).scalar_one_or_none()
    if row is None or not secrets.compare_digest(row.key_hash, hash_secret(key)):
        return None
    return row


def get_api_key(session: Session, *, key_id: int) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def list_api_keys(session: Session, *, offset: int = 0, limit: int | None = None) -> tuple[list[ApiKey], int]:
    query = select(ApiKey).order_by(ApiKey.id).offset(offset)
    rows = list(session.execute(query if limit is None else query.limit(limit)).scalars())
    return rows, int(session.execute(select(func.count()).select_from(ApiKey)).scalar_one())


def revoke_api_key(session: Session, *, row: ApiKey) -> bool:
    """True when this call revoked it; False when it already was."""
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    session.flush()
    return True


# -- events ----------------------------------------------------------------------------------


def record_event(session: Session, **fields: Any) -> Event:
    event = Event(**fields)
    session.add(event)
    session.flush()
    return event


def record_events(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Many events in one statement (the journal's batches)."""
    if rows:
        session.execute(insert(Event), list(rows))


def list_events(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    door_id: str | None = None,
    person_id: int | None = None,
    decision: str | None = None,
    kind: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[Event], int]:
    """Newest first, with the number matching the filters."""
    conditions: list[ColumnElement[bool]] = []
    if since is not None:
        conditions.append(Event.created_at >= since)
    if until is not None:
        conditions.append(Event.created_at < until)
    if door_id is not None:
        conditions.append(Event.door_id == door_id)
    if person_id is not None:
        conditions.append(Event.person_id == person_id)
    if decision is not None:
        conditions.append(Event.decision == decision)
    if kind is not None:
        conditions.append(Event.kind == kind)
    rows = list(session.execute(select(Event).where(*conditions).order_by(Event.id.desc()).offset(offset).limit(limit)).scalars())
    count = session.execute(select(func.count()).select_from(Event).where(*conditions)).scalar_one()
    return rows, int(count)


def purge_events(session: Session, *, older_than: datetime) -> int:
    result = session.execute(delete(Event).where(Event.created_at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)


def purge_tombstones(session: Session, *, older_than: datetime) -> int:
    result = session.execute(delete(TemplateDeletion).where(TemplateDeletion.created_at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)
