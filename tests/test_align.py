"""The shared aligner: five Face Mesh points onto the standard 112x112 template, hull kept as a mask."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.config import SHARED_DIR
from app.vision.align import (
    MOUTH_IMAGE_LEFT,
    MOUTH_IMAGE_RIGHT,
    NOSE_TIP,
    TEMPLATE_112,
    FaceAligner,
    _eye_indices,
    align_landmarks,
    dominant_face,
    five_points,
    similarity_transform,
)
from app.vision.decode import read_image_file

FACES = SHARED_DIR / "data" / "faces"


def rotation(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def synthetic_landmarks(roll: float, scale: float = 2.5, offset: tuple[float, float] = (120.0, 60.0), seed: int = 0) -> np.ndarray:
    """468 landmarks of a face whose five points are the template's, rolled by ``roll`` degrees,
    scaled and moved; the other points scatter over the face (they shape only the hull)."""
    rng = np.random.default_rng(seed)
    face = rng.uniform([30, 30], [82, 105], size=(468, 2))
    subject_left, subject_right = _eye_indices()
    face[subject_right] = TEMPLATE_112[0] + rng.normal(0, 1.0, (len(subject_right), 2))
    face[subject_right] += TEMPLATE_112[0] - face[subject_right].mean(axis=0)  # centre exactly on the template eye
    face[subject_left] = TEMPLATE_112[1] + rng.normal(0, 1.0, (len(subject_left), 2))
    face[subject_left] += TEMPLATE_112[1] - face[subject_left].mean(axis=0)
    face[NOSE_TIP], face[MOUTH_IMAGE_LEFT], face[MOUTH_IMAGE_RIGHT] = TEMPLATE_112[2], TEMPLATE_112[3], TEMPLATE_112[4]
    return (face - 56.0) @ (scale * rotation(roll)).T + np.array(offset) + 56.0 * scale


def test_similarity_transform_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    truth = np.hstack([1.7 * rotation(23.0), [[12.0], [-4.0]]])
    dst = src @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-9)
    # Never a reflection, even when the points are mirrored: a mirrored face stays a face.
    mirrored = similarity_transform(src, dst * [-1.0, 1.0])
    assert np.linalg.det(mirrored[:, :2]) > 0


@pytest.mark.parametrize("roll", [-25.0, 0.0, 12.0, 40.0])
def test_five_points_land_on_the_template(roll: float) -> None:
    landmarks = synthetic_landmarks(roll)
    image = np.full((500, 600, 3), 200, dtype=np.uint8)
    face = align_landmarks(image, landmarks, 112)
    assert face.crop.shape == (112, 112, 3) and face.crop.dtype == np.uint8
    matrix = similarity_transform(five_points(landmarks), TEMPLATE_112)
    projected = five_points(landmarks) @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(projected, TEMPLATE_112, atol=1e-6)
    assert face.roll_degrees == pytest.approx(roll, abs=1e-6)
    eyes = TEMPLATE_112[1] - TEMPLATE_112[0]
    assert face.eye_distance_px == pytest.approx(2.5 * np.hypot(*eyes), rel=1e-6)
    # The crop is not masked (the template's own framing); the hull is kept for quality checks.
    assert (face.crop[face.mask == 255] == 200).all()
    assert 0.2 < (face.mask > 0).mean() < 0.9


def test_template_scales_with_the_crop_size() -> None:
    landmarks = synthetic_landmarks(5.0)
    image = np.full((500, 600, 3), 200, dtype=np.uint8)
    assert align_landmarks(image, landmarks, 224).crop.shape == (224, 224, 3)


def test_no_face_in_a_blank_image() -> None:
    with FaceAligner() as aligner:
        result = aligner.align(np.full((240, 320, 3), 127, dtype=np.uint8))
    assert result.faces_found == 0 and result.face is None


def test_a_real_face_is_aligned() -> None:
    folder = FACES / "celeba_wild"
    if not folder.is_dir():
        pytest.skip(f"real face photos not found at {folder} (../shared is absent)")
    photo = next(iter(sorted(next(iter(sorted(folder.iterdir()))).glob("*.jpg"))))
    with FaceAligner() as aligner:
        result = aligner.align(read_image_file(photo))
    assert result.faces_found == 1 and result.face is not None
    assert result.face.crop.shape == (112, 112, 3)
    assert result.face.face_width_px > 20
    assert 0.2 < (result.face.mask > 0).mean() < 0.95


def box_face(x0: float, y0: float, side: float) -> np.ndarray:
    """468 landmarks spread over a square face box (only the box matters to dominance)."""
    t = np.linspace(0, 1, 468)
    return np.stack([x0 + side * t, y0 + side * (1 - t)], axis=1)


def test_the_face_at_the_door_dominates_the_people_behind() -> None:
    door, behind, beside = box_face(200, 100, 150), box_face(10, 10, 100), box_face(420, 100, 140)
    assert dominant_face([door], 2.0) is door
    assert dominant_face([behind, door], 2.0) is door  # 150^2 >= 2 x 100^2
    assert dominant_face([door, beside], 2.0) is None  # comparable: two people at the door
    assert dominant_face([door, beside], 1.1) is door  # a looser operator setting
    assert dominant_face([], 2.0) is None
    with pytest.raises(ValueError, match="area ratio"):
        FaceAligner(dominance=0.5)
