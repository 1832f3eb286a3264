"""Face alignment with MediaPipe Face Mesh: the one function training and serving share.

Face Mesh finds 468 landmarks; five of them (the two eye centres, the nose tip and the two
mouth corners) are mapped by a least-squares similarity transform (rotation, uniform scale,
translation) onto the standard 112x112 five-point template that most face recognisers,
our distillation teacher among them, were trained on. The student embedder is trained on
exactly these crops, so the teacher and the student see the same pixels, and so does the
service.

The convex hull of the landmarks is kept as a mask in crop coordinates: quality checks
measure sharpness and brightness on the face alone, not on the background.

Any change to this geometry changes the learned distances: bump ``ALIGNMENT_VERSION`` and
retrain, because a model only transfers to crops made the way its training crops were.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.machinery import ModuleSpec
from types import ModuleType

import cv2
import numpy as np

ALIGNMENT_VERSION = "facemesh-5pt-v1"
DEFAULT_CROP_SIZE = 112

# The five-point template for a 112x112 crop (InsightFace / ArcFace): image-left eye,
# image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
NOSE_TIP = 1
# Mouth corners; MediaPipe numbers them from the subject's point of view.
MOUTH_IMAGE_LEFT, MOUTH_IMAGE_RIGHT = 61, 291


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """Answers ``import tensorflow...`` as an absent package does."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name.split(".", 1)[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r} (not loaded for Face Mesh)", name=name)
        return None


_mediapipe_lock = threading.Lock()


def mediapipe_solutions() -> ModuleType:
    """``mediapipe.python.solutions``, imported without TensorFlow.

    Importing any part of MediaPipe runs ``mediapipe.tasks``, whose optional import of
    TensorFlow (for API-doc decorators it falls back from) loads ~650 MB into a server that
    never trains whenever TensorFlow is installed beside it (one venv for training and serving).
    Face Mesh needs none of it, so ``import tensorflow`` is answered as absent while MediaPipe
    is imported. A process that already loaded TensorFlow (training) keeps it.
    """
    with _mediapipe_lock:
        if "mediapipe.python.solutions" not in sys.modules:
            hide = _NoTensorFlow()
            sys.meta_path.insert(0, hide)
            try:
                importlib.import_module("mediapipe.python.solutions.face_mesh")
            finally:
                sys.meta_path.remove(hide)
        return importlib.import_module("mediapipe.python.solutions")


@lru_cache(maxsize=1)
def _eye_indices() -> tuple[np.ndarray, np.ndarray]:
    """(subject's left eye, subject's right eye) contour indices: image-right, image-left."""
    fmc = mediapipe_solutions().face_mesh_connections

    def indices(connections: frozenset[tuple[int, int]]) -> np.ndarray:
        return np.array(sorted({i for pair in connections for i in pair}), dtype=np.int64)

    return indices(fmc.FACEMESH_LEFT_EYE), indices(fmc.FACEMESH_RIGHT_EYE)


@dataclass(frozen=True)
class AlignedFace:
    """One face found in an image, aligned to the training template."""

    crop: np.ndarray  # (size, size, 3) uint8 RGB
    mask: np.ndarray  # (size, size) uint8, 255 inside the landmark hull
    face_width_px: float  # landmark box width in the source image, after levelling
    eye_distance_px: float  # distance between the eye centres in the source image
    roll_degrees: float  # rotation applied to level the eyes


@dataclass(frozen=True)
class AlignmentResult:
    faces_found: int
    face: AlignedFace | None  # the one face used; None when there is none or no face dominates
    box: tuple[float, float, float, float] | None = None  # the used face's landmark box (x0, y0, x1, y1), source pixels


DOMINANT_FACE_RATIO = 2.0


def face_area(landmarks: np.ndarray) -> float:
    return float(np.ptp(landmarks[:, 0]) * np.ptp(landmarks[:, 1]))


