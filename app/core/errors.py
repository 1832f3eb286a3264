"""Domain errors: what went wrong, with a stable machine-readable ``code``, and no HTTP.

Vision, matching, the store's callers and the flows raise these; ``app.api.errors`` maps each
class to one status code, so a rule such as "an undecodable frame is a 422" lives in one place.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal a client can act on: ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class InvalidInput(DomainError):
    """The request is understood but its content cannot be used (a corrupt frame, too few usable frames)."""


class TooLarge(DomainError):
    """Over a size limit (bytes, pixels, frames)."""


class UnsupportedMedia(DomainError):
    """Not an image format the service takes."""


class NotFound(DomainError):
    @classmethod
    def of(cls, kind: str, ident: object) -> NotFound:
        return cls(f"{kind}_not_found", f"no {kind} with id {ident}")


class Conflict(DomainError):
    """Refused because of what is already stored (an enrolled face, a face that does not match)."""


class Unauthenticated(DomainError):
    """No key, or a key that is unknown, revoked or expired."""


class Forbidden(DomainError):
    """A valid key without the scope the operation needs."""


class Unavailable(DomainError):
    """A part of the service that is not running here (an attribute model that is not installed)."""
