"""Frame quality checks on the aligned face, with stable reason codes.

The method found that dark and blurry faces raise distances a lot: such frames are left out
of the fused vector rather than allowed to drag it away from the person.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

from app.vision.align import AlignedFace


class FrameReason(StrEnum):
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    FACE_TOO_SMALL = "face_too_small"
    TOO_BLURRY = "too_blurry"
    TOO_DARK = "too_dark"
    TOO_BRIGHT = "too_bright"


@dataclass(frozen=True)
class QualityLimits:
    min_face_px: float
    min_sharpness: float
    min_brightness: float
    max_brightness: float


@dataclass(frozen=True)
class FaceQuality:
    face_px: float
    sharpness: float
    brightness: float


def measure(face: AlignedFace) -> FaceQuality:
    grey = cv2.cvtColor(face.crop, cv2.COLOR_RGB2GRAY)
    # Erode the hull so the edge between face and background does not count as detail.
    inner = cv2.erode(face.mask, np.ones((9, 9), np.uint8)) > 0
    if not inner.any():
        inner = face.mask > 0
    laplacian = cv2.Laplacian(grey, cv2.CV_32F)
    return FaceQuality(
        face_px=face.face_width_px,
        sharpness=float(laplacian[inner].var()),
        brightness=float(grey[inner].mean()),
    )


def judge(quality: FaceQuality, limits: QualityLimits) -> FrameReason | None:
    """The first failed check, in order of how a user would fix it, or None."""
    if quality.face_px < limits.min_face_px:
        return FrameReason.FACE_TOO_SMALL
    if quality.brightness < limits.min_brightness:
        return FrameReason.TOO_DARK
    if quality.brightness > limits.max_brightness:
        return FrameReason.TOO_BRIGHT
    if quality.sharpness < limits.min_sharpness:
        return FrameReason.TOO_BLURRY
    return None
