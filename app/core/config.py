"""All configuration in one pydantic-settings class; every field is an environment variable."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
# The research data and weights beside the checkout (never copied into it): training, tests
# and benchmarks read them from here. FACEGATE_SHARED moves it.
SHARED_DIR = Path(os.environ.get("FACEGATE_SHARED") or REPO_ROOT.parent / "shared")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True)

    # Storage
    DATABASE_URL: str = Field(
        default=f"sqlite:///{REPO_ROOT / 'var' / 'facegate.db'}",
        description="SQLAlchemy URL: a SQLite file, or `postgresql://user@host/db` (read as `postgresql+psycopg://`)",
    )
    DB_POOL_SIZE: int = Field(default=5, ge=1, description="Postgres connections kept per process (as many again may overflow)")
    DB_CONNECT_TIMEOUT_S: int = Field(default=3, ge=1, description="seconds to wait for a Postgres connection before a 503")

    # Model package
    MODEL_STORE: Path = Field(default=REPO_ROOT / "model_store", description="directory of model packages")
    MODEL_ID: str | None = Field(default=None, description="which package in MODEL_STORE; default: the newest one")
    EMBED_THREADS: int = Field(default=2, ge=1, le=64, description="LiteRT threads per embedding call")

    # Face attributes (never part of a door decision)
    EXPRESSION_ENABLED: bool = Field(default=True, description="serve expression (POST /v1/analyze; `attributes=expression` on identify)")
    GENDER_AGE_ENABLED: bool = Field(
        default=False, description="serve gender and age estimates: sensitive, off unless turned on (see the README's per-group errors)"
    )
    EXPRESSION_MODEL_ID: str | None = Field(default=None, description="which expression package in MODEL_STORE; default: the newest")
    GENDER_AGE_MODEL_ID: str | None = Field(default=None, description="which gender and age package in MODEL_STORE; default: the newest")
    AUDIT_ATTRIBUTES: bool = Field(
        default=False, description="record the attributes computed for a request in its audit event; otherwise none are stored"
    )

    # Bursts and uploads
    MAX_FRAMES: int = Field(default=16, ge=1, description="frames per request (413 `too_many_frames` above)")
    MAX_FRAME_BYTES: int = Field(default=8 * 1024 * 1024, ge=1, description="bytes per frame (413 `frame_too_large`)")
    MAX_REQUEST_BYTES: int = Field(default=64 * 1024 * 1024, ge=1, description="bytes per request body (413 `request_too_large`)")
    MAX_IMAGE_PIXELS: int = Field(default=40_000_000, ge=1, description="pixels per frame, read from the header before decoding")
    MAX_ALIGN_SIDE: int = Field(default=1280, ge=64, description="larger frames are downscaled to this side before Face Mesh")
    MIN_ENROL_FRAMES: int = Field(default=5, description="usable frames an enrolment needs")
    MIN_IDENTIFY_FRAMES: int = Field(default=1, ge=1, description="usable frames an identify or verify needs to be decided")

    # Frame quality (on the aligned face)
    MIN_FACE_PX: float = Field(default=50.0, description="smallest face width (landmark box, source pixels)")
    MIN_SHARPNESS: float = Field(default=10.0, description="smallest Laplacian variance inside the face")
    MIN_BRIGHTNESS: float = Field(default=40.0, description="darkest mean face luminance (0..255)")
    MAX_BRIGHTNESS: float = Field(default=225.0, description="brightest mean face luminance (0..255)")
    ALIGNER_POOL: int = Field(
        default=4, ge=1, description="Face Mesh graphs per process: frames of a burst decoded and aligned in parallel"
    )
    DOMINANT_FACE_RATIO: float = Field(
        default=2.0,
        ge=1.0,
        description="with several faces in a frame, the largest is used when its landmark box has at least this many times "
        "the area of any other (people behind the one at the door); comparable faces refuse the frame (`multiple_faces`)",
    )

    # Decisions
    DEFAULT_THRESHOLD: float | None = Field(
        default=None,
        description="one distance for every burst size until an admin sets a threshold; "
        "none: the model's thresholds by frames fused, at its default FAR",
    )
    DELETION_TOKEN_TTL_S: int = Field(default=120, ge=1, description="life of a confirm-by-face deletion token, seconds")
    SCAN_RESCORE_K: int = Field(default=16, ge=1, description="shortlist of the int8 scan rescored exactly")
    SCAN_THREADS: int = Field(default=2, ge=1, le=64, description="threads for the int8 template scan")

    # Access
    AUTH_ENABLED: bool = Field(default=True, description="API keys required (turn off only on a closed test bench)")
    RATE_LIMIT_DOOR: str = Field(default="10/second", description="per key, identify and verify (429 + Retry-After)")
    RATE_LIMIT_ADMIN: str = Field(default="50/second", description="per key, everything else (429 + Retry-After)")

    # Audit and operations
    EVENT_RETENTION_DAYS: int = Field(default=90, ge=1, description="audit events older than this are purged")
    PURGE_INTERVAL_S: int = Field(default=3600, ge=1, description="how often a server purges (also `facegate events purge`)")
    LOG_LEVEL: str = Field(default="INFO", description="Python log level")
    LOG_FORMAT: Literal["json", "text"] = Field(default="json", description="JSON lines carry the request id")

    @field_validator("DATABASE_URL")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        """One spelling per database, decided here: a bare postgres:// or postgresql:// URL
        means the psycopg 3 driver (the one installed)."""
        for bare in ("postgres://", "postgresql://"):
            if value.startswith(bare):
                return "postgresql+psycopg://" + value[len(bare) :]
        if not value.startswith(("sqlite:", "postgresql+psycopg:")):
            raise ValueError("DATABASE_URL must be sqlite:///<file> or postgresql://user@host/db (postgresql+psycopg://)")
        return value

    @field_validator("MODEL_ID")
    @classmethod
    def _model_id(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or "\\" in value or value in (".", "..")):
            raise ValueError("MODEL_ID is the name of a package directory in MODEL_STORE, not a path")
        return value

    @field_validator("RATE_LIMIT_DOOR", "RATE_LIMIT_ADMIN")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate limit such as '10/second' or '600 per minute'") from exc
        return value

    @field_validator("DEFAULT_THRESHOLD")
    @classmethod
    def _threshold_range(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError("DEFAULT_THRESHOLD must be within (0, 1) on the method's distance scale")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.MIN_ENROL_FRAMES < 1 or self.MIN_ENROL_FRAMES > self.MAX_FRAMES:
            raise ValueError("MIN_ENROL_FRAMES must be between 1 and MAX_FRAMES")
        if self.MIN_BRIGHTNESS >= self.MAX_BRIGHTNESS:
            raise ValueError("MIN_BRIGHTNESS must be below MAX_BRIGHTNESS")
        if not self.MODEL_STORE.is_dir():
            raise ValueError(f"MODEL_STORE {self.MODEL_STORE} is not a directory")
        if self.MODEL_ID is not None and not (self.MODEL_STORE / self.MODEL_ID / "manifest.json").is_file():
            packages = sorted(p.name for p in self.MODEL_STORE.iterdir() if (p / "manifest.json").is_file())
            raise ValueError(f"MODEL_ID {self.MODEL_ID!r} is not a package in {self.MODEL_STORE}; there are {packages}")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()


def _shown(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).replace(str(REPO_ROOT), "<repo>")
    return f"`{text}`"


def settings_table() -> str:
    """The README's configuration table, from the fields themselves (``python -m app.core.config``)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{name}` | {_shown(field.default)} | {field.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
