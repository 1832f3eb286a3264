"""Pair batches, exactly as the method builds them.

- The identity list is reshuffled every pass and cut into fixed-size chunks ("chunker"):
  every batch holds ``bs`` different identities and none repeats within a pass.
- Each identity yields an endless random sequence of two-image combinations.
- Images ``i`` and ``i + bs`` of a batch are the same person; the label is one static
  ``2bs x 2bs`` mask: 2 on the diagonal, 1 for the positive pair, 0 for every negative.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np


def pair_mask(bs: int) -> np.ndarray:
    """The static label of a pair batch of ``bs`` identities (shape ``2bs x 2bs``)."""
    if bs < 2:
        raise ValueError(f"a pair batch needs at least 2 identities, got {bs}")
    mask = np.zeros((2 * bs, 2 * bs), dtype=np.float32)
    idx = np.arange(bs)
    mask[idx, idx + bs] = 1.0
    mask[idx + bs, idx] = 1.0
    np.fill_diagonal(mask, 2.0)
    return mask


def chunker(items: Sequence[str], size: int, rng: np.random.Generator) -> Iterator[list[str]]:
    """Endless fixed-size chunks; the list is reshuffled every pass, the remainder dropped."""
    if size > len(items):
        raise ValueError(f"chunk size {size} exceeds the {len(items)} items available")
    pool = list(items)
    while True:
        order = rng.permutation(len(pool))
        for start in range(0, len(pool) - size + 1, size):
            yield [pool[i] for i in order[start : start + size]]


class PairSequence:
    """An endless random sequence of distinct two-image combinations of one identity.

    All combinations are visited in random order before any repeats.
    """

    def __init__(self, rows: Sequence[int], rng: np.random.Generator):
        if len(rows) < 2:
            raise ValueError("an identity needs at least two images to make a pair")
        self._pairs = list(itertools.combinations(rows, 2))
        self._rng = rng
        self._queue: list[tuple[int, int]] = []

    def __next__(self) -> tuple[int, int]:
        if not self._queue:
            self._queue = [self._pairs[i] for i in self._rng.permutation(len(self._pairs))]
        a, b = self._queue.pop()
        return (a, b) if self._rng.random() < 0.5 else (b, a)


class PairBatches:
    """Row indices of endless pair batches over ``identity -> rows``."""

    def __init__(self, rows_by_identity: dict[str, list[int]], bs: int, seed: int = 0):
        eligible = sorted(i for i, rows in rows_by_identity.items() if len(rows) >= 2)
        self.bs = bs
        self.rng = np.random.default_rng(seed)
        self.identities = eligible
        self._sequences = {i: PairSequence(rows_by_identity[i], self.rng) for i in eligible}
        self._chunks = chunker(eligible, bs, self.rng)
        self.mask = pair_mask(bs)

    @property
    def steps_per_pass(self) -> int:
        return len(self.identities) // self.bs

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        chunk = next(self._chunks)
        pairs = [next(self._sequences[i]) for i in chunk]
        return np.array([a for a, _ in pairs] + [b for _, b in pairs], dtype=np.int64)


def augmentation(seed: int | None = None) -> A.Compose:
    """The method's augmentations, each at random.

    flip (p .5), Gaussian noise sigma 3..7 grey levels (p .5), HSV shift 20/30/20 (p .5), shift 0.15 / scale 0.16 /
    rotate 15 degrees with a black border (always), brightness/contrast 0.25 (always).
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.GaussNoise(std_range=(0.012, 0.028), p=0.5),
            A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=20, p=0.5),
            A.Affine(
                translate_percent=(-0.15, 0.15),
                scale=(0.84, 1.16),
                rotate=(-15, 15),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=1.0,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=1.0),
        ],
        seed=seed,
    )


def door_augmentation(seed: int | None = None) -> A.Compose:
    """What a door camera changes between frames of one person: small shifts, lighting, grey, low resolution.

    Mild enough that a distillation teacher's vector still holds for the changed crop (the
    teacher embeds every photo with its mirror image, so a flip changes nothing); the burst
    evaluation makes its extra frames with it too.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.04, 0.04), scale=(0.95, 1.05), rotate=(-6, 6), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.ToGray(p=0.1),
            A.Downscale(scale_range=(0.4, 0.8), p=0.15),
        ],
        seed=seed,
    )


@dataclass(frozen=True)
class Split:
    """An identity-disjoint train / validation split, reproducible from its seed."""

    seed: int
    val_fraction: float
    train: list[str]
    val: list[str]

    def save(self, path: Path) -> None:
        Path(path).write_text(
            json.dumps(
                {
                    "seed": self.seed,
                    "val_fraction": self.val_fraction,
                    "train_identities": len(self.train),
                    "val_identities": len(self.val),
                    "val": self.val,
                },
                indent=1,
            )
            + "\n"
        )


def split_identities(rows_by_identity: dict[str, list[int]], val_fraction: float, seed: int) -> Split:
    """Hold out a seeded share of identities; single-image identities go to validation.

    Each identity's side is decided by a hash of (seed, identity), so adding people to a
    dataset never moves an existing person across the split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, val = [], []
    for identity in sorted(rows_by_identity):
        digest = hashlib.sha256(f"{seed}:{identity}".encode()).digest()
        held_out = int.from_bytes(digest[:8], "big") / 2**64 < val_fraction
        if held_out or len(rows_by_identity[identity]) < 2:
            val.append(identity)
        else:
            train.append(identity)
    return Split(seed=seed, val_fraction=val_fraction, train=train, val=val)


def rows_by_identity(identities: Sequence[str] | np.ndarray) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for row, identity in enumerate(identities):
        grouped[str(identity)].append(row)
    return dict(grouped)


def teaching_augmentation(seed: int | None = None) -> A.Compose:
    """Stronger changes for crops the teacher labels online (consistent teaching).

    Where ``door_augmentation`` must stay mild because the target is the teacher's vector of the
    clean photo, a crop labelled by the teacher *after* augmentation can change more: the
    target follows the pixels. Larger shifts, scale and rotation; colour, blur, sensor noise,
    JPEG and low resolution (door cameras); a patch hidden (a hand, a scarf, glasses). Each is a
    new input for the student, where a cached label makes every pass over a photo a repeat.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.08, 0.08), scale=(0.9, 1.1), rotate=(-12, 12), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.8),
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=10, p=0.3),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.2),
            A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
            A.ImageCompression(quality_range=(30, 85), p=0.25),
            A.Downscale(scale_range=(0.3, 0.7), p=0.25),
            A.ToGray(p=0.1),
            A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(0.1, 0.3), hole_width_range=(0.1, 0.3), p=0.2),
        ],
        seed=seed,
    )
