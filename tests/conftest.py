"""Shared pytest fixtures.

Training-side fixtures build tiny synthetic inputs (a crop cache of 64x64 images) so the
training, evaluation and export code runs from the repository alone, in seconds. Tests that
need the real faces and weights in ``../shared`` take ``shared_dir`` and skip without it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from app.core.config import SHARED_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]

CropCacheFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (real faces, weights); tests using it skip where it is not mounted."""
    if not (SHARED_DIR / "data" / "faces").is_dir():
        pytest.skip(f"needs ../shared (real face images) at {SHARED_DIR}, which is absent")
    return SHARED_DIR


def write_crop_cache(directory: Path, identities: list[str], images_per_identity: int = 3, size: int = 64, seed: int = 0) -> Path:
    """A crop cache in ``training.prepare``'s layout: crops.npy, index.csv, summary.json.

    Each identity is a smooth random colour field and its images are noisy, shifted copies
    of it, so same-identity crops resemble each other the way two photos of a face do.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    crops: list[np.ndarray] = []
    rows: list[tuple[int, str, str, str]] = []
    for identity in identities:
        coarse = rng.uniform(0, 255, size=(4, 4, 3))
        base = np.kron(coarse, np.ones((size // 4, size // 4, 1)))
        for k in range(images_per_identity):
            image = np.roll(base, shift=int(rng.integers(-3, 4)), axis=1) + rng.normal(0, 12, base.shape)
            crops.append(np.clip(image, 0, 255).astype(np.uint8))
            rows.append((len(rows), f"synthetic/{identity}/{k:03d}.jpg", identity, "synthetic"))
    np.save(directory / "crops.npy", np.stack(crops))
    with (directory / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "identity", "source"])
        writer.writerows(rows)
    summary = {
        "alignment_version": "synthetic",
        "crop_size": size,
        "images": len(rows),
        "aligned": len(rows),
        "failed": 0,
        "identities": len(identities),
        "failures_by_reason": {},
        "by_source": {"synthetic": {"images": len(rows), "aligned": len(rows), "identities": len(identities)}},
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


@pytest.fixture(scope="session")
def synthetic_crop_cache_factory(tmp_path_factory: pytest.TempPathFactory) -> CropCacheFactory:
    """Builds synthetic crop caches: ``factory(identities, images_per_identity=3, size=64)``."""

    def factory(identities: list[str], images_per_identity: int = 3, size: int = 64, seed: int = 0) -> Path:
        return write_crop_cache(tmp_path_factory.mktemp("crops"), identities, images_per_identity, size, seed)

    return factory


@pytest.fixture(scope="session")
def fake_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight model with the teacher's contract: (2, 112, 112, 3) -> (2, 192)."""
    import keras
    import tensorflow as tf

    from training import teacher as teacher_mod

    keras.utils.set_random_seed(0)
    pixels = keras.Input((112, 112, 3))
    x = keras.layers.Conv2D(8, 5, strides=4, activation="relu")(pixels)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(pixels, keras.layers.Dense(teacher_mod.TEACHER_DIM)(x))
    saved = tmp_path_factory.mktemp("saved")
    # The real teacher's fixed batch of two (a crop and its mirror) is part of its contract.
    model.export(str(saved), format="tf_saved_model", input_signature=[tf.TensorSpec((2, 112, 112, 3), tf.float32)], verbose=False)
    path = tmp_path_factory.mktemp("teacher") / "fake.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
    return path
