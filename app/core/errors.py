"""Client-facing errors: a stable machine-readable ``code`` plus a human message.

Every error body has the same shape, ``{"code": ..., "message": ..., "details": ...}``, so a
door controller can branch on ``code`` without parsing prose.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers

    def body(self) -> dict[str, Any]:
        return ErrorBody(code=self.code, message=self.message, details=self.details).model_dump()


def not_found(kind: str, ident: object) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"no {kind} with id {ident}")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entry documenting the error envelope for these statuses."""
    return {s: {"model": ErrorBody} for s in statuses}
