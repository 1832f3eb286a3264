"""Package an attribute training run as ``model_store/<model_id>/``: the served LiteRT file
(crop and mirror averaged inside it) and a manifest with the package contract, how it was
trained, and its evaluation on the validation and test splits (measured on the LiteRT file).

    python -m training.attributes.export runs/expression --data var/attr/fer --store model_store --figures docs
    python -m training.attributes.export runs/gender_age --data var/attr/utkface --store model_store --figures docs

The TFLite file is checked against the Keras model on real crops before anything is written
(a difference of 1e-4 or more refuses the export). ``--figures`` writes the confusion matrix
(expression) or the error by group (gender and age) as PNG into that folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from app.vision import manifest as contract
from app.vision.align import ALIGNMENT_VERSION
from app.vision.manifest import FORMAT_VERSION, sha256_file
from training.attributes.evaluate import evaluate
from training.attributes.model import CROP, OUTPUTS, with_mirror
from training.attributes.train import SPLITS, load_attribute_data
from training.evidence import library_versions
from training.export import MAX_TFLITE_DIFF, verify_roundtrip
from training.tflite import to_tflite

SERVING_FILE = "model.tflite"
DATA_NOTES = {
    "expression": "FER2013 (Goodfellow et al., 2013; Kaggle ICML 2013 challenge, research use), the JPEG copy in "
    "github.com/RecepTahirGunlu/Duygu-Tanima, originals only (Training 28,709 / PublicTest 3,589 / PrivateTest 3,589)",
    "gender_age": "UTKFace (Zhang, Song and Qi, 2017; non-commercial research only), ../shared/data/unlabeled/utkface, "
    "split by sha1 of the file name (train 75% / val 10% / test 15%)",
}


def export(run: Path, data_dir: Path, store: Path, figures: Path | None = None, checkpoint: str = "best.keras") -> Path:
    run, store = Path(run), Path(store)
    config = json.loads((run / "config.json").read_text())
    task = config["task"]
    model = keras.models.load_model(run / checkpoint, compile=False)
    served = with_mirror(model, task)
    data = load_attribute_data(task, data_dir)
    train_split, val_split, test_split = SPLITS[task]
    date = dt.datetime.now(dt.UTC)
    staging = store / f".staging-{task}-{date.strftime('%H%M%S%f')}"
    staging.mkdir(parents=True)
    try:
        tflite = staging / SERVING_FILE
        tflite.write_bytes(to_tflite(served))
        probe = data.rows(val_split)[:32]
        diff = verify_roundtrip(served, tflite, np.asarray(data.crops[probe], np.float32))
        if diff >= MAX_TFLITE_DIFF:
            raise ValueError(f"TFLite output differs from Keras by {diff:.2e} (limit {MAX_TFLITE_DIFF:.0e}): export refused")
        sha = sha256_file(tflite)
        model_id = f"facegate-{task.replace('_', '-')}-mnv2-{config['input_size']}-{date.strftime('%Y%m%d')}-{sha[:8]}"
        evaluation: dict[str, Any] = {
            "validation": evaluate(tflite, task, data, val_split),
            "test": evaluate(tflite, task, data, test_split),
            "measured_on": "the served LiteRT file (crop and mirror averaged), by training.attributes.evaluate",
        }
        summary = json.loads((Path(data_dir) / "summary.json").read_text())
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": "attributes",
            "task": task,
            "model_id": model_id,
            "created": date.isoformat(timespec="seconds"),
            "files": {SERVING_FILE: contract.file_entry(tflite).model_dump()},
            "serving_file": SERVING_FILE,
            "input": {"size": CROP, "channels": 3, "color": "RGB", "dtype": "float32", "range": [0.0, 255.0]},
            "preprocessing": "the service's aligned 112x112 RGB crop, 0..255; grayscale (expression), resizing to the "
            "working size and scaling happen inside the model; the output averages the crop and its mirror image",
            "alignment_version": ALIGNMENT_VERSION,
            "outputs": OUTPUTS[task],
            "architecture": {"backbone": "MobileNetV2 1.0 (ImageNet weights from ../shared/weights)", "input_size": config["input_size"]},
            "data": {
                "source": DATA_NOTES[task],
                "splits": {"train": train_split, "validation (best epoch)": val_split, "test (reported)": test_split},
                "alignment": summary,
            },
            "training": {k: config.get(k) for k in ("epochs", "batch", "lr", "dropout", "label_smoothing", "class_weight_power", "seed")}
            | {"train_photos": config.get("train_photos"), "class_weights": config.get("class_weights"), "checkpoint": checkpoint},
            "evaluation": evaluation,
            "tflite_max_abs_diff": diff,
            "library_versions": library_versions(),
        }
        contract.write(staging, json.loads(json.dumps(manifest, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))))
        final = store / model_id
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if figures is not None:
        from training.attributes.figures import draw

        draw(task, evaluation["test"], Path(figures))
    return final


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the prepared cache the run trained on")
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--figures", type=Path, default=None)
    parser.add_argument("--checkpoint", default="best.keras")
    args = parser.parse_args(argv)
    final = export(args.run, args.data, args.store, args.figures, args.checkpoint)
    manifest = contract.read_attributes(final)
    print(f"exported {manifest.model_id} to {final}")
    print(json.dumps(manifest.extra("evaluation")["test"], indent=1)[:2000])


if __name__ == "__main__":
    main()
