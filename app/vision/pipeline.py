"""decode -> align (Face Mesh) -> quality checks -> embed, for one burst of frames."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
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


def _frame(index: int, data: bytes, aligners: AlignerPool, limits: BurstLimits) -> tuple[FrameReport, np.ndarray | None, float, float]:
    """Decode then align one frame on a worker thread: (report, usable crop, decode s, align s)."""
    t0 = time.perf_counter()
    image = decode_frame(data, index, limits.max_frame_bytes, limits.max_pixels)
    t1 = time.perf_counter()
    report, crop = _align_frame(index, image, aligners, limits)
    return report, crop, t1 - t0, time.perf_counter() - t1


def process_burst(frames: Sequence[bytes], aligners: AlignerPool, embedder: Embedder | None, limits: BurstLimits) -> Burst:
    """Each frame is decoded and aligned in one task, the burst's frames in parallel, so one
    frame's decoding overlaps another's Face Mesh. A frame that cannot be decoded rejects the
    whole burst: the error names the first bad frame, as a sequential decode would, and nothing
    of the burst is embedded.
    Without an ``embedder`` (face analysis) the usable crops are returned unembedded.

    ``timings`` are the burst's wall time per stage: decode and align are the per-frame sums
    scaled by the share of the burst's decode+align wall time they took, so they add up to it.
    """
    timings = {"decode": 0.0, "align": 0.0, "embed": 0.0}
    t0 = time.perf_counter()
    futures = [aligners.workers.submit(_frame, i, data, aligners, limits) for i, data in enumerate(frames)]
    wait(futures)
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    results = [future.result() for future in futures]
    wall = time.perf_counter() - t0
    decode_s, align_s = sum(r[2] for r in results), sum(r[3] for r in results)
    timings["decode"] = wall * decode_s / max(decode_s + align_s, 1e-12)
    timings["align"] = wall - timings["decode"]
    aligned = [(report, crop) for report, crop, _, _ in results]
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
