"""The threshold policy: the model's table by frames fused, an admin's FAR or distance."""

from __future__ import annotations

import pytest

from app.matching.threshold import Threshold, ThresholdTable, ThresholdTableError

MANIFEST_TABLE = {
    "template_frames": 5,
    "default_far": 0.001,
    "by_frames": {
        "1": {"0.01": 0.45, "0.001": 0.33, "0.0001": 0.25},
        "2": {"0.01": 0.40, "0.001": 0.30, "0.0001": 0.22},
        "5": {"0.01": 0.35, "0.001": 0.25, "0.0001": 0.18},
        "8": {"0.01": 0.30, "0.001": 0.20, "0.0001": 0.15},
    },
}


@pytest.fixture
def table() -> ThresholdTable:
    return ThresholdTable.from_manifest(MANIFEST_TABLE)


def test_rows_by_frames_and_far(table: ThresholdTable) -> None:
    assert table.fars() == [0.01, 0.001, 0.0001]
    assert (table.at(1), table.at(5), table.at(5, 0.0001)) == (0.33, 0.25, 0.18)
    # Between measured rows the next smaller measured row applies (stricter than interpolating up);
    # 3 and 4 frames use the 2-frame row; past the longest row, the longest (strictest) applies.
    assert (table.at(3), table.at(4), table.at(8), table.at(16)) == (0.30, 0.30, 0.20, 0.20)
    assert table.at(0) == 0.33  # no usable frames still has a threshold to report
    assert table.by_frames_at() == {1: 0.33, 2: 0.30, 5: 0.25, 8: 0.20}
    with pytest.raises(KeyError):
        table.at(5, 0.005)


def test_more_frames_never_loosen_the_default(table: ThresholdTable) -> None:
    policy = Threshold.resolve(table, stored_distance=None, stored_far=None)
    values = [policy.for_frames(n) for n in range(1, 17)]
    assert values == sorted(values, reverse=True)


def test_resolution_order(table: ThresholdTable) -> None:
    default = Threshold.resolve(table, stored_distance=None, stored_far=None)
    assert (default.source, default.target_far, default.for_frames(5)) == ("default", 0.001, 0.25)
    configured = Threshold.resolve(table, stored_distance=None, stored_far=None, configured=0.2)
    assert (configured.source, configured.for_frames(1), configured.for_frames(16)) == ("configured", 0.2, 0.2)
    stored = Threshold.resolve(table, stored_distance=0.1, stored_far=None, configured=0.2)
    assert (stored.source, stored.by_frames()) == ("distance", {1: 0.1, 2: 0.1, 5: 0.1, 8: 0.1})
    level = Threshold.resolve(table, stored_distance=None, stored_far=0.0001, configured=0.2)
    assert (level.source, level.for_frames(1), level.for_frames(8)) == ("target_far", 0.25, 0.15)


def test_no_table_needs_a_configured_distance() -> None:
    with pytest.raises(ThresholdTableError):
        Threshold.resolve(None, stored_distance=None, stored_far=None)
    assert Threshold.resolve(None, stored_distance=None, stored_far=None, configured=0.3).for_frames(4) == 0.3
    with pytest.raises(ValueError):
        Threshold(None, "target_far", target_far=0.001)


@pytest.mark.parametrize(
    "broken",
    [
        None,
        {},
        {"template_frames": 5, "default_far": 0.001, "by_frames": {}},
        {"template_frames": 5, "default_far": 0.005, "by_frames": {"1": {"0.001": 0.3}}},
        {"template_frames": 5, "default_far": 0.001, "by_frames": {"2": {"0.001": 0.3}}},
        {"template_frames": "five", "default_far": 0.001, "by_frames": {"1": {"0.001": 0.3}}},
    ],
)
def test_malformed_tables_are_refused(broken: dict | None) -> None:
    with pytest.raises(ThresholdTableError):
        ThresholdTable.from_manifest(broken)
