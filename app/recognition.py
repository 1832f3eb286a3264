"""The recognition runtime and its flows: identify, verify, enrol, add frames, delete by face.

Routes stay thin: they parse the request, call one of these functions and shape the answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.errors import ApiError, not_found
from app.core.metrics import STAGE_SECONDS
from app.store import crud
from app.store.db import make_engine, make_session_factory
from app.store.index import TemplateIndex
from app.store.models import Person
from app.vision.embedder import Embedder, ModelPackage, ModelPackageError, find_package
from app.vision.fusion import distance, fuse
from app.vision.pipeline import AlignerPool, Burst, BurstLimits, process_burst
from app.vision.quality import QualityLimits

log = logging.getLogger("facegate.recognition")


@dataclass(frozen=True)
class Match:
    person_id: int
    distance: float


@dataclass
class Decision:
    granted: bool
    reason: str
    threshold: float
    best: Match | None
    second: Match | None
    burst: Burst
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def margin(self) -> float | None:
        if self.best is None or self.second is None:
            return None
        return self.second.distance - self.best.distance


class Runtime:
    """Everything loaded once per process: model, aligners, database, template index."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.package = ModelPackage.open(find_package(settings.MODEL_STORE, settings.MODEL_ID))
        if (
            settings.DEFAULT_THRESHOLD is None
            and self.package.threshold_for_frames(1) is None
            and self.package.recommended_threshold is None
        ):
            raise ModelPackageError(
                f"model {self.package.model_id} carries no burst threshold: export it with a burst evaluation "
                "(python -m training.bursts, then training.export --eval) or set DEFAULT_THRESHOLD"
            )
        self.embedder = Embedder(self.package, num_threads=settings.EMBED_THREADS)
        self.aligners = AlignerPool(settings.ALIGNER_POOL, self.package.input_size, settings.DOMINANT_FACE_RATIO)
        self.engine: Engine = make_engine(settings)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        self.index = TemplateIndex(self.package.model_id, self.package.embedding_size, threads=settings.SCAN_THREADS)
        self.limits = BurstLimits(
            max_frame_bytes=settings.MAX_FRAME_BYTES,
            max_pixels=settings.MAX_IMAGE_PIXELS,
            max_align_side=settings.MAX_ALIGN_SIDE,
            quality=QualityLimits(settings.MIN_FACE_PX, settings.MIN_SHARPNESS, settings.MIN_BRIGHTNESS, settings.MAX_BRIGHTNESS),
        )

    @property
    def model_id(self) -> str:
        return self.package.model_id

    def default_threshold(self, frames: int | None = None) -> float:
        """The model's threshold for a query of ``frames`` fused frames (default: a template's worth).

        Fused distances shrink as frames are added, strangers' too, so the package measures one
        threshold per burst size at its target FAR; ``DEFAULT_THRESHOLD`` overrides them all.
        """
        if self.settings.DEFAULT_THRESHOLD is not None:
            return self.settings.DEFAULT_THRESHOLD
        by_frames = self.package.threshold_for_frames(self.package.template_frames if frames is None else frames)
        if by_frames is not None:
            return by_frames
        recommended = self.package.recommended_threshold
        assert recommended is not None  # checked at start-up
        return recommended

    def threshold(self, session: Session, frames: int | None = None) -> float:
        """The threshold in force for a burst of ``frames`` usable frames: an admin's stored
        distance (the same for every burst size), else the model's row for that size."""
        stored = crud.stored_threshold(session)
        return float(stored) if stored is not None else self.default_threshold(frames)

    def close(self) -> None:
        self.aligners.close()
        self.engine.dispose()

    # -- the data path -----------------------------------------------------------------------
    def embed_burst(self, frames: Sequence[bytes]) -> Burst:
        """Frames as read by ``app.api.common.read_frames``, which bounds their count and size."""
        burst = process_burst(frames, self.aligners, self.embedder, self.limits)
        for stage, seconds in burst.timings.items():
            STAGE_SECONDS.labels(stage=stage).observe(seconds)
        return burst

    def nearest(self, session: Session, query: np.ndarray) -> tuple[Match | None, Match | None, float]:
        """Sync the index, scan every template, rescore the shortlist exactly.

        Returns (best, second best, seconds spent scanning).
        """
        self.index.sync(session)
        t0 = time.perf_counter()
        candidates = self.index.scan(query, self.settings.SCAN_RESCORE_K)
        exact = crud.template_vectors(session, [c.template_id for c in candidates])
        scored = sorted(
            (Match(person_id, float(distance(query, vector))) for person_id, vector in exact.values()),
            key=lambda m: m.distance,
        )
        elapsed = time.perf_counter() - t0
        STAGE_SECONDS.labels(stage="scan").observe(elapsed)
        best = scored[0] if scored else None
        second = scored[1] if len(scored) > 1 else None
        return best, second, elapsed


