"""Evaluate an attribute model's served file (LiteRT) on a held-out split.

    python -m training.attributes.evaluate model_store/<package> --data var/attr/fer --split PrivateTest
    python -m training.attributes.evaluate model_store/<package> --data var/attr/utkface --split test

Expression: accuracy on every photo of the split and on the photos Face Mesh found a face in,
per-class recall and precision, the confusion matrix (rows: true class). Gender: accuracy,
by race group and by age band; age: mean absolute error, by age band and by race group.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.vision.attributes import EXPRESSIONS
from app.vision.litert import LiteRTModel
from training.attributes.data import UTK_RACES, age_band
from training.attributes.train import AttributeData, load_attribute_data

BATCH = 64


def predict(model: LiteRTModel, crops: np.ndarray) -> np.ndarray:
    return np.concatenate([model(np.asarray(crops[i : i + BATCH], np.float32)) for i in range(0, len(crops), BATCH)])


def expression_metrics(probabilities: np.ndarray, labels: np.ndarray, detected: np.ndarray) -> dict[str, Any]:
    predicted = probabilities.argmax(axis=1)
    k = len(EXPRESSIONS)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    recall = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    precision = confusion.diagonal() / np.maximum(confusion.sum(axis=0), 1)
    correct = predicted == labels
    return {
        "photos": len(labels),
        "accuracy": float(correct.mean()),
        "accuracy_face_found": float(correct[detected].mean()) if detected.any() else None,
        "photos_face_found": int(detected.sum()),
        "accuracy_median_points": float(correct[~detected].mean()) if (~detected).any() else None,
        "balanced_accuracy": float(recall.mean()),
        "per_class": {
            name: {"photos": int(confusion[i].sum()), "recall": float(recall[i]), "precision": float(precision[i])}
            for i, name in enumerate(EXPRESSIONS)
        },
        "labels": list(EXPRESSIONS),
        "confusion": confusion.tolist(),
    }


def gender_age_metrics(outputs: np.ndarray, data: AttributeData, rows: np.ndarray) -> dict[str, Any]:
    female_p, age_pred = outputs[:, 0], outputs[:, 1]
    gender, age, race = data.targets["female"][rows], data.targets["age"][rows], data.targets["race"][rows]
    known = gender >= 0
    correct = (female_p >= 0.5).astype(np.int64) == gender
    error = np.abs(age_pred - age)
    bands = np.array([age_band(a) for a in age])

    def group(mask: np.ndarray) -> dict[str, Any]:
        g = mask & known
        return {
            "photos": int(mask.sum()),
            "gender_accuracy": float(correct[g].mean()) if g.any() else None,
            "age_mae": float(error[mask].mean()) if mask.any() else None,
        }

    return {
        "photos": len(rows),
        "gender_photos": int(known.sum()),
        "gender_accuracy": float(correct[known].mean()),
        "age_mae": float(error.mean()),
        "age_median_abs_error": float(np.median(error)),
        "by_race": {name: group(race == i) for i, name in enumerate(UTK_RACES)},
        "by_age_band": {band: group(bands == band) for band in sorted(set(bands), key=lambda b: int(b.split("-")[0].rstrip("+")))},
        "face_found": group(data.detected[rows]),
    }


def evaluate(package_file: Path, task: str, data: AttributeData, split: str, threads: int = 2) -> dict[str, Any]:
    rows = data.rows(split)
    if len(rows) == 0:
        raise ValueError(f"no photos in split {split!r}")
    outputs = predict(LiteRTModel(Path(package_file), num_threads=threads), data.crops[rows])
    if task == "expression":
        result = expression_metrics(outputs, data.targets["expression"][rows], data.detected[rows])
    else:
        result = gender_age_metrics(outputs, data, rows)
    return {"split": split, **result}


def main(argv: Sequence[str] | None = None) -> None:
    from app.vision.manifest import read_attributes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    manifest = read_attributes(args.package)
    data = load_attribute_data(manifest.task, args.data)
    result = evaluate(args.package / manifest.serving_file, manifest.task, data, args.split)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
