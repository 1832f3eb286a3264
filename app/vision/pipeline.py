"""decode -> align (Face Mesh) -> quality checks -> embed, for one burst of frames."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np

from app.vision.align import DOMINANT_FACE_RATIO, FaceAligner
from app.vision.decode import decode_frame
from app.vision.embedder import Embedder
from app.vision.quality import FaceQuality, FrameReason, QualityLimits, judge, measure


@dataclass(frozen=True)
class FrameReport:
    index: int
    used: bool
    reason: str | None
    quality: FaceQuality | None
    faces: int = 0  # faces Face Mesh found in the frame
    face_box: tuple[float, float, float, float] | None = None  # the face used (or judged), source pixels


@dataclass
class Burst:
    """What a burst yielded: the usable frames' embeddings and a report for every frame."""

    reports: list[FrameReport]
    embeddings: np.ndarray  # (used, d); (0, 0) when the burst was not embedded
    sample_crop: np.ndarray | None  # the sharpest usable aligned crop
    timings: dict[str, float] = field(default_factory=dict)
    crops: np.ndarray | None = None  # (used, size, size, 3): the usable frames' aligned crops, in frame order

    @property
    def used_indices(self) -> list[int]:
        return [r.index for r in self.reports if r.used]

    @property
    def used(self) -> int:
        return sum(1 for r in self.reports if r.used)

    def rejected(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.reports:
            if not r.used and r.reason:
                counts[r.reason] = counts.get(r.reason, 0) + 1
        return counts


class AlignerPool:
    """Face Mesh graphs are single-threaded: lend one per thread.

    The frames of one burst are decoded and aligned in parallel on ``size`` worker threads
    (JPEG decoding and Face Mesh both release the GIL), so a 5-frame burst costs about
    ``5 / size`` frames of wall time instead of 5.
    """

    def __init__(self, size: int, crop_size: int, dominance: float = DOMINANT_FACE_RATIO):
        self.size = max(1, size)
        self._pool: queue.Queue[FaceAligner] = queue.Queue()
        for _ in range(self.size):
            self._pool.put(FaceAligner(size=crop_size, dominance=dominance))
        self.workers = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="frames")

    @contextmanager
    def lease(self) -> Iterator[FaceAligner]:
        aligner = self._pool.get()
        try:
            yield aligner
        finally:
            self._pool.put(aligner)

    def close(self) -> None:
        self.workers.shutdown(wait=True)
        while not self._pool.empty():
            self._pool.get_nowait().close()


@dataclass(frozen=True)
class BurstLimits:
    max_frame_bytes: int
    max_pixels: int
    max_align_side: int
    quality: QualityLimits


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def _align_frame(index: int, image: np.ndarray, aligners: AlignerPool, limits: BurstLimits) -> tuple[FrameReport, np.ndarray | None]:
    with aligners.lease() as aligner:
        result = aligner.align(_shrink(image, limits.max_align_side))
    if result.faces_found == 0:
        return FrameReport(index, False, FrameReason.NO_FACE.value, None), None
    if result.face is None:
        return FrameReport(index, False, FrameReason.MULTIPLE_FACES.value, None, faces=result.faces_found), None
    quality = measure(result.face)
    reason = judge(quality, limits.quality)
    report = FrameReport(index, reason is None, reason.value if reason else None, quality, result.faces_found, result.box)
    return report, result.face.crop if reason is None else None


def process_burst(frames: Sequence[bytes], aligners: AlignerPool, embedder: Embedder | None, limits: BurstLimits) -> Burst:
    """Every frame is decoded first, so one undecodable frame rejects the burst before any work.

    With several bad frames the error names the first one, as a sequential decode would.
    Without an ``embedder`` (face analysis) the usable crops are returned unembedded.
    """
    timings = {"decode": 0.0, "align": 0.0, "embed": 0.0}
    pool = aligners.workers
    t0 = time.perf_counter()
    images = list(pool.map(lambda i: decode_frame(frames[i], i, limits.max_frame_bytes, limits.max_pixels), range(len(frames))))
    timings["decode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    aligned = list(pool.map(lambda i: _align_frame(i, images[i], aligners, limits), range(len(images))))
    timings["align"] = time.perf_counter() - t0
    reports = [report for report, _ in aligned]
    used = [(report, crop) for report, crop in aligned if crop is not None]
    crops = [crop for _, crop in used]

    stacked = np.stack(crops) if crops else None
    if embedder is None:
        embeddings = np.zeros((0, 0), np.float32)
    else:
        t0 = time.perf_counter()
        embeddings = embedder.embed(stacked) if stacked is not None else np.zeros((0, embedder.package.embedding_size), np.float32)
        timings["embed"] = time.perf_counter() - t0
    sample = None
    if used:
        sharpest = max(used, key=lambda pair: pair[0].quality.sharpness if pair[0].quality else 0.0)
        sample = sharpest[1]
    return Burst(reports=reports, embeddings=embeddings, sample_crop=sample, timings=timings, crops=stacked)


def crop_to_jpeg(crop: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding of the sample crop failed")
    return buf.tobytes()
