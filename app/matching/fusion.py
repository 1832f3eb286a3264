"""The method's distance and multi-frame fusion, shared by the service and the evaluation."""

from __future__ import annotations

import numpy as np


def l2_normalise(vectors: np.ndarray, axis: int = -1) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(vectors, axis=axis, keepdims=True)
    return vectors / np.maximum(norm, 1e-12)


def fuse(embeddings: np.ndarray) -> np.ndarray:
    """The "sum vector": sum the frames' unit vectors, then L2-normalise the sum.

    Averaging before normalising cancels much of each frame's noise; the result is again a
    unit vector, so it compares with single frames and other fused vectors alike.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"fuse needs a non-empty (n, d) array, got shape {embeddings.shape}")
    return l2_normalise(embeddings.sum(axis=0))


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised Euclidean distance ``sum((a - b)^2) / 2`` along the last axis (0..1 here)."""
    diff = np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)
    return np.sum(diff * diff, axis=-1) / 2.0


def distances_to(query: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Distances from one unit vector to every row of a unit-vector matrix.

    For unit vectors ``sum((a - b)^2) / 2 == 1 - a.b``: one matrix-vector product, which is
    what lets a linear scan over a million templates stay within a few tens of milliseconds.
    """
    if len(templates) == 0:
        return np.empty(0, dtype=np.float32)
    return np.maximum(1.0 - templates @ np.asarray(query, dtype=templates.dtype), 0.0)


def pairwise_distances(vectors: np.ndarray) -> np.ndarray:
    """All-pairs distance matrix of unit vectors."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return np.maximum(1.0 - vectors @ vectors.T, 0.0)