def dominant_face(faces: list[np.ndarray], ratio: float) -> np.ndarray | None:
    """The face whose landmark box is at least ``ratio`` times the area of every other, or None.

    A door camera sees people behind the one at the door: they are smaller. Two faces of
    comparable size are two people at the door, and the frame is refused rather than guessed.
    """
    if not faces:
        return None
    ranked = sorted(faces, key=face_area, reverse=True)
    if len(ranked) == 1 or face_area(ranked[0]) >= ratio * face_area(ranked[1]):
        return ranked[0]
    return None


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) template points from (468, 2) Face Mesh landmarks, in the template's order."""
    subject_left, subject_right = _eye_indices()
    return np.stack(
        [
            landmarks[subject_right].mean(axis=0),  # image-left eye
            landmarks[subject_left].mean(axis=0),  # image-right eye
            landmarks[NOSE_TIP],
            landmarks[MOUTH_IMAGE_LEFT],
            landmarks[MOUTH_IMAGE_RIGHT],
        ]
    )


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity transform taking ``src`` points onto ``dst`` (Umeyama, 1991),
    without reflection."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(covariance)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    variance = (src_c**2).sum() / len(src)
    scale = float((s * d).sum() / variance) if variance > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def template_for(size: int) -> np.ndarray:
    return TEMPLATE_112 * (size / 112.0)


def warp_to_template(image_rgb: np.ndarray, points: np.ndarray, size: int = DEFAULT_CROP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(crop, 2x3 matrix): the image warped so that its five ``points`` land on the template.

    The one warp of the project: :func:`align_landmarks` uses it with Face Mesh's points, and
    dataset preparation with a dataset's typical points for the few photos Face Mesh misses.
    """
    matrix = similarity_transform(points, template_for(size))
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    crop = cv2.warpAffine(
        image_rgb,
        matrix,
        (size, size),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return crop, matrix


def align_landmarks(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = DEFAULT_CROP_SIZE) -> AlignedFace:
    """Warp one face onto the five-point template given its (468, 2) landmarks in source pixels."""
    points = five_points(landmarks)
    crop, matrix = warp_to_template(image_rgb, points, size)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    roll = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
    projected = landmarks @ matrix[:, :2].T + matrix[:, 2]
    hull = cv2.convexHull(np.round(projected).astype(np.int32))
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, (255,))
    width = float(np.ptp(projected[:, 0])) / max(scale, 1e-9)
    eye_distance = float(np.hypot(*(points[1] - points[0])))
    return AlignedFace(crop=crop, mask=mask, face_width_px=width, eye_distance_px=eye_distance, roll_degrees=-roll)


class FaceAligner:
    """Face Mesh in static-image mode, asking for several faces so the one at the door can be told
    from people behind it (``dominance``: the area ratio by which it must be the largest).

    A MediaPipe graph is not safe to call from two threads at once; each aligner holds a
    lock, and the service keeps a small pool of them.
    """

    def __init__(
        self,
        size: int = DEFAULT_CROP_SIZE,
        max_faces: int = 3,
        min_detection_confidence: float = 0.5,
        detect_min_side: int = 256,
        dominance: float = DOMINANT_FACE_RATIO,
    ):
        face_mesh = mediapipe_solutions().face_mesh

        if dominance < 1.0:
            raise ValueError(f"dominance is an area ratio >= 1, got {dominance}")
        self.size = size
        self.dominance = dominance
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
        """Align the face at the door: the only face, or one clearly larger than any other.

        With comparable faces the service takes none (``face`` is None); dataset preparation
        passes ``pick_largest`` because a photo of one labelled person is about that person.
        """
        faces = self.landmarks(image_rgb)
        chosen = max(faces, key=face_area) if faces and pick_largest else dominant_face(faces, self.dominance)
        if chosen is None:
            return AlignmentResult(faces_found=len(faces), face=None)
        box = (float(chosen[:, 0].min()), float(chosen[:, 1].min()), float(chosen[:, 0].max()), float(chosen[:, 1].max()))
        return AlignmentResult(faces_found=len(faces), face=align_landmarks(image_rgb, chosen, self.size), box=box)