def _decide(runtime: Runtime, session: Session, burst: Burst, min_frames: int) -> Decision:
    threshold = runtime.threshold(session, burst.used)
    if burst.used < min_frames:
        return Decision(False, "no_usable_frames", threshold, None, None, burst)
    query = fuse(burst.embeddings)
    best, second, scan_s = runtime.nearest(session, query)
    burst.timings["scan"] = scan_s
    if best is None:
        return Decision(False, "no_templates", threshold, None, None, burst)
    # An unknown face is denied, not matched to whoever happens to be nearest.
    if best.distance > threshold:
        return Decision(False, "no_match", threshold, best, second, burst)
    return Decision(True, "match", threshold, best, second, burst)


def identify(runtime: Runtime, session: Session, frames: Sequence[bytes]) -> Decision:
    burst = runtime.embed_burst(frames)
    decision = _decide(runtime, session, burst, runtime.settings.MIN_IDENTIFY_FRAMES)
    if decision.granted and decision.best is not None and not crud.record_match(session, decision.best.person_id):
        # Deleted between the scan and now: a person who no longer exists is never granted.
        return Decision(False, "no_match", decision.threshold, None, None, burst, decision.timings)
    return decision


def verify(runtime: Runtime, session: Session, person_id: int, frames: Sequence[bytes]) -> tuple[Decision, float | None]:
    """1:1: is this burst the given person? Returns the decision and the distance to them."""
    person = session.get(Person, person_id)
    if person is None:
        raise not_found("person", person_id)
    template = crud.person_template(session, person_id, runtime.model_id)
    if template is None:
        raise ApiError(409, "no_template_for_model", f"person {person_id} has no template for model {runtime.model_id}: re-enrol")
    burst = runtime.embed_burst(frames)
    threshold = runtime.threshold(session, burst.used)
    if burst.used < runtime.settings.MIN_IDENTIFY_FRAMES:
        return Decision(False, "no_usable_frames", threshold, None, None, burst), None
    d = float(distance(fuse(burst.embeddings), template))
    granted = d <= threshold
    return Decision(granted, "match" if granted else "no_match", threshold, Match(person_id, d), None, burst), d


def _require_frames(runtime: Runtime, burst: Burst, minimum: int) -> None:
    if burst.used < minimum:
        raise ApiError(
            422,
            "not_enough_usable_frames",
            f"{burst.used} usable frames; at least {minimum} are needed",
            {"usable": burst.used, "required": minimum, "rejected": burst.rejected(), "frames": frame_details(burst)},
        )


def frame_details(burst: Burst) -> list[dict[str, Any]]:
    return [{"index": r.index, "used": r.used, "reason": r.reason, "faces": r.faces} for r in burst.reports]


def enrol(runtime: Runtime, session: Session, name: str, metadata: dict[str, Any], frames: Sequence[bytes]) -> tuple[Person, Burst]:
    burst = runtime.embed_burst(frames)
    _require_frames(runtime, burst, runtime.settings.MIN_ENROL_FRAMES)
    threshold = runtime.threshold(session, burst.used)
    best, _, _ = runtime.nearest(session, fuse(burst.embeddings))
    if best is not None and best.distance <= threshold:
        raise ApiError(
            409,
            "already_enrolled",
            f"this face already matches person {best.person_id}",
            {"person_id": best.person_id, "distance": round(best.distance, 6), "threshold": threshold},
        )
    from app.vision.pipeline import crop_to_jpeg

    sample = crop_to_jpeg(burst.sample_crop) if burst.sample_crop is not None else None
    person = crud.create_person(session, name, metadata, sample, runtime.model_id, burst.embeddings)
    return person, burst


def add_frames(runtime: Runtime, session: Session, person_id: int, frames: Sequence[bytes]) -> tuple[Person, Burst, int]:
    """Add frames to a person; refused when the new burst is not that person's face."""
    person = session.get(Person, person_id)
    if person is None:
        raise not_found("person", person_id)
    burst = runtime.embed_burst(frames)
    _require_frames(runtime, burst, 1)
    template = crud.person_template(session, person_id, runtime.model_id)
    if template is not None:
        d = float(distance(fuse(burst.embeddings), template))
        threshold = runtime.threshold(session, burst.used)
        if d > threshold:
            raise ApiError(
                409,
                "face_mismatch",
                f"these frames do not match person {person_id} (distance {d:.3f} > {threshold:.3f})",
                {"person_id": person_id, "distance": round(d, 6), "threshold": threshold},
            )
    updated = crud.add_frames(session, person, runtime.model_id, burst.embeddings)
    return person, burst, updated.frame_count
