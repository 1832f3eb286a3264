"""The in-memory template index: upserts, removals that keep the matrix dense, the scan."""

from __future__ import annotations

import numpy as np
import pytest

from app.matching.fusion import l2_normalise
from app.matching.index import PREFILTER_MIN, TemplateIndex, nearest_rows, quantise


def unit_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).random((n, dim), dtype=np.float32))


def test_scan_finds_each_template_first() -> None:
    vectors = unit_vectors(50)
    index = TemplateIndex("m", 32, capacity=4)
    index.upsert_many(np.arange(1, 51), np.arange(101, 151), vectors)
    assert len(index) == 50
    for i in (0, 17, 49):
        best = index.scan(vectors[i], k=3)[0]
        assert (best.template_id, best.person_id) == (i + 1, i + 101)
        assert best.approx_distance == pytest.approx(0.0, abs=0.01)


def test_upsert_overwrites_and_remove_keeps_rows_dense() -> None:
    vectors = unit_vectors(6, seed=1)
    index = TemplateIndex("m", 32)
    index.upsert_many(np.array([10, 20, 30]), np.array([1, 2, 3]), vectors[:3])
    index.upsert_many(np.array([20]), np.array([2]), vectors[3:4])  # re-fused template 20
    assert len(index) == 3
    assert index.scan(vectors[3], k=1)[0].template_id == 20
    index.remove(10)  # the last row (30) moves into row 0
    index.remove(999)  # unknown ids are ignored
    assert len(index) == 2 and sorted(index.all_template_ids().tolist()) == [20, 30]
    assert index.row_of(10) == -1 and index.row_of(30) == 0
    assert index.scan(vectors[2], k=1)[0].template_id == 30
    index.remove(30)
    index.remove(20)
    assert len(index) == 0 and index.scan(vectors[0], k=5) == []


def test_load_bulk_and_quantisation_error_is_small() -> None:
    vectors = unit_vectors(1000, dim=256, seed=2)
    index = TemplateIndex("m", 256)
    index.load_bulk(np.arange(1000) * 3, np.arange(1000), quantise(vectors), generation=7)
    assert index.generation == 7 and index.row_of(300) == 100
    query = vectors[100]
    exact = 1.0 - vectors @ query
    shortlist = index.scan(query, k=10)
    assert shortlist[0].template_id == 300
    for candidate in shortlist:
        assert candidate.approx_distance == pytest.approx(exact[candidate.template_id // 3], abs=0.01)


def test_apply_changes_in_generation_order() -> None:
    """What crud.template_changes hands over: deletions first, then batches added or re-fused."""
    vectors = unit_vectors(4, dim=32, seed=3)
    index = TemplateIndex("m", 32)
    index.apply(1, [], [(np.array([1, 2]), np.array([10, 20]), vectors[:2])])
    assert (index.generation, len(index)) == (1, 2)
    # Template 1 deleted, template 2 re-fused to another vector, template 3 added, in two batches.
    index.apply(4, [1], [(np.array([2]), np.array([20]), vectors[2:3]), (np.array([3]), np.array([30]), vectors[3:4])])
    assert (index.generation, len(index), index.row_of(1)) == (4, 2, -1)
    assert index.scan(vectors[2], k=1)[0].template_id == 2 and index.scan(vectors[3], k=1)[0].person_id == 30
    # An older generation (a slower request's changes) never moves the index back.
    index.apply(3, [], [])
    assert index.generation == 4


@pytest.mark.parametrize("n", [5, 100, 10_000, 100_003])
def test_top_k_largest_matches_a_full_sort(n: int) -> None:
    from app.matching.index import top_k_largest

    rng = np.random.default_rng(n)
    scores = rng.integers(0, 50, n).astype(np.float32)  # many ties
    for k in sorted({min(n, 1), min(n, 16), min(n, 40)}):
        got = top_k_largest(scores, k)
        assert len(got) == k
        assert np.array_equal(np.sort(scores[got])[::-1], np.sort(scores)[::-1][:k])


def test_prefilter_keeps_every_match_within_a_door_threshold() -> None:
    """Above PREFILTER_MIN templates the sign-bit shortlist comes first: every template that a
    door threshold would accept (cosine >= 0.6, distance <= 0.4, looser than any row of the
    shipped tables) must still come back, with the same approximate distance and rank as the
    plain int8 scan gives."""
    rng = np.random.default_rng(7)
    n, dim, queries = PREFILTER_MIN + 10_000, 192, 40
    strangers = l2_normalise(rng.normal(size=(n, dim)).astype(np.float32))
    # Each query has one planted template at cosine 0.6 (the hardest a threshold admits).
    noise = l2_normalise(rng.normal(size=(queries, dim)).astype(np.float32))
    q = l2_normalise(rng.normal(size=(queries, dim)).astype(np.float32))
    noise -= np.sum(noise * q, axis=1, keepdims=True) * q
    planted = 0.6 * q + 0.8 * l2_normalise(noise)
    rows = rng.choice(n, size=queries, replace=False)
    strangers[rows] = planted
    index = TemplateIndex("m", dim)
    index.upsert_many(np.arange(1, n + 1), np.arange(1, n + 1), strangers)
    codes = quantise(strangers).astype(np.float32)
    for i in range(queries):
        got = index.scan(q[i], k=16)
        exact_dots = codes @ quantise(q[i]).astype(np.float32)
        best = int(np.argmax(exact_dots))
        assert best == rows[i]
        assert got[0].template_id == best + 1
        assert got[0].approx_distance == pytest.approx(1.0 - exact_dots[best] / 127.0**2, abs=1e-6)


def test_nearest_rows_includes_ties_at_the_cut_off() -> None:
    hamming = np.array([5, 1, 3, 3, 3, 9, 0], dtype=np.float32)
    assert nearest_rows(hamming, 3, dim=16).tolist() == [1, 2, 3, 4, 6]
    assert nearest_rows(hamming, 1, dim=16).tolist() == [6]


def test_prefilter_falls_back_when_sign_bits_tell_nothing() -> None:
    """Vectors all in one orthant (a ReLU head) share their sign bits: the plain scan is used."""
    rng = np.random.default_rng(3)
    n, dim = PREFILTER_MIN + 1_000, 64
    vectors = l2_normalise(np.abs(rng.normal(size=(n, dim))).astype(np.float32))
    index = TemplateIndex("m", dim)
    index.upsert_many(np.arange(1, n + 1), np.arange(1, n + 1), vectors)
    for row in (5, n - 3):
        assert index.scan(vectors[row], k=4)[0].template_id == row + 1
