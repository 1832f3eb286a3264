"""operating_point and friends on hand-worked distances, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from training.eval.metrics import best_threshold, far_thresholds, k_fold_accuracy, operating_point, roc_points, threshold_at_far

NEG = np.array([0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00])
POS = np.array([0.05, 0.15, 0.25, 0.35, 0.45])


def test_no_ties_midway_between_the_last_accepted_and_the_first_refused() -> None:
    # FAR 20% of 10 negatives: 2 may pass (0.10, 0.20); the 3rd smallest (0.30) is the first out.
    point = operating_point(POS, NEG, 0.2)
    assert point["threshold"] == pytest.approx(0.25)
    assert (point["far"], point["tar"], point["negatives_allowed"]) == (0.2, 0.6, 2)


def test_ties_at_the_cut_are_all_refused_so_the_target_is_never_exceeded() -> None:
    # Three negatives tie at 0.20: letting the 2nd in would let all three in (FAR 30% > 20%).
    tied = np.array([0.10, 0.20, 0.20, 0.20, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00])
    point = operating_point(POS, tied, 0.2)
    assert point["threshold"] == pytest.approx(0.15)  # midway between 0.10 and the tied 0.20
    assert point["far"] == pytest.approx(0.1) and point["far"] <= 0.2
    assert point["tar"] == pytest.approx(0.4)  # 0.05 and 0.15 (equal to the threshold: accepted)


def test_a_tie_on_the_smallest_negative_leaves_nothing_in() -> None:
    tied = np.full(10, 0.3)
    point = operating_point(POS, tied, 0.5)
    assert point["threshold"] < 0.3 and point["far"] == 0.0
    assert point["threshold"] == np.nextafter(0.3, -np.inf)


def test_far_zero_and_far_one() -> None:
    assert operating_point(POS, NEG, 0.0)["threshold"] == np.nextafter(0.10, -np.inf)
    everything = operating_point(POS, NEG, 1.0)
    assert everything["threshold"] == 1.0 and everything["far"] == 1.0 and everything["tar"] == 1.0


def test_too_few_negatives_for_the_target() -> None:
    # FAR 0.1% of 10 negatives allows none: the threshold sits just below the smallest.
    point = operating_point(POS, NEG, 0.001)
    assert point["negatives_allowed"] == 0 and point["far"] == 0.0 and point["threshold"] < 0.10
    assert operating_point(POS, np.array([]), 0.01)["threshold"] is None


def test_the_threshold_holds_its_target_on_random_data_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        neg = np.round(rng.uniform(0, 1, rng.integers(1, 300)), 2)  # rounding makes ties common
        far = float(rng.choice([0.5, 0.1, 0.01, 0.003]))
        point = operating_point(rng.uniform(0, 1, 20), neg, far)
        assert point["far"] <= far + 1e-12, (far, point)
        # ...and it is the largest such threshold: the next negative up would break the target.
        above = neg[neg > point["threshold"]]
        if above.size:
            assert (neg <= above.min()).mean() > far


def test_pairs_and_table_shapes_use_the_same_rule() -> None:
    distances = np.concatenate([POS, NEG])
    same = np.array([True] * len(POS) + [False] * len(NEG))
    assert threshold_at_far(distances, same, 0.2) == operating_point(POS, NEG, 0.2)
    table = far_thresholds(POS, NEG, (0.2, 0.1))
    assert table["0.2"] == operating_point(POS, NEG, 0.2) and table["0.1"]["threshold"] == pytest.approx(0.15)
    with pytest.raises(ValueError):
        threshold_at_far(POS, np.ones(len(POS), bool), 0.1)


def test_best_threshold_and_k_fold() -> None:
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7])
    same = np.array([True, True, True, False, False, False])
    threshold, accuracy = best_threshold(distances, same)
    assert threshold == pytest.approx(0.35) and accuracy == 1.0
    # Fold 0 holds 0.1, 0.3 (same) and 0.6; fold 1 holds 0.2 (same), 0.4 and 0.7. Fitted on fold 1
    # the threshold is 0.3 (between 0.2 and 0.4): fold 0 all right. Fitted on fold 0 it is 0.45
    # (between 0.3 and 0.6): fold 1's 0.4 is wrongly accepted, 2 of 3 right.
    result = k_fold_accuracy(distances, same, np.array([0, 1, 0, 1, 0, 1]))
    assert [f["threshold"] for f in result["folds"]] == [pytest.approx(0.3), pytest.approx(0.45)]
    assert [f["accuracy"] for f in result["folds"]] == [1.0, pytest.approx(2 / 3)]
    assert result["mean_accuracy"] == pytest.approx(5 / 6)


def test_roc_points_are_cumulative() -> None:
    distances = np.array([0.1, 0.2, 0.3, 0.4])
    same = np.array([True, False, True, False])
    far, tar = roc_points(distances, same)
    assert far.tolist() == [0.0, 0.5, 0.5, 1.0] and tar.tolist() == [0.5, 0.5, 1.0, 1.0]
