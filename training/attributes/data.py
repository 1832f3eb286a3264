"""The attribute datasets: FER2013 (expression) and UTKFace (gender, age), read into
:class:`training.datasets.ImageRecord` rows and aligned once by :func:`training.prepare.prepare`.

FER2013 comes from a JPEG copy (the public repository ``RecepTahirGunlu/Duygu-Tanima``:
``train/``, ``validation/``, ``test/`` by class). Only the original files count, named
``Training_<n>.jpg``, ``PublicTest_<n>.jpg`` or ``PrivateTest_<n>.jpg``; the copy's augmented
``disgust`` duplicates (``<original>.jpg<k>.jpg``) are skipped. The split is the file's prefix,
not the folder: Training 28,709 / PublicTest 3,589 (tuning) / PrivateTest 3,589 (the test set).

UTKFace's split is fixed by a hash of the file name (no identity labels exist, so a split by
person is impossible): ``test`` 15%, ``val`` 10%, ``train`` the rest; see :func:`utk_split`.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.vision.attributes import EXPRESSIONS
from training.datasets import ImageRecord

FER_SPLITS = ("Training", "PublicTest", "PrivateTest")
FER_ORIGINAL = re.compile(r"^(Training|PublicTest|PrivateTest)_\d+\.jpg$")
FER_COUNTS = {"Training": 28_709, "PublicTest": 3_589, "PrivateTest": 3_589}

UTK_RACES = ("White", "Black", "Asian", "Indian", "Other")
UTK_GENDERS = ("male", "female")
UTK_TEST_SHARE, UTK_VAL_SHARE = 0.15, 0.10
AGE_BANDS = ((5, 12), (13, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 200))


def fer_records(root: Path) -> Iterator[ImageRecord]:
    """FER2013's original photos under ``root/<folder>/<class>/``: identity = class, source = split.

    The record's ``identity`` carries the expression label (these photos have no person
    labels) and ``source`` the official split taken from the file name.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"FER2013 folder {root} is not a directory")
    found = 0
    for path in sorted(root.glob("*/*/*.jpg")):
        label = path.parent.name.lower()
        match = FER_ORIGINAL.match(path.name)
        if match is None:
            continue
        if label not in EXPRESSIONS:
            raise ValueError(f"{path}: unknown expression folder {path.parent.name!r}; expected one of {EXPRESSIONS}")
        found += 1
        yield ImageRecord(path, label, match.group(1))
    if found == 0:
        raise FileNotFoundError(f"no FER2013 originals (Training_/PublicTest_/PrivateTest_<n>.jpg) under {root}/<folder>/<class>/")


@dataclass(frozen=True)
class UtkLabel:
    age: int
    gender: int | None  # 0 male, 1 female
    race: int | None  # index into UTK_RACES


def read_utk_labels(csv_path: Path) -> dict[str, UtkLabel]:
    with Path(csv_path).open(newline="") as handle:
        return {
            row["file"]: UtkLabel(
                age=int(row["age"]),
                gender=int(row["gender"]) if row["gender"] != "" else None,
                race=int(row["race"]) if row["race"] != "" else None,
            )
            for row in csv.DictReader(handle)
        }


def utk_split(file_name: str) -> str:
    """``train``, ``val`` or ``test`` from the sha1 of the file name: fixed, reproducible, documented."""
    bucket = int(hashlib.sha1(file_name.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    if bucket < UTK_TEST_SHARE:
        return "test"
    if bucket < UTK_TEST_SHARE + UTK_VAL_SHARE:
        return "val"
    return "train"


def utk_records(root: Path) -> Iterator[ImageRecord]:
    """UTKFace's labelled photos: identity = file name (the labels key), source = split."""
    root = Path(root)
    labels = read_utk_labels(root / "labels.csv")
    for name in sorted(labels):
        path = root / "images" / name
        if path.is_file():
            yield ImageRecord(path, name, utk_split(name))


def age_band(age: float) -> str:
    for low, high in AGE_BANDS:
        if low <= age <= high:
            return f"{low}-{high}" if high < 200 else f"{low}+"
    return "other"
