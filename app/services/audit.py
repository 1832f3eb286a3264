"""Who did what: the actor of an operation, and the audit events every flow writes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.store import crud
from app.store.models import Event

# Free text recorded in an event (a key's name, a threshold change) is cut to its column.
REASON_CHARS = int(getattr(Event.__table__.c.reason.type, "length", None) or 80)


@dataclass(frozen=True)
class Actor:
    """The caller: an API key (over HTTP) or an operator at the command line."""

    name: str
    scope: Literal["door", "analysis", "door+analysis", "admin"]
    key_id: int | None = None
    via: Literal["http", "cli"] = "http"
    request_id: str | None = None
    started: float | None = None  # time.perf_counter() when the request arrived

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    def may(self, need: Literal["door", "analysis", "admin"]) -> bool:
        return need in GRANTS[self.scope]


# What each key scope may call: door keys open doors, analysis keys read face attributes
# (a door key is granted analysis as ``door+analysis``), admin keys everything.
GRANTS: dict[str, frozenset[str]] = {
    "door": frozenset({"door"}),
    "analysis": frozenset({"analysis"}),
    "door+analysis": frozenset({"door", "analysis"}),
    "admin": frozenset({"door", "analysis", "admin"}),
}
KeyScope = Literal["door", "analysis", "door+analysis", "admin"]


CLI = Actor(name="cli", scope="admin", via="cli")


def elapsed_ms(actor: Actor) -> float | None:
    return round((time.perf_counter() - actor.started) * 1000, 2) if actor.started is not None else None


def event_fields(actor: Actor | None, kind: str, *, created: bool = False, status_code: int | None = None, **fields: Any) -> dict[str, Any]:
    """The audit event of an operation that was served. Over HTTP its status is the one the
    client gets (201 for a creation); the command line records none. The key's name is
    recorded, never the key."""
    if status_code is None and actor is not None and actor.via == "http":
        status_code = 201 if created else 200
    if isinstance(fields.get("reason"), str):
        fields["reason"] = fields["reason"][:REASON_CHARS]
    return {
        "kind": kind,
        "request_id": actor.request_id if actor else None,
        "key_name": actor.name if actor else None,
        "latency_ms": elapsed_ms(actor) if actor else None,
        "status_code": status_code,
        **fields,
    }


def record(
    session: Session, actor: Actor | None, kind: str, *, created: bool = False, status_code: int | None = None, **fields: Any
) -> None:
    """One audit event, in the operation's own transaction (admin changes are audited atomically)."""
    crud.record_event(session, **event_fields(actor, kind, created=created, status_code=status_code, **fields))


def record_refusal(
    session: Session,
    *,
    kind: str,
    code: str,
    status_code: int,
    key_name: str | None,
    request_id: str | None,
    started: float | None,
    model_id: str,
    door_id: str | None = None,
    person_id: int | None = None,
) -> None:
    """One audit event for a refused attempt (a 4xx, or a 500): what was tried, by which key
    (its name, never the key), and the code the client got."""
    crud.record_event(
        session,
        kind=kind,
        door_id=door_id,
        person_id=person_id,
        decision="error",
        reason=code,
        status_code=status_code,
        request_id=request_id,
        key_name=key_name,
        model_id=model_id,
        latency_ms=round((time.perf_counter() - started) * 1000, 2) if started is not None else None,
    )
