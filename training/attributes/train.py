"""Train an attribute model on a prepared crop cache (``training.attributes.prepare``).

    python -m training.attributes.train expression --data var/attr/fer --out runs/expression
    python -m training.attributes.train gender_age --data var/attr/utkface --out runs/gender_age

- **expression**: FER2013's Training split; PublicTest picks the best epoch (``best.keras``);
  PrivateTest is never looked at here. Class imbalance (disgust is 1.5% of Training) is
  handled by weighting each class's loss by ``(n_max / n_class) ** --class-weight-power``
  (0: none, 1: fully balanced), with label smoothing; the evaluation reports per-class recall.
- **gender_age**: UTKFace's ``train`` split, ``val`` for the best epoch; a sigmoid gender head
  (binary cross-entropy) and an age head (L1 on years / 100), photos without a gender label
  train the age head only.

The whole network trains (BatchNorm recalibrated on the task's crops first, then in training
mode), from the shared ImageNet weights, with door-camera augmentation. The run directory holds
``config.json``, ``history.csv`` (per epoch), ``backup/`` (Keras BackupAndRestore: the same
command resumes an interrupted run from its last finished epoch), ``best.keras`` and
``final.keras``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import keras
import numpy as np

from app.vision.attributes import EXPRESSIONS
from training.attributes.data import read_utk_labels
from training.attributes.model import AGE_SCALE, Task, build_attribute_model, build_preprocess
from training.model import recalibrate_batchnorm

SPLITS = {"expression": ("Training", "PublicTest", "PrivateTest"), "gender_age": ("train", "val", "test")}


@dataclass(frozen=True)
class AttributeData:
    """A prepared cache with its labels: ``targets`` maps output name -> per-row array."""

    crops: np.ndarray
    split: np.ndarray
    detected: np.ndarray
    paths: list[str]
    targets: dict[str, np.ndarray]

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_attribute_data(task: Task, directory: Path, utk_labels: Path | None = None) -> AttributeData:
    directory = Path(directory)
    if not (directory / "crops.npy").exists():
        raise FileNotFoundError(f"no crop cache in {directory}: run `python -m training.attributes.prepare` first")
    with (directory / "index.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    crops = np.load(directory / "crops.npy", mmap_mode="r")
    if len(rows) != len(crops):
        raise ValueError(f"{directory}: index.csv has {len(rows)} rows for {len(crops)} crops")
    targets: dict[str, np.ndarray]
    if task == "expression":
        unknown = {r["label"] for r in rows} - set(EXPRESSIONS)
        if unknown:
            raise ValueError(f"{directory}: labels {sorted(unknown)} are not expressions")
        targets = {"expression": np.array([EXPRESSIONS.index(r["label"]) for r in rows], dtype=np.int64)}
    else:
        labels = read_utk_labels(utk_labels or Path(rows[0]["path"]).parent.parent / "labels.csv")
        ages = np.array([labels[r["label"]].age for r in rows], dtype=np.float32)
        gender = np.array([-1 if labels[r["label"]].gender is None else labels[r["label"]].gender for r in rows], dtype=np.int64)
        race = np.array([-1 if labels[r["label"]].race is None else labels[r["label"]].race for r in rows], dtype=np.int64)
        targets = {"age": ages, "female": gender, "race": race}
    return AttributeData(
        crops=crops,
        split=np.array([r["split"] for r in rows]),
        detected=np.array([r["detected"] == "1" for r in rows]),
        paths=[r["path"] for r in rows],
        targets=targets,
    )


def augmentation(seed: int) -> A.Compose:
    """Camera-like changes of an aligned crop: mirror, small shifts and turns, light, blur."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-10, 10), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.6),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.Downscale(scale_range=(0.4, 0.8))], p=0.2),
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.1, 0.3), hole_width_range=(0.1, 0.3), fill=0, p=0.3),
        ],
        seed=seed,
    )


def class_weights(labels: np.ndarray, classes: int, power: float) -> np.ndarray:
    """Per-class loss weight ``(n_max / n_c) ** power``, scaled to mean 1 over the training photos."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"a class has no training photo: counts {counts.tolist()}")
    weights = (counts.max() / counts) ** power
    return weights / (weights[labels].mean())


class Batches(keras.utils.PyDataset):
    """Augmented training batches; the epoch's order comes from (seed, epoch)."""

    def __init__(self, task: Task, data: AttributeData, rows: np.ndarray, batch: int, seed: int, weights: np.ndarray | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.task, self.data, self.rows, self.batch, self.seed, self.weights = task, data, rows, batch, seed, weights
        self.epoch = 0
        self.order = self._order()
        self.augment = augmentation(seed)

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.rows)

    def __len__(self) -> int:
        return len(self.rows) // self.batch

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        rows = np.sort(self.order[index * self.batch : (index + 1) * self.batch])
        x = np.stack([self.augment(image=np.asarray(c))["image"] for c in self.data.crops[rows]]).astype(np.float32)
        return (x, *targets_for(self.task, self.data, rows, self.weights))


def targets_for(task: Task, data: AttributeData, rows: np.ndarray, weights: np.ndarray | None = None) -> tuple[dict, dict]:
    if task == "expression":
        y = data.targets["expression"][rows]
        w = weights[y] if weights is not None else np.ones(len(rows), np.float32)
        return {"expression": keras.utils.to_categorical(y, len(EXPRESSIONS))}, {"expression": w.astype(np.float32)}
    gender = data.targets["female"][rows]
    return (
        {"female": np.clip(gender, 0, 1).astype(np.float32)[:, None], "age": (data.targets["age"][rows] / AGE_SCALE)[:, None]},
        {"female": (gender >= 0).astype(np.float32), "age": np.ones(len(rows), np.float32)},
    )


