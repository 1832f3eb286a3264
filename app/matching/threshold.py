"""The threshold policy: which distance decides a burst of n fused frames.

Fused distances shrink as frames are summed, strangers' as much as anyone's, so one distance
for every burst size lets a stranger in by sending more frames. The model package therefore
carries one table, threshold by (frames fused in the query, target FAR), measured on held-out
people against templates of ``template_frames`` frames (``python -m training.bursts``).

What is in force is resolved once per request into a :class:`Threshold` value and passed
down to :func:`app.matching.decision.decide`:

- ``default``: the model's row for the number of usable frames at the model's default FAR;
- ``target_far``: an admin chose another FAR of the table (a "security level");
- ``distance``: an admin (or ``DEFAULT_THRESHOLD``) fixed one raw distance for every burst size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Source = Literal["default", "target_far", "distance", "configured"]


class ThresholdTableError(ValueError):
    """The model package's burst-threshold table is missing or malformed."""


@dataclass(frozen=True)
class ThresholdTable:
    """Threshold by frames fused and target FAR, as measured for one model."""

    template_frames: int
    default_far: float
    by_frames: Mapping[int, Mapping[float, float]]

    @classmethod
    def from_manifest(cls, table: Mapping[str, Any] | None) -> ThresholdTable:
        """From a manifest's ``burst_thresholds``: ``{"template_frames", "default_far",
        "by_frames": {"<n>": {"<far>": threshold, ...}, ...}}``."""
        if not table or not table.get("by_frames"):
            raise ThresholdTableError("the model package carries no burst thresholds (burst_thresholds.by_frames)")
        try:
            rows = {
                int(n): {float(far): float(t) for far, t in row.items() if t is not None} for n, row in dict(table["by_frames"]).items()
            }
            result = cls(int(table["template_frames"]), float(table["default_far"]), rows)
        except (KeyError, TypeError, ValueError) as exc:
            raise ThresholdTableError(f"malformed burst_thresholds: {exc}") from exc
        if min(rows) != 1 or result.default_far not in result.fars():
            raise ThresholdTableError("burst_thresholds must start at 1 frame and hold its default FAR in every row")
        return result

    def fars(self) -> list[float]:
        """The target FARs every row of the table holds, strictest last."""
        common = set.intersection(*(set(row) for row in self.by_frames.values()))
        return sorted(common, reverse=True)

    def row(self, frames: int) -> Mapping[float, float]:
        """The row for ``frames`` fused frames. Bursts longer than the longest measured row use
        that row (fused distances settle as frames are added, and it is the strictest); sizes
        between measured rows use the next smaller one, which is stricter."""
        n = max(int(frames), 1)
        measured = [k for k in self.by_frames if k <= n]
        return self.by_frames[max(measured) if measured else min(self.by_frames)]

    def at(self, frames: int, far: float | None = None) -> float:
        far = self.default_far if far is None else far
        row = self.row(frames)
        for key, value in row.items():
            if abs(key - far) <= 1e-12 * max(1.0, far):
                return value
        raise KeyError(f"no threshold at FAR {far} for {frames} frames; the table has {self.fars()}")

    def by_frames_at(self, far: float | None = None) -> dict[int, float]:
        return {n: self.at(n, far) for n in sorted(self.by_frames)}


@dataclass(frozen=True)
class Threshold:
    """The threshold in force for one request, by the number of usable frames."""

    table: ThresholdTable | None  # None only when a distance is configured (DEFAULT_THRESHOLD)
    source: Source
    target_far: float | None = None  # the FAR whose row applies (None for a raw distance)
    distance: float | None = None  # a raw distance that applies to every burst size

    def __post_init__(self) -> None:
        if (self.distance is None) == (self.target_far is None):
            raise ValueError("a threshold is either a target FAR of the table or a raw distance")
        if self.target_far is not None and self.table is None:
            raise ValueError("a target FAR needs the model's threshold table")

    @classmethod
    def resolve(
        cls, table: ThresholdTable | None, *, stored_distance: float | None, stored_far: float | None, configured: float | None = None
    ) -> Threshold:
        """An admin's stored choice, else a configured distance, else the model's default FAR."""
        if stored_far is not None:
            return cls(table, "target_far", target_far=stored_far)
        if stored_distance is not None:
            return cls(table, "distance", distance=stored_distance)
        if configured is not None:
            return cls(table, "configured", distance=configured)
        if table is None:
            raise ThresholdTableError("no threshold: the model carries no burst thresholds and DEFAULT_THRESHOLD is not set")
        return cls(table, "default", target_far=table.default_far)

    def for_frames(self, frames: int) -> float:
        if self.distance is not None:
            return self.distance
        assert self.table is not None  # checked in __post_init__
        return self.table.at(frames, self.target_far)

    def by_frames(self) -> dict[int, float]:
        sizes = sorted(self.table.by_frames) if self.table is not None else [1]
        return {n: self.for_frames(n) for n in sizes}
