"""The HTTP face of errors: the one error body, and the status of every domain error.

Every error body has the same shape, ``{"code": ..., "message": ..., "details": ...}``, so a
door controller can branch on ``code`` without parsing prose.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.core.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMedia,
)

STATUS_OF: dict[type[DomainError], int] = {
    InvalidInput: 422,
    TooLarge: 413,
    UnsupportedMedia: 415,
    NotFound: 404,
    Conflict: 409,
    Unauthenticated: 401,
    Forbidden: 403,
    Unavailable: 503,
}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ApiError(Exception):
    """An error with its HTTP status, for what only the HTTP layer knows (415 for a
    non-multipart body, 429, a refused path parameter) and for mapped domain errors."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers

    def body(self) -> dict[str, Any]:
        return ErrorBody(code=self.code, message=self.message, details=self.details).model_dump()

    @classmethod
    def from_domain(cls, exc: DomainError) -> ApiError:
        status = next(s for kind, s in STATUS_OF.items() if isinstance(exc, kind))
        headers = {"WWW-Authenticate": "APIKey"} if status == 401 else None
        return cls(status, exc.code, exc.message, exc.details, headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entry documenting the error envelope for these statuses."""
    return {s: {"model": ErrorBody} for s in statuses}
