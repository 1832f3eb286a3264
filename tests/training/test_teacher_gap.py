"""``training.evaluate teacher-gap``: a student's distance to its teacher on a run's own groups of photos."""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.test_distill import run_args, write_tiny_data
from training import distill
from training.eval.cli import main as evaluate


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Path, Path, Path]]:
    data = write_tiny_data(tmp_path_factory.mktemp("data"), 64)
    out = tmp_path_factory.mktemp("runs") / "run"
    distill.distill(distill.parse_args(run_args(data, out, "distill", 1)))
    return out, data


def test_groups_are_the_runs_own_and_distances_are_the_models(tiny_run: tuple[Path, tuple[Path, Path, Path]], tmp_path: Path) -> None:
    run, (_, cache_dir, _) = tiny_run
    report = evaluate(["teacher-gap", "--run", str(run), "--model", str(run / "final.keras"), "--out", str(tmp_path / "gap")])
    groups = {g["group"]: g for g in report["groups"]}
    assert list(groups) == ["trained people", "trained unlabeled: unlabeled", "dev people", "held-out people"]
    split = json.loads((run / "split.json").read_text())
    config = json.loads((run / "config.json").read_text())
    # 12 people x 3 photos: the held-out, dev and trained people are the run's, every photo labelled.
    assert groups["held-out people"]["people"] == len(split["val"]) and groups["held-out people"]["photos"] == 3 * len(split["val"])
    assert groups["dev people"]["people"] == config["dev_identities"]
    assert groups["trained people"]["people"] == config["train_identities"]
    # 10 unlabeled photos, one without a teacher label.
    assert groups["trained unlabeled: unlabeled"]["photos"] == 9 and "student_accuracy" not in groups["trained unlabeled: unlabeled"]
    # The distance is the model's own: recomputed here on the held-out crops.
    from training.prepare import CropCache

    cache = CropCache.load(cache_dir)
    rows = np.flatnonzero(np.isin(cache.identities, split["val"]))
    model = keras.models.load_model(run / "final.keras", compile=False)
    vectors = np.asarray(model(np.asarray(cache.crops[rows], np.float32), training=False))
    labels = distill.load_data(distill.parse_args(run_args(tiny_run[1], run, "distill", 1)), None).teacher[rows]
    expected = float(np.mean(1 - np.sum(vectors * labels, axis=1)))
    assert groups["held-out people"]["distance_to_teacher"] == pytest.approx(expected, abs=1e-4)
    # The teacher's own vectors are well separated by person (each is its person's direction plus noise).
    assert groups["held-out people"]["teacher_accuracy"] == 1.0
    assert re.search(r"^\| held-out people +\| 9 \(3 people\) +\| 0\.\d{4} ", (tmp_path / "gap" / "report.md").read_text(), re.M)


def test_refuses_a_run_whose_split_its_config_does_not_rebuild(tiny_run: tuple[Path, tuple[Path, Path, Path]], tmp_path: Path) -> None:
    run, _ = tiny_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_text((run / "config.json").read_text())
    split = json.loads((run / "split.json").read_text())
    (copy / "split.json").write_text(json.dumps({**split, "val": split["val"][1:]}))
    with pytest.raises(ValueError, match="does not match"):
        evaluate(["teacher-gap", "--run", str(copy), "--model", str(run / "final.keras"), "--out", str(tmp_path / "gap")])
