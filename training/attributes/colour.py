"""Why the expression model converts its input to grayscale: a measurement.

FER2013 holds only grayscale photos, while the service's crops are colour. A model that took
the colour crop as it is would see, at serving, inputs it never saw in training. This takes a
trained expression model, builds its twin without the grayscale step (the same weights, the
colour crop passed straight through), and compares on colour face crops (UTKFace's test
split by default) the twin's answer for each colour crop with its answer for the same crop in
grayscale. The shipped model's two answers are identical by construction.

    python -m training.attributes.colour runs/expression --data var/attr/utkface --out docs/eval/attributes/colour.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from training.attributes.model import LUMA

BATCH = 64


def colour_twin(model: keras.Model) -> keras.Model:
    """A copy of ``model`` whose grayscale layer passes colour through (identity weights)."""
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    twin.get_layer("grayscale").set_weights([np.eye(3, dtype=np.float32)[None, None]])
    return twin


def to_grey(crops: np.ndarray) -> np.ndarray:
    luma = crops.astype(np.float32) @ np.array(LUMA, np.float32)
    return np.repeat(luma[..., None], 3, axis=-1)


def probabilities(model: keras.Model, crops: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.asarray(model(np.asarray(crops[i : i + BATCH], np.float32), training=False)["expression"]) for i in range(0, len(crops), BATCH)]
    )


def measure(model: keras.Model, crops: np.ndarray) -> dict[str, float]:
    twin = colour_twin(model)
    colour, grey = probabilities(twin, crops), probabilities(twin, to_grey(crops))
    shipped_colour, shipped_grey = probabilities(model, crops), probabilities(model, to_grey(crops))
    return {
        "crops": len(crops),
        "colour_input_top_class_changes": float((colour.argmax(1) != grey.argmax(1)).mean()),
        "colour_input_mean_total_variation": float(0.5 * np.abs(colour - grey).sum(1).mean()),
        "grayscale_input_top_class_changes": float((shipped_colour.argmax(1) != shipped_grey.argmax(1)).mean()),
        "grayscale_input_max_abs_difference": float(np.abs(shipped_colour - shipped_grey).max()),
    }


def main(argv: Sequence[str] | None = None) -> None:
    from training.attributes.train import load_attribute_data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="a colour crop cache (UTKFace)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    model = keras.models.load_model(args.run / "best.keras", compile=False)
    data = load_attribute_data("gender_age", args.data)
    rows = data.rows(args.split)[: args.limit]
    result = {"run": str(args.run), "data": str(args.data), "split": args.split, **measure(model, np.asarray(data.crops[rows]))}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
