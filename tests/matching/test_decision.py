"""decide() on hand-built matches with worked distances."""

from __future__ import annotations

import numpy as np
import pytest

from app.matching.decision import Decision, Match, best_per_person, decide, no_usable_frames, within
from app.matching.fusion import distance, fuse


def test_granted_to_the_nearest_within_the_threshold() -> None:
    d = decide([Match(7, 0.31), Match(3, 0.12), Match(9, 0.40)], threshold=0.2)
    assert (d.granted, d.reason, d.person_id, d.best, d.second) == (True, "match", 3, Match(3, 0.12), Match(7, 0.31))
    assert d.margin == pytest.approx(0.19)


def test_an_unknown_face_is_denied_not_matched_to_the_nearest() -> None:
    d = decide([Match(7, 0.31), Match(3, 0.25)], threshold=0.2)
    assert (d.granted, d.reason, d.person_id) == (False, "no_match", None)
    assert d.best == Match(3, 0.25) and d.margin == pytest.approx(0.06)


def test_no_templates() -> None:
    d = decide([], threshold=0.2)
    assert (d.granted, d.reason, d.best, d.second, d.margin, d.threshold) == (False, "no_templates", None, None, None, 0.2)


def test_the_boundary_distance_is_accepted() -> None:
    assert within(0.2, 0.2) and not within(np.nextafter(0.2, 1.0), 0.2)
    assert decide([Match(1, 0.2)], threshold=0.2).granted
    assert not decide([Match(1, float(np.nextafter(0.2, 1.0)))], threshold=0.2).granted


def test_one_person_alone_has_no_margin() -> None:
    d = decide([Match(4, 0.05)], threshold=0.2)
    assert d.granted and d.second is None and d.margin is None


def test_a_person_counts_once_with_their_nearest_template() -> None:
    ranked = best_per_person([Match(1, 0.30), Match(2, 0.10), Match(1, 0.05), Match(2, 0.20)])
    assert ranked == [Match(1, 0.05), Match(2, 0.10)]
    d = decide([Match(1, 0.30), Match(1, 0.05)], threshold=0.2)
    assert d.second is None  # the second-nearest template is the same person: no margin


def test_ties_go_to_the_lower_id_the_same_way_every_time() -> None:
    assert decide([Match(9, 0.1), Match(2, 0.1)], 0.2).person_id == 2
    assert decide([Match(2, 0.1), Match(9, 0.1)], 0.2).person_id == 2


def test_no_usable_frames_is_a_denial_with_the_threshold() -> None:
    assert no_usable_frames(0.3) == Decision(False, "no_usable_frames", 0.3)


def test_worked_distances_from_vectors() -> None:
    """Two unit vectors 60 degrees apart are at 1 - cos 60 = 0.5; a fused burst of two
    orthogonal frames is at 1 - cos 45 from each."""
    a = np.array([1.0, 0.0, 0.0], np.float32)
    b = np.array([0.5, np.sqrt(3) / 2, 0.0], np.float32)
    assert float(distance(a, b)) == pytest.approx(0.5, abs=1e-6)
    burst = fuse(np.stack([a, np.array([0.0, 1.0, 0.0], np.float32)]))
    assert float(distance(burst, a)) == pytest.approx(1 - np.cos(np.pi / 4), abs=1e-6)
    d = decide([Match(1, float(distance(burst, a))), Match(2, float(distance(burst, b)))], threshold=0.3)
    # b lies at 60 degrees from a, so 15 degrees from the burst's 45: nearer than a.
    assert d.person_id == 2 and d.best is not None and d.best.distance == pytest.approx(1 - np.cos(np.pi / 12), abs=1e-6)
