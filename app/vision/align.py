"""Face alignment with MediaPipe Face Mesh: the one function training and serving share.

The method's alignment (see ``../shared/reference/method.md``): find the 468 Face Mesh
landmarks, rotate so the two eye centres are level, keep only the convex hull of the
landmarks, crop tightly to them, pad to a square and resize to 160x160.

Rotation, crop, padding and resize are folded into a single affine warp straight to the
output size, so a 640x480 frame costs one Face Mesh call and one small ``warpAffine``.
Any change to this geometry changes the learned distances: bump ``ALIGNMENT_VERSION`` and
retrain, because a model only transfers to crops made the way its training crops were.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

ALIGNMENT_VERSION = "facemesh-hull-v1"
DEFAULT_CROP_SIZE = 160


@lru_cache(maxsize=1)
def _eye_indices() -> tuple[np.ndarray, np.ndarray]:
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def indices(connections: frozenset[tuple[int, int]]) -> np.ndarray:
        return np.array(sorted({i for pair in connections for i in pair}), dtype=np.int64)

    # MediaPipe names eyes from the subject's point of view: "left" is on the image's right.
    return indices(fmc.FACEMESH_LEFT_EYE), indices(fmc.FACEMESH_RIGHT_EYE)


@dataclass(frozen=True)
class AlignedFace:
    """One face found in an image, aligned to the training template."""

    crop: np.ndarray  # (size, size, 3) uint8 RGB, black outside the landmark hull
    mask: np.ndarray  # (size, size) uint8, 255 inside the landmark hull
    face_width_px: float  # landmark box width in the source image, after levelling
    eye_distance_px: float  # distance between the eye centres in the source image
    roll_degrees: float  # rotation applied to level the eyes


@dataclass(frozen=True)
class AlignmentResult:
    faces_found: int
    face: AlignedFace | None  # set only when exactly one face was found


def _affine_to_crop(landmarks: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """Affine matrix mapping source pixels to the square output crop.

    Returns (matrix, roll in degrees, face width in px, eye distance in px).
    """
    left_idx, right_idx = _eye_indices()
    left_eye = landmarks[left_idx].mean(axis=0)
    right_eye = landmarks[right_idx].mean(axis=0)
    # Image-left eye (subject's right) to image-right eye (subject's left).
    dx, dy = left_eye - right_eye
    angle = float(np.degrees(np.arctan2(dy, dx)))
    eye_distance = float(np.hypot(dx, dy))
    centre = (right_eye + left_eye) / 2.0
    rotation = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
    levelled = landmarks @ rotation[:, :2].T + rotation[:, 2]
    x0, y0 = levelled.min(axis=0)
    x1, y1 = levelled.max(axis=0)
    width, height = x1 - x0, y1 - y0
    side = max(width, height, 1.0)
    # Pad the short side so the tight landmark box sits centred in a square.
    sx0 = x0 - (side - width) / 2.0
    sy0 = y0 - (side - height) / 2.0
    scale = size / side
    to_crop = np.array([[scale, 0.0, -sx0 * scale], [0.0, scale, -sy0 * scale], [0, 0, 1.0]])
    full = to_crop @ np.vstack([rotation, [0.0, 0.0, 1.0]])
    return full[:2], angle, float(width), eye_distance


def align_landmarks(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = DEFAULT_CROP_SIZE) -> AlignedFace:
    """Warp one face to the template given its (468, 2) landmarks in source pixels."""
    matrix, angle, width, eye_distance = _affine_to_crop(landmarks, size)
    crop = cv2.warpAffine(
        image_rgb,
        matrix,
        (size, size),
        flags=cv2.INTER_AREA if matrix[0, 0] < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    projected = landmarks @ matrix[:, :2].T + matrix[:, 2]
    hull = cv2.convexHull(np.round(projected).astype(np.int32))
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, (255,))
    crop = cv2.bitwise_and(crop, crop, mask=mask)
    return AlignedFace(crop=crop, mask=mask, face_width_px=width, eye_distance_px=eye_distance, roll_degrees=angle)


class FaceAligner:
    """Face Mesh in static-image mode, asking for up to two faces so crowds can be refused.

    A MediaPipe graph is not safe to call from two threads at once; each aligner holds a
    lock, and the service keeps a small pool of them.
    """

    def __init__(
        self,
        size: int = DEFAULT_CROP_SIZE,
        max_faces: int = 2,
        min_detection_confidence: float = 0.5,
        detect_min_side: int = 256,
    ):
        from mediapipe.python.solutions import face_mesh

        self.size = size
        # Face Mesh's detector misses faces in thumbnails (a 45 px face in an 89x109 photo);
        # small images are upscaled for detection only, the crop is cut from the original.
        self.detect_min_side = detect_min_side
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=max_faces,
            refine_landmarks=False,
            min_detection_confidence=min_detection_confidence,
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceAligner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def landmarks(self, image_rgb: np.ndarray) -> list[np.ndarray]:
        """All faces' landmarks as (468, 2) float arrays in source pixel coordinates."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}")
        h, w = image_rgb.shape[:2]
        detect_on = image_rgb
        if min(h, w) < self.detect_min_side:
            factor = self.detect_min_side / min(h, w)
            detect_on = cv2.resize(image_rgb, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_CUBIC)
        with self._lock:
            result = self._mesh.process(np.ascontiguousarray(detect_on))
        faces = result.multi_face_landmarks or []
        out = []
        for face in faces:
            points = np.array([(p.x * w, p.y * h) for p in face.landmark[:468]], dtype=np.float64)
            out.append(points)
        return out

    def align(self, image_rgb: np.ndarray, pick_largest: bool = False) -> AlignmentResult:
        """Align the one face in the image.

        With several faces the service takes none (``face`` is None); dataset preparation
        passes ``pick_largest`` because a photo of one labelled person may show a bystander.
        """
        faces = self.landmarks(image_rgb)
        if not faces or (len(faces) > 1 and not pick_largest):
            return AlignmentResult(faces_found=len(faces), face=None)
        chosen = max(faces, key=lambda f: float(np.ptp(f[:, 0]) * np.ptp(f[:, 1])))
        return AlignmentResult(faces_found=len(faces), face=align_landmarks(image_rgb, chosen, self.size))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grey or RGBA arrays to RGB uint8, so every source looks the same to Face Mesh."""
    if image.ndim == 2:
        return np.stack([image] * 3, axis=-1)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return image
