"""Verification metrics on distances: one operating point at a target FAR, the best
threshold, k-fold accuracy, ROC points.

Every comparison is ``distance <= threshold`` (accepted), as in the service
(``app.matching.decision.within``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

FARS = (0.01, 0.001)


def operating_point(positives: np.ndarray, negatives: np.ndarray, far: float) -> dict[str, Any]:
    """The threshold at a target false-accept rate, and what it accepts.

    The rule, ties included: with ``k = floor(far * negatives)`` negative distances allowed at or
    below it, the threshold sits midway between the largest negative distance below the
    (k+1)-th smallest one and that distance itself. Negatives tied with the (k+1)-th are all
    refused, so the actual FAR on these negatives never exceeds the target (it is lower when
    ties straddle the cut). With no negative allowed (k = 0) the threshold lies just below the
    smallest negative. ``threshold`` is None when there are no negatives.
    """
    neg = np.sort(np.asarray(negatives, dtype=np.float64))
    pos = np.asarray(positives, dtype=np.float64)
    point: dict[str, Any] = {"far_target": far, "negatives": int(neg.size), "positives": int(pos.size)}
    if neg.size == 0:
        return {**point, "threshold": None, "far": None, "tar": None, "negatives_allowed": 0}
    allowed = math.floor(far * neg.size + 1e-9)
    if allowed >= neg.size:
        threshold = float(neg[-1])
    else:
        first_out = neg[allowed]
        below = neg[neg < first_out]
        threshold = float((below[-1] + first_out) / 2) if below.size else float(np.nextafter(first_out, -np.inf))
    return {
        **point,
        "threshold": threshold,
        "far": float((neg <= threshold).mean()),
        "tar": float((pos <= threshold).mean()) if pos.size else None,
        "negatives_allowed": int(allowed),
    }


def far_thresholds(positives: np.ndarray, negatives: np.ndarray, fars: Sequence[float] = FARS) -> dict[str, Any]:
    """``operating_point`` at each target FAR, keyed by the FAR as text (the reports' shape)."""
    return {str(far): operating_point(positives, negatives, far) for far in fars}


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold (match when ``distance <= t``) with the best accuracy on these pairs.

    Candidates lie midway between consecutive distinct distances (and just outside both
    ends), so the chosen threshold never sits exactly on a training pair's distance.
    Returns (threshold, accuracy); the first, i.e. smallest, best threshold wins ties.
    """
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    values = np.unique(distances)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    pos, neg = np.sort(distances[same]), np.sort(distances[~same])
    true_accepts = np.searchsorted(pos, candidates, side="right")
    false_accepts = np.searchsorted(neg, candidates, side="right")
    accuracy = (true_accepts + (neg.size - false_accepts)) / distances.size
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


def k_fold_accuracy(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """LFW's protocol: per fold, the threshold that is best on the other folds, tested on it."""
    distances, same, folds = np.asarray(distances, dtype=np.float64), np.asarray(same, bool), np.asarray(folds)
    per_fold = []
    for fold in np.unique(folds):
        test = folds == fold
        train = ~test if (~test).any() else test  # one fold: fit and test on it (said in the report)
        threshold, train_accuracy = best_threshold(distances[train], same[train])
        accuracy = float(((distances[test] <= threshold) == same[test]).mean())
        per_fold.append({"fold": int(fold), "threshold": threshold, "train_accuracy": train_accuracy, "accuracy": accuracy})
    accuracies = np.array([f["accuracy"] for f in per_fold])
    return {"mean_accuracy": float(accuracies.mean()), "std_accuracy": float(accuracies.std()), "folds": per_fold}


def threshold_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> dict[str, Any]:
    """``operating_point`` of labelled pairs (``same``: matched pair)."""
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, bool)
    if not same.any() or same.all():
        raise ValueError("TAR at FAR needs both matched and mismatched pairs")
    return operating_point(distances[same], distances[~same], far)


def roc_points(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, bool)
    thresholds = np.unique(distances)
    tar = np.searchsorted(np.sort(distances[same]), thresholds, side="right") / max(1, same.sum())
    far = np.searchsorted(np.sort(distances[~same]), thresholds, side="right") / max(1, (~same).sum())
    return far, tar


def verification_accuracy(vectors: np.ndarray, owners: np.ndarray, seed: int = 0) -> float:
    """Best-threshold accuracy on every same-person pair and as many random different-person pairs."""
    same_i, same_j = np.nonzero(np.triu(owners[:, None] == owners[None, :], k=1))
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(owners), size=(2, 4 * len(same_i)))
    keep = owners[a] != owners[b]
    a, b = a[keep][: len(same_i)], b[keep][: len(same_i)]
    distances = 1.0 - np.concatenate([np.sum(vectors[same_i] * vectors[same_j], 1), np.sum(vectors[a] * vectors[b], 1)])
    same = np.concatenate([np.ones(len(same_i), bool), np.zeros(len(a), bool)])
    return best_threshold(distances, same)[1]
