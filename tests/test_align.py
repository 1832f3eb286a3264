"""The shared aligner: eyes levelled, hull masked, tight square crop of the requested size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from app.vision.align import FaceAligner, _affine_to_crop, _eye_indices, align_landmarks

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def synthetic_landmarks(angle_degrees: float, seed: int = 0) -> np.ndarray:
    """468 points in a face-sized ellipse, with the eye landmarks clustered at two eye centres,
    the whole face rolled by ``angle_degrees`` around (200, 150)."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * np.pi, 468)
    radius = np.sqrt(rng.uniform(0, 1, 468))
    points = np.stack([200 + 60 * radius * np.cos(theta), 150 + 80 * radius * np.sin(theta)], axis=1)
    left, right = _eye_indices()
    points[left] = np.array([230, 130]) + rng.normal(0, 2, (len(left), 2))  # subject's left eye: image right
    points[right] = np.array([170, 130]) + rng.normal(0, 2, (len(right), 2))
    a = np.radians(angle_degrees)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - [200, 150]) @ rotation.T + [200, 150]


@pytest.mark.parametrize("angle", [-25.0, 0.0, 12.0, 40.0])
def test_eyes_are_levelled_and_the_face_fills_the_square(angle: float) -> None:
    landmarks = synthetic_landmarks(angle)
    matrix, roll, _, eye_distance = _affine_to_crop(landmarks, 160)
    projected = landmarks @ matrix[:, :2].T + matrix[:, 2]
    left, right = _eye_indices()
    left_eye, right_eye = projected[left].mean(axis=0), projected[right].mean(axis=0)
    assert abs(left_eye[1] - right_eye[1]) < 1e-6  # level
    assert left_eye[0] > right_eye[0]  # not flipped
    assert roll == pytest.approx(angle, abs=1.0)
    assert eye_distance == pytest.approx(60, rel=0.1)
    # Tight: the landmark box touches two opposite sides of the square, within it.
    assert projected.min() >= -1e-6 and projected.max() <= 160 + 1e-6
    spans = projected.max(axis=0) - projected.min(axis=0)
    assert max(spans) == pytest.approx(160, abs=1e-6)


def test_outside_the_hull_is_black() -> None:
    image = np.full((300, 400, 3), 200, dtype=np.uint8)
    face = align_landmarks(image, synthetic_landmarks(10.0), 160)
    assert face.crop.shape == (160, 160, 3) and face.crop.dtype == np.uint8
    outside = face.mask == 0
    assert outside.any() and (face.mask == 255).any()
    assert not face.crop[outside].any()
    assert (face.crop[face.mask == 255] == 200).all()


def test_no_face_in_a_blank_image() -> None:
    with FaceAligner() as aligner:
        result = aligner.align(np.full((240, 320, 3), 127, dtype=np.uint8))
    assert result.faces_found == 0 and result.face is None


def test_a_real_face_is_aligned() -> None:
    folder = FACES / "celeba_wild"
    if not folder.is_dir():
        pytest.skip(f"real face photos not found at {folder} (../shared is absent)")
    photo = next(iter(sorted(next(iter(sorted(folder.iterdir()))).glob("*.jpg"))))
    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    with FaceAligner() as aligner:
        result = aligner.align(image)
    assert result.faces_found == 1 and result.face is not None
    assert result.face.crop.shape == (160, 160, 3)
    assert result.face.face_width_px > 20
    assert 0.2 < (result.face.mask > 0).mean() < 0.95
