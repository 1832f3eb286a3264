"""Door-camera frames made from real photos (a face pasted into a doorway), bursts of them, random unit vectors."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.paths import FACES, FRAME_SIZE


def face_photos(min_photos: int = 8) -> dict[str, list[Path]]:
    """CelebA in-the-wild identities with at least ``min_photos`` photos, or a clear exit."""
    if not FACES.is_dir():
        raise SystemExit(
            f"real face photos not found at {FACES}: the benchmarks need ../shared/data/faces/celeba_wild "
            "(a checkout with ../shared next to the repository)"
        )
    people = {d.name: sorted(d.glob("*.jpg")) for d in sorted(FACES.iterdir()) if d.is_dir()}
    people = {k: v for k, v in people.items() if len(v) >= min_photos}
    if not people:
        raise SystemExit(f"no identity with {min_photos} photos in {FACES}")
    return people


def _background(rng: np.random.Generator) -> np.ndarray:
    """A plausible doorway scene: a lit gradient wall, a door frame, sensor noise."""
    w, h = FRAME_SIZE
    base = rng.uniform(60, 190, size=3)
    ramp = np.linspace(-35, 35, w)[None, :, None] + np.linspace(-20, 20, h)[:, None, None]
    scene: np.ndarray = np.broadcast_to(base, (h, w, 3)) + ramp
    x0 = int(rng.integers(20, 120))
    scene[:, x0 : x0 + 18] *= 0.55  # door frame, left
    scene[:, w - x0 - 18 : w - x0] *= 0.55  # door frame, right
    scene += rng.normal(0, 4, size=scene.shape)
    return np.clip(scene, 0, 255).astype(np.uint8)


def frame_from_photo(photo: Path, rng: np.random.Generator, face_side: int = 300) -> bytes:
    """One 640x480 JPEG: the face photo upscaled to ``face_side`` px, pasted at a jittered spot."""
    from PIL import Image

    w, h = FRAME_SIZE
    canvas = Image.fromarray(_background(rng))
    side = int(face_side * rng.uniform(0.9, 1.1))
    face = Image.open(photo).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    x = (w - side) // 2 + int(rng.integers(-60, 61))
    y = (h - side) // 2 + int(rng.integers(-30, 31))
    canvas.paste(face, (max(0, min(w - side, x)), max(0, min(h - side, y))))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=90)
    return out.getvalue()


def burst(photos: Sequence[Path], n: int, seed: int) -> list[bytes]:
    """``n`` frames cycling over ``photos`` (a door camera's burst of one person)."""
    rng = np.random.default_rng(seed)
    return [frame_from_photo(photos[i % len(photos)], rng) for i in range(n)]


def multipart(frames: Sequence[bytes], **fields: str) -> dict[str, Any]:
    return {"files": [("frames", (f"f{i}.jpg", data, "image/jpeg")) for i, data in enumerate(frames)], "data": fields}


def random_unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors over the whole sphere, like the distilled embedder's output (linear head,
    strangers near cosine 0)."""
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def identify_bursts(
    people: dict[str, list[Path]], identity: str, photos: Sequence[Path], frames: int, count: int, seed: int = 1000
) -> list[list[bytes]]:
    """``count`` distinct bursts of ``frames`` frames of the enrolled identity (photos it was
    not enrolled with when there are any); built before timing starts."""
    pool = list(photos) or people[identity]
    return [burst([pool[(b + i) % len(pool)] for i in range(frames)], frames, seed=seed + b) for b in range(count)]
