"""Key checks: which key is calling, and may it do this."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from sqlalchemy.orm import Session

from app.core.errors import Forbidden, Unauthenticated
from app.core.validation import control_character
from app.services.audit import GRANTS, Actor
from app.store import crud

# A key's last use is written at most this often: a write per identify would cost more than the scan.
TOUCH_EVERY_S = 60


class KeyRefused(Unauthenticated):
    """A key that was read but refused; ``key_name`` names it for the audit (never the key)."""

    def __init__(self, code: str, message: str, key_name: str | None):
        super().__init__(code, message)
        self.key_name = key_name


class ScopeRefused(Forbidden):
    """A valid key without the scope needed; ``key_name`` names it for the audit."""

    def __init__(self, code: str, message: str, key_name: str):
        super().__init__(code, message)
        self.key_name = key_name


def authenticate(session: Session, key: str | None, *, needed: Literal["door", "analysis", "admin"]) -> Actor:
    """The key's actor, or :class:`KeyRefused` (401) / :class:`ScopeRefused` (403). Commits its touch."""
    if not key:
        raise KeyRefused("missing_api_key", "send an API key in the X-API-Key header", None)
    # A key with control characters is no key of ours: never sent to the database.
    row = crud.find_api_key(session, key=key) if control_character(key) is None else None
    if row is None:
        raise KeyRefused("invalid_api_key", "this API key is not known", None)
    now = datetime.now(UTC)
    if row.revoked_at is not None:
        raise KeyRefused("revoked_api_key", "this API key has been revoked", row.name)
    expires = crud.as_aware(row.expires_at)
    if expires is not None and expires <= now:
        raise KeyRefused("expired_api_key", "this API key has expired", row.name)
    last = crud.as_aware(row.last_used_at)
    if last is None or (now - last).total_seconds() > TOUCH_EVERY_S:
        row.last_used_at = now
        session.commit()
    if row.scope not in GRANTS:
        raise ScopeRefused("insufficient_scope", f"{row.name!r} has an unknown scope {row.scope!r}", row.name)
    actor = Actor(name=row.name, scope=row.scope, key_id=row.id)  # type: ignore[arg-type]
    if not actor.may(needed):
        raise ScopeRefused(
            "insufficient_scope", f"this endpoint needs a key with the {needed} scope; {row.name!r} is a {row.scope} key", row.name
        )
    return actor
