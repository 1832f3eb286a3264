"""Thresholds by frames fused, on synthetic people whose photos scatter around a centre."""

from __future__ import annotations

import numpy as np
import pytest

from training.bursts import HISTOGRAM_BINS, evaluate_bursts, histogram
from training.evidence import burst_table


def _people(n_people: int = 12, photos: int = 6, dim: int = 32, noise: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # A component every face shares (as real embeddings have) plus each person's own.
    centres = 1.5 * rng.standard_normal(dim) + rng.standard_normal((n_people, dim))
    vectors = np.repeat(centres, photos, axis=0) + noise * rng.standard_normal((n_people * photos, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors[None, :, :].astype(np.float32), np.repeat(np.arange(n_people), photos)


def test_histogram_counts_every_distance_in_fixed_bins() -> None:
    assert len(HISTOGRAM_BINS) == 101 and HISTOGRAM_BINS[0] == 0.0 and HISTOGRAM_BINS[-1] == 2.0
    counts = histogram(np.array([0.0, 0.01, 0.02, 1.999, 2.0, 2.5]))
    assert sum(counts) == 6 and counts[0] == 2 and counts[1] == 1 and counts[-1] == 3


def test_bursts_thresholds_fall_as_frames_are_added_and_histograms_add_up() -> None:
    vectors, owners = _people(photos=24, noise=2.5)  # noisy photos; 12 query photos each
    result = evaluate_bursts(vectors, owners, frames=(1, 2, 5, 8), repetitions=3, template_frames=5, seed=0)
    assert result["people"] == 12 and result["enrolled_per_stranger"] == 11
    # Summing frames cancels each photo's noise: strangers' fused bursts come closer too, which
    # is why each burst size needs its own threshold.
    means = [result["per_n"][str(n)]["impostor"]["mean"] for n in (1, 2, 5, 8)]
    assert means[0] > means[1] > means[3] and means[0] - means[3] > 0.05, means
    assert result["per_n"]["8"]["by_far"]["0.01"]["threshold"] < result["per_n"]["1"]["by_far"]["0.01"]["threshold"]
    for n in ("1", "5"):
        row = result["per_n"][n]
        assert sum(row["histogram"]["genuine"]) == row["genuine"]["count"] == 12 * 3
        assert sum(row["histogram"]["impostor"]) == row["impostor"]["count"] == 12 * 11 * 3
        for far, point in row["by_far"].items():
            assert point["far"] <= float(far)  # the operating point never exceeds its target


def test_the_manifest_table_carries_thresholds_tar_and_histograms() -> None:
    vectors, owners = _people()
    result = evaluate_bursts(vectors, owners, frames=(1, 2, 5), repetitions=2, template_frames=5, seed=1)
    table = burst_table([{**result, "measured_this_model": True, "source": "bursts.json", "cache_name": "synthetic"}])
    assert table is not None and table["template_frames"] == 5 and table["default_far"] == 0.001
    assert set(table["by_frames"]) == {"1", "2", "5"} and "0.01" in table["by_frames"]["1"]
    assert set(table["histograms"]["by_frames"]) == {"1", "5"} and table["histograms"]["bins"] == HISTOGRAM_BINS.tolist()
    assert burst_table([{**result, "measured_this_model": False}]) is None
    with pytest.raises(ValueError):
        evaluate_bursts(vectors[:, :4], owners[:4])
