"""What a process loads once: the model, the aligners, the database engine, the template index.

A container with no behaviour: the flows in ``app.services`` use what it holds.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.matching.index import TemplateIndex
from app.matching.threshold import ThresholdTable, ThresholdTableError
from app.services.journal import Journal
from app.store.db import make_engine, make_session_factory
from app.vision.attributes import AttributeModels
from app.vision.embedder import Embedder, ModelPackage, ModelPackageError, find_package
from app.vision.pipeline import AlignerPool, BurstLimits
from app.vision.quality import QualityLimits


def threshold_table(package: ModelPackage, settings: Settings) -> ThresholdTable | None:
    """The package's thresholds by frames fused; a package without them starts only when a
    distance is configured (DEFAULT_THRESHOLD): there is no hidden fallback."""
    try:
        return ThresholdTable.from_manifest(package.burst_table)
    except ThresholdTableError as exc:
        if settings.DEFAULT_THRESHOLD is not None:
            return None
        raise ModelPackageError(
            f"model {package.model_id}: {exc}. Export it with a burst evaluation (python -m training.bursts, then "
            "training.export --eval) or set DEFAULT_THRESHOLD"
        ) from exc


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.package = ModelPackage.open(find_package(settings.MODEL_STORE, settings.MODEL_ID))
        self.thresholds = threshold_table(self.package, settings)
        self.embedder = Embedder(self.package, num_threads=settings.EMBED_THREADS)
        # Attribute models are optional: one that is missing or broken is reported unavailable, never a start-up error.
        self.attributes = AttributeModels.load(
            settings.MODEL_STORE,
            enabled={"expression": settings.EXPRESSION_ENABLED, "gender_age": settings.GENDER_AGE_ENABLED},
            model_ids={"expression": settings.EXPRESSION_MODEL_ID, "gender_age": settings.GENDER_AGE_MODEL_ID},
            num_threads=settings.EMBED_THREADS,
        )
        self.aligners = AlignerPool(settings.ALIGNER_POOL, self.package.input_size, settings.DOMINANT_FACE_RATIO)
        self.engine: Engine = make_engine(settings)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        # Door decisions' audit events and match counts, written off the response path; it
        # opens sessions through ``self.sessions`` as it is at write time.
        self.journal = Journal(lambda: self.sessions())
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

    def close(self) -> None:
        self.journal.close()
        self.aligners.close()
        self.engine.dispose()
