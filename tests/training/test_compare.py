"""The paired comparison of two embedders on hand-worked vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from training import evaluate
from training.eval import compare
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


def _pairs_report(model: str, thresholds: list[float], distances: list[list[object]]) -> dict[str, object]:
    return {
        "model": model,
        "model_sha256": model * 4,
        "pairs_file": "pairs.txt",
        "accuracy": {"folds": [{"fold": k, "threshold": t} for k, t in enumerate(thresholds)]},
        "distances": distances,
    }


def test_compare_pairs_counts_each_pair_at_its_own_fold_threshold(tmp_path: Path) -> None:
    # Fold 0 (threshold .5 for A, .3 for B) and fold 1 (.6 for both); (fold, same person, distance).
    a = _pairs_report("a", [0.5, 0.6], [[0, True, 0.4], [0, False, 0.45], [1, True, 0.55], [1, False, 0.9]])
    b = _pairs_report("b", [0.3, 0.6], [[0, True, 0.4], [0, False, 0.45], [1, True, 0.7], [1, False, 0.9]])
    # A: right, wrong (a stranger at .45 <= .5), right, right. B: wrong (.4 > .3), right, wrong, right.
    assert compare.pair_decisions(a).tolist() == [True, False, True, True]
    assert compare.pair_decisions(b).tolist() == [False, True, False, True]
    paths = []
    for name, report in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    result = evaluate.main(["compare-pairs", "--pairs-a", str(paths[0]), "--pairs-b", str(paths[1]), "--out", str(tmp_path / "out")])
    assert (result["only_a"], result["only_b"], result["queries"]) == (2, 1, 4)
    assert result["p_value"] == pytest.approx(1.0)
    assert "| 4 " in (tmp_path / "out" / "compare_pairs.md").read_text()
    other = _pairs_report("c", [0.5, 0.6], [[0, True, 0.4], [1, False, 0.45], [1, True, 0.55], [1, False, 0.9]])
    paths[1].write_text(json.dumps(other))
    with pytest.raises(ValueError, match="different orders"):
        evaluate.main(["compare-pairs", "--pairs-a", str(paths[0]), "--pairs-b", str(paths[1]), "--out", str(tmp_path / "out")])
