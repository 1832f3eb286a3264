"""A run directory's logs, shared by the trainers (``training.distill`` on TensorFlow, ``training.distill_torch`` on torch).

Nothing here imports a deep-learning framework: a GPU machine with torch and no TensorFlow uses it too.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` under the file's own header (a run resumed by other code keeps its columns aligned)."""
    header = None
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), None)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header or list(row), restval="", extrasaction="ignore")
        if header is None:
            writer.writeheader()
        writer.writerow(row)


def jsonable(value: Any) -> Any:
    """A CLI argument as JSON: paths as strings, lists element by element."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def improves(scores: dict[str, float], best: dict[str, float] | None) -> bool:
    """Whether dev ``scores`` beat the ``best`` so far: higher dev accuracy, a tie to the lower distance to the teacher.

    The dev accuracy moves in steps of one pair in a few thousand, so late checkpoints often tie an
    early one exactly; the distance to the teacher (what training lowers) then decides, where
    the first of the tied checkpoints used to keep the place.
    """
    if best is None:
        return True
    if scores["dev_accuracy"] != best["dev_accuracy"]:
        return scores["dev_accuracy"] > best["dev_accuracy"]
    return scores["dev_distance_to_teacher"] < best.get("dev_distance_to_teacher", float("inf"))
