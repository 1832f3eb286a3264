"""The decision: grant or deny a fused burst, from its scored matches and the threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Reason = Literal["match", "no_match", "no_templates", "no_usable_frames"]


@dataclass(frozen=True)
class Match:
    person_id: int
    distance: float


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: Reason
    threshold: float
    best: Match | None = None
    second: Match | None = None  # the nearest other person (for the margin)

    @property
    def margin(self) -> float | None:
        """How much nearer the best person is than the next one (None without both)."""
        if self.best is None or self.second is None:
            return None
        return self.second.distance - self.best.distance

    @property
    def person_id(self) -> int | None:
        """The granted person, or None."""
        return self.best.person_id if self.granted and self.best is not None else None


def within(distance: float, threshold: float) -> bool:
    """The one comparison of the product: a distance equal to the threshold is accepted."""
    return distance <= threshold


def best_per_person(matches: Sequence[Match]) -> list[Match]:
    """Nearest first, one entry per person (the nearest of their templates)."""
    nearest: dict[int, Match] = {}
    for m in matches:
        if m.person_id not in nearest or m.distance < nearest[m.person_id].distance:
            nearest[m.person_id] = m
    return sorted(nearest.values(), key=lambda m: (m.distance, m.person_id))


def decide(matches: Sequence[Match], threshold: float) -> Decision:
    """Granted to the nearest person when they are within the threshold; an unknown face is
    denied, never matched to whoever happens to be nearest."""
    ranked = best_per_person(matches)
    if not ranked:
        return Decision(False, "no_templates", threshold)
    best = ranked[0]
    second = ranked[1] if len(ranked) > 1 else None
    granted = within(best.distance, threshold)
    return Decision(granted, "match" if granted else "no_match", threshold, best, second)


def no_usable_frames(threshold: float) -> Decision:
    return Decision(False, "no_usable_frames", threshold)