class EpochLog(keras.callbacks.Callback):
    def __init__(self, path: Path, steps: int):
        super().__init__()
        self.path, self.steps, self.started = path, steps, time.time()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if batch % 50 == 0:
            rate = (batch + 1) / max(time.time() - self.started, 1e-9)
            loss = (logs or {}).get("loss", float("nan"))
            print(f"  step {batch + 1}/{self.steps} loss {loss:.4f} ({rate:.2f} steps/s)", flush=True)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {
            "epoch": epoch + 1,
            "seconds": round(time.time() - self.started, 1),
            **{k: round(float(v), 5) for k, v in (logs or {}).items()},
        }
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        print(json.dumps(row), flush=True)


def compile_model(task: Task, model: keras.Model, schedule: keras.optimizers.schedules.LearningRateSchedule, smoothing: float) -> None:
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=1e-4, clipnorm=2.0)
    if task == "expression":
        model.compile(
            optimizer=optimizer,
            loss={"expression": keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)},
            metrics={"expression": [keras.metrics.CategoricalAccuracy(name="accuracy")]},
        )
    else:
        model.compile(
            optimizer=optimizer,
            loss={"female": keras.losses.BinaryCrossentropy(), "age": keras.losses.MeanAbsoluteError()},
            loss_weights={"female": 1.0, "age": 4.0},
            metrics={"female": [keras.metrics.BinaryAccuracy(name="accuracy")], "age": [keras.metrics.MeanAbsoluteError(name="mae")]},
        )


def train(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task: Task = args.task
    data = load_attribute_data(task, args.data)
    train_split, val_split, _ = SPLITS[task]
    train_rows, val_rows = data.rows(train_split), data.rows(val_split)
    if args.limit:
        pick = np.random.default_rng(args.seed)
        train_rows = np.sort(pick.choice(train_rows, min(args.limit, len(train_rows)), replace=False))
        val_rows = np.sort(pick.choice(val_rows, min(max(args.limit // 4, 8), len(val_rows)), replace=False))
    train_rows = train_rows if task == "expression" else train_rows[data.targets["age"][train_rows] > 0]
    weights = (
        class_weights(data.targets["expression"][train_rows], len(EXPRESSIONS), args.class_weight_power) if task == "expression" else None
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(
        train_photos=len(train_rows), val_photos=len(val_rows), class_weights=None if weights is None else weights.round(4).tolist()
    )
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    keras.utils.set_random_seed(args.seed)
    model = build_attribute_model(task, args.input_size, dropout=args.dropout)
    backup = out / "backup"
    if args.init_from is not None:
        # A continuation: every weight (BatchNorm statistics included) from an earlier run of this task.
        model.set_weights(keras.models.load_model(args.init_from, compile=False).get_weights())
        print(f"initialised from {args.init_from}", flush=True)
    elif not backup.exists():  # a fresh run: BatchNorm statistics of this task's crops (a resumed run restores its own)
        sample = np.sort(
            np.random.default_rng(args.seed).choice(train_rows, size=min(args.recalibrate_images, len(train_rows)), replace=False)
        )
        prepared = build_preprocess(task, args.input_size).predict(np.asarray(data.crops[sample], np.float32), verbose=0)
        print(f"recalibrated {recalibrate_batchnorm(model, prepared)} BatchNorm layers on {len(sample)} crops", flush=True)
    batches = Batches(task, data, train_rows, args.batch, args.seed, weights)
    steps = len(batches) * args.epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(steps - args.warmup_steps, 1), warmup_target=args.lr, warmup_steps=args.warmup_steps, alpha=0.01
    )
    compile_model(task, model, schedule, args.label_smoothing)
    x_val = np.asarray(data.crops[val_rows], np.float32)
    y_val, w_val = targets_for(task, data, val_rows)
    monitor = "val_accuracy" if task == "expression" else "val_loss"
    model.fit(
        batches,
        epochs=args.epochs,
        validation_data=(x_val, y_val, w_val),
        verbose=0,
        callbacks=[
            keras.callbacks.BackupAndRestore(str(backup)),
            keras.callbacks.ModelCheckpoint(
                str(out / "best.keras"), monitor=monitor, mode="max" if task == "expression" else "min", save_best_only=True
            ),
            EpochLog(out / "history.csv", len(batches)),
        ],
    )
    model.save(out / "final.keras")
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=("expression", "gender_age"))
    p.add_argument("--data", type=Path, required=True, help="a cache from training.attributes.prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--input-size", type=int, default=64, help="working size inside the model (the crop is resized to it)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--class-weight-power", type=float, default=0.5)
    p.add_argument("--recalibrate-images", type=int, default=1024)
    p.add_argument("--init-from", type=Path, default=None, help="continue from this run's .keras (same task) instead of ImageNet")
    p.add_argument("--limit", type=int, default=None, help="a random N training photos (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch < 1 or not math.isfinite(args.lr) or args.lr <= 0:
        p.error("epochs, batch and lr must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    print(f"done: {train(parse_args(argv))}", flush=True)


if __name__ == "__main__":
    main()
