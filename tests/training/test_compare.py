"""The paired comparison of two embedders on hand-worked vectors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from training.eval.compare import mcnemar
from training.eval.protocol import fused_protocol


def test_the_protocol_hits_count_only_people_with_two_photos() -> None:
    """The per-query hits ``compare`` pairs up: the protocol's n=1 cell, query by query."""
    # a1, a2 close together; b1 nearer to a2 than to b2; c has one photo (never a query).
    vectors = np.array([[1.0, 0.0], [0.95, 0.31], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owners = np.array(["a", "a", "b", "b", "c"])
    result = fused_protocol(vectors, owners, np.random.default_rng(0))
    np.testing.assert_array_equal(result["_hits"], [True, True, False, True])
    assert result["accuracy"] == pytest.approx(0.75)


def test_mcnemar_on_discordant_queries() -> None:
    a = np.array([True] * 10 + [False] * 2 + [True] * 3)
    b = np.array([True] * 10 + [True] * 2 + [False] * 3)
    result = mcnemar(a, b)
    assert (result["queries"], result["only_a"], result["only_b"]) == (15, 3, 2)
    # Two-sided exact binomial on 5 discordant queries, 2 for B: P(X <= 2) + P(X >= 3) = 1.
    assert result["p_value"] == pytest.approx(1.0)
    lopsided = mcnemar(np.zeros(12, bool), np.ones(12, bool))
    assert lopsided["p_value"] == pytest.approx(2 * binom.pmf(12, 12, 0.5))
    assert mcnemar(a, a)["p_value"] == 1.0 and mcnemar(a, a)["only_a"] == 0
