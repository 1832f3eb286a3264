"""The method's distance and the "sum vector" fusion shared by the service and the evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from app.matching.fusion import distance, distances_to, fuse, l2_normalise, pairwise_distances


def random_units(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Non-negative unit vectors, like the embedder's ReLU + L2 head emits."""
    return l2_normalise(np.abs(np.random.default_rng(seed).normal(size=(count, dim))))


def test_fuse_of_identical_vectors_is_the_vector() -> None:
    v = random_units(1)[0]
    np.testing.assert_allclose(fuse(np.stack([v, v, v])), v, atol=1e-6)


def test_fuse_returns_a_unit_vector_along_the_mean() -> None:
    vectors = random_units(5)
    fused = fuse(vectors)
    assert np.linalg.norm(fused) == pytest.approx(1.0, abs=1e-6)
    mean = vectors.mean(axis=0)
    np.testing.assert_allclose(fused, mean / np.linalg.norm(mean), atol=1e-6)


@pytest.mark.parametrize("bad", [np.empty((0, 4)), np.ones(4)])
def test_fuse_rejects_empty_or_flat_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        fuse(bad)


def test_distance_properties() -> None:
    a, b = random_units(2, seed=1)
    assert float(distance(a, a)) == pytest.approx(0.0, abs=1e-7)
    e1, e2 = np.eye(2, dtype=np.float32)
    assert float(distance(e1, e2)) == pytest.approx(1.0)  # orthogonal non-negative unit vectors
    assert float(distance(a, b)) == pytest.approx(1.0 - float(a @ b), abs=1e-6)  # unit vectors: 1 - a.b
    assert float(distance(a, b)) == pytest.approx(float(distance(b, a)))
    assert 0.0 <= float(distance(a, b)) <= 1.0


def test_distances_to_and_pairwise_agree_with_distance() -> None:
    templates = random_units(6, seed=2)
    query = random_units(1, seed=3)[0]
    expected = np.array([distance(query, t) for t in templates])
    np.testing.assert_allclose(distances_to(query, templates), expected, atol=1e-6)
    matrix = pairwise_distances(templates)
    np.testing.assert_allclose(matrix, distance(templates[:, None, :], templates[None, :, :]), atol=1e-6)
    np.testing.assert_allclose(np.diag(matrix), 0.0, atol=1e-6)
    assert distances_to(query, np.empty((0, 16), dtype=np.float32)).shape == (0,)
