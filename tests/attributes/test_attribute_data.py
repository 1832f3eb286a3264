"""Attribute datasets and metrics: label mapping, splits, class weights, hand-checked metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.vision.attributes import EXPRESSIONS
from training.attributes.data import age_band, fer_records, utk_records, utk_split
from training.attributes.evaluate import expression_metrics
from training.attributes.train import class_weights


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_fer_reader_keeps_originals_and_takes_the_split_from_the_name(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "happy" / "Training_10.jpg")
    touch(tmp_path / "train" / "disgust" / "Training_11.jpg")
    touch(tmp_path / "train" / "disgust" / "Training_11.jpg3.jpg")  # an augmented copy: not FER2013
    touch(tmp_path / "validation" / "sad" / "PrivateTest_5.jpg")  # the folder is not the split
    touch(tmp_path / "test" / "Surprise" / "PublicTest_7.jpg")
    touch(tmp_path / "train" / "angry" / "Training_12.jpg")
    touch(tmp_path / "train" / "surprise" / "Training_12.jpg")  # same name, another photo: both kept
    touch(tmp_path / "train" / "happy" / "notes.txt")
    records = sorted(fer_records(tmp_path), key=lambda r: str(r.path))
    got = {(r.path.parent.name, r.path.name, r.identity, r.source) for r in records}
    assert got == {
        ("happy", "Training_10.jpg", "happy", "Training"),
        ("disgust", "Training_11.jpg", "disgust", "Training"),
        ("sad", "PrivateTest_5.jpg", "sad", "PrivateTest"),
        ("Surprise", "PublicTest_7.jpg", "surprise", "PublicTest"),
        ("angry", "Training_12.jpg", "angry", "Training"),
        ("surprise", "Training_12.jpg", "surprise", "Training"),
    }


def test_fer_reader_refuses_unknown_classes_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no FER2013 originals"):
        list(fer_records(tmp_path))
    touch(tmp_path / "train" / "contempt" / "Training_1.jpg")
    with pytest.raises(ValueError, match="unknown expression folder"):
        list(fer_records(tmp_path))


def test_utk_split_is_fixed_and_near_its_shares() -> None:
    names = [f"{20 + i % 60}_{i % 2}_{i % 5}_2017{i:09d}.jpg" for i in range(20_000)]
    splits = [utk_split(n) for n in names]
    assert splits == [utk_split(n) for n in names]  # a pure function of the name
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["test"] - 0.15) < 0.01 and abs(share["val"] - 0.10) < 0.01 and abs(share["train"] - 0.75) < 0.01


def test_utk_records_read_labels(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("file,age,gender,race\n30_1_2_x.jpg,30,1,2\n39_1_y.jpg,39,,\nmissing.jpg,5,0,0\n")
    touch(tmp_path / "images" / "30_1_2_x.jpg")
    touch(tmp_path / "images" / "39_1_y.jpg")
    records = list(utk_records(tmp_path))
    assert [r.identity for r in records] == ["30_1_2_x.jpg", "39_1_y.jpg"]  # a listed file that is absent is skipped
    assert {r.source for r in records} <= {"train", "val", "test"}


@pytest.mark.parametrize(
    ("age", "band"), [(5, "5-12"), (12, "5-12"), (13, "13-19"), (29, "20-29"), (69, "60-69"), (70, "70+"), (116, "70+")]
)
def test_age_bands(age: int, band: str) -> None:
    assert age_band(age) == band


def test_class_weights_balance_by_power() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    none = class_weights(labels, 2, 0.0)
    assert np.allclose(none, 1.0)
    full = class_weights(labels, 2, 1.0)
    # Fully balanced: each class carries the same total weight, and the mean weight per photo is 1.
    assert full[0] * 90 == pytest.approx(full[1] * 10)
    assert full[labels].mean() == pytest.approx(1.0)
    half = class_weights(labels, 2, 0.5)
    assert half[1] / half[0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no training photo"):
        class_weights(np.array([0, 0]), 2, 0.5)


def test_expression_metrics_by_hand() -> None:
    k = len(EXPRESSIONS)
    labels = np.array([0, 0, 3, 3, 3, 6])
    predicted = np.array([0, 3, 3, 3, 6, 6])
    probabilities = np.eye(k)[predicted] * 0.9 + 0.1 / k
    detected = np.array([True, True, True, False, True, True])
    m = expression_metrics(probabilities, labels, detected)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["accuracy_face_found"] == pytest.approx(3 / 5)  # the undetected photo was right
    assert m["accuracy_median_points"] == pytest.approx(1.0)
    assert m["per_class"]["angry"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["happy"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["happy"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["neutral"]["precision"] == pytest.approx(0.5)
    assert m["confusion"][3][6] == 1 and m["confusion"][0][3] == 1 and sum(map(sum, m["confusion"])) == 6
    # Balanced accuracy: mean recall over all seven classes (absent classes count 0).
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3 + 1.0) / k)
