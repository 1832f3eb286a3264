"""Pair batches as the method builds them: mask, chunker, pair sequences, split, augmentation."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from training.data import (
    PairBatches,
    PairSequence,
    augmentation,
    chunker,
    pair_mask,
    rows_by_identity,
    split_identities,
)


def test_pair_mask_values_shape_and_symmetry() -> None:
    mask = pair_mask(3)
    assert mask.shape == (6, 6)
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(np.diag(mask), 2.0)
    for i in range(3):
        assert mask[i, i + 3] == mask[i + 3, i] == 1.0
    np.testing.assert_array_equal(mask, mask.T)
    # Per row: one diagonal entry, one positive partner, every other entry a negative.
    assert Counter(mask[0].tolist()) == {2.0: 1, 1.0: 1, 0.0: 4}


@pytest.mark.parametrize("bs", [0, 1])
def test_pair_mask_needs_two_identities(bs: int) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        pair_mask(bs)


def test_chunker_fixed_size_no_repeats_and_every_item_once_per_pass() -> None:
    items = [f"id{i}" for i in range(12)]
    chunks = chunker(items, 4, np.random.default_rng(0))
    passes = []
    for _ in range(3):
        one_pass = [next(chunks) for _ in range(3)]  # 12 items / 4 = 3 chunks per pass
        assert all(len(c) == 4 for c in one_pass)
        flat = [i for c in one_pass for i in c]
        assert sorted(flat) == sorted(items)  # every item exactly once per pass
        passes.append(flat)
    assert passes[0] != passes[1] or passes[1] != passes[2]  # reshuffled between passes


def test_chunker_drops_the_remainder_and_rejects_oversized_chunks() -> None:
    chunks = chunker([str(i) for i in range(10)], 3, np.random.default_rng(1))
    one_pass = [next(chunks) for _ in range(3)]
    flat = [i for c in one_pass for i in c]
    assert len(flat) == len(set(flat)) == 9
    with pytest.raises(ValueError, match="exceeds"):
        next(chunker(["a", "b"], 3, np.random.default_rng(0)))


def test_pair_sequence_covers_all_combinations_before_repeating() -> None:
    rows = [10, 11, 12, 13]
    sequence = PairSequence(rows, np.random.default_rng(0))
    combos = {frozenset(c) for c in itertools.combinations(rows, 2)}
    for _ in range(3):
        seen = [next(sequence) for _ in range(len(combos))]
        assert all(a != b for a, b in seen)  # two distinct images
        assert {frozenset(p) for p in seen} == combos  # all 6 before any repeats


def test_pair_sequence_needs_two_images() -> None:
    with pytest.raises(ValueError, match="two images"):
        PairSequence([5], np.random.default_rng(0))


def test_pair_batches_layout() -> None:
    """Rows i and i + bs are the same identity; the bs identities of a batch all differ."""
    identities = [f"p{i}" for i in range(7) for _ in range(3)] + ["single"]
    grouped = rows_by_identity(identities)
    batches = PairBatches(grouped, bs=3, seed=0)
    assert "single" not in batches.identities
    assert batches.steps_per_pass == 2
    owner = np.array(identities)
    for _ in range(6):
        rows = next(batches)
        assert rows.shape == (6,)
        np.testing.assert_array_equal(owner[rows[:3]], owner[rows[3:]])
        assert len(set(owner[rows[:3]])) == 3
        assert all(rows[i] != rows[i + 3] for i in range(3))
    np.testing.assert_array_equal(batches.mask, pair_mask(3))


def test_split_identities_disjoint_deterministic_and_stable() -> None:
    grouped = {f"id{i}": [0, 1] for i in range(200)}
    grouped["lonely"] = [0]
    split = split_identities(grouped, 0.2, seed=7)
    assert not set(split.train) & set(split.val)
    assert set(split.train) | set(split.val) == set(grouped)
    assert "lonely" in split.val  # single-image identities can only validate
    assert 20 <= len(split.val) <= 70  # ~20% of 200, hash-based
    assert split_identities(grouped, 0.2, seed=7) == split
    assert split_identities(grouped, 0.2, seed=8).val != split.val
    grown = split_identities({**grouped, **{f"new{i}": [0, 1] for i in range(50)}}, 0.2, seed=7)
    assert set(split.train) <= set(grown.train)  # adding people moves nobody across
    assert set(split.val) <= set(grown.val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_identities_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_identities({"a": [0, 1]}, fraction, seed=0)


def test_augmentation_keeps_shape_and_dtype() -> None:
    aug = augmentation(seed=0)
    image = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    for _ in range(3):
        out = aug(image=image)["image"]
        assert out.shape == image.shape
        assert out.dtype == np.uint8
