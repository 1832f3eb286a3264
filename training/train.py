"""Train the embedder with the method's pair loss on a prepared crop cache.

    python -m training.train --cache var/crops/celeba --out runs/main --epochs 60

Two ways to feed the model, same batches and loss:

- ``--trunk-cache 0`` (default on a GPU): every step augments fresh crops and runs the whole
  network. On this project's 2-core CPU that is ~30 images/s.
- ``--trunk-cache K`` (default on a CPU): the layers below ``--trainable-from`` are frozen, so
  their output for a given input never changes. Each training crop is augmented K times up
  front and the frozen trunk's features cached (``trunk_cache.npy``); every step then picks
  one of the K variants per image and runs only the trainable top. Steps cost ~1/5 of a full
  step, at the price of K fixed augmentations per image instead of endless fresh ones.

Outputs in ``--out``: ``best.keras`` (the full embedder at the best validation loss),
``last.keras`` + ``state.json`` (resume point, written every epoch), ``history.csv`` (every
epoch), ``split.json`` (the held-out identities) and ``config.json``. Run the same command
again after an interruption and it resumes from ``last.keras``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from app.vision.litert import LiteRTModel
from training.data import PairBatches, augmentation, pair_mask, rows_by_identity, split_identities
from training.losses import PairLoss, pair_metrics
from training.model import DEFAULT_WEIGHTS, build_embedder, split_at
from training.prepare import CropCache
from training.tflite import to_tflite


def _augment_rows(crops: np.ndarray, rows: np.ndarray, aug: Any) -> np.ndarray:
    return np.stack([aug(image=np.asarray(crops[r]))["image"] for r in rows]).astype(np.float32)


def image_batches(crops: np.ndarray, batches: PairBatches, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    aug = augmentation(seed)
    for rows in batches:
        yield _augment_rows(crops, rows, aug), batches.mask


def feature_batches(
    features: np.ndarray, batches: PairBatches, row_to_slot: np.ndarray, variants: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cached trunk features of each pair batch, one random cached variant per image.

    ``variants`` limits the choice to the first N cached variants (variant 0 is unaugmented).
    """
    variants = min(variants, features.shape[0]) if variants > 0 else features.shape[0]
    for rows in batches:
        variant = batches.rng.integers(0, variants, size=len(rows))
        yield features[variant, row_to_slot[rows]].astype(np.float32), batches.mask


def fixed_validation(rows_by_id: dict[str, list[int]], bs: int, seed: int, passes: int = 2) -> list[np.ndarray]:
    """The same validation batches every epoch, so validation losses compare across epochs."""
    batches = PairBatches(rows_by_id, bs=bs, seed=seed)
    return [next(batches) for _ in range(passes * batches.steps_per_pass)]


def compute_trunk_cache(
    trunk: keras.Model,
    runner: Callable[[], LiteRTModel],
    crops: np.ndarray,
    rows: np.ndarray,
    variants: int,
    path: Path,
    seed: int,
    batch: int = 64,
) -> np.ndarray:
    """(variants, len(rows), h, w, c) float16 trunk features; variant 0 unaugmented.

    The frozen trunk runs under LiteRT (XNNPACK), ~10x faster than TensorFlow on this CPU.
    ``runner`` hands out that converted trunk, converting it only when a cache is missing.
    """
    shape = (variants, len(rows), *trunk.output.shape[1:])
    done_marker = path.with_suffix(".done.json")
    if path.exists() and done_marker.exists() and json.loads(done_marker.read_text()).get("shape") == list(shape):
        return np.load(path, mmap_mode="r")
    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    aug = augmentation(seed)
    infer = runner()
    with tqdm(total=variants * len(rows), desc="trunk cache", unit="img") as bar:
        for v in range(variants):
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                images = crops[chunk].astype(np.float32) if v == 0 else _augment_rows(crops, chunk, aug)
                features[v, start : start + len(chunk)] = infer(images).astype(np.float16)
                bar.update(len(chunk))
    features.flush()
    np.save(path.with_suffix(".rows.npy"), rows)
    done_marker.write_text(json.dumps({"shape": list(shape)}))
    return np.load(path, mmap_mode="r")


def reuse_trunk_cache(source: Path, name: str, rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Features cached by another run with the same trunk, and a row -> slot map into them.

    Learning-curve runs train on subsets of the main run's identities; recomputing the
    frozen trunk for each would cost more than their training.
    """
    features = np.load(source / f"{name}.npy", mmap_mode="r")
    cached_rows = np.load(source / f"{name}.rows.npy")
    missing = np.setdiff1d(rows, cached_rows)
    if len(missing):
        raise ValueError(f"{source / name} lacks {len(missing)} of this run's rows: it was made for another split")
    slot = np.full(n_rows, -1, dtype=np.int64)
    slot[cached_rows] = np.arange(len(cached_rows))
    return features, slot


class EmbedderCheckpoint(keras.callbacks.Callback):
    """Saves the full embedder on the best validation loss and the resume point every epoch."""

    def __init__(self, out: Path, embedder: keras.Model, shared: keras.Model, best: float):
        super().__init__()
        self.out, self.embedder, self.shared, self.best = out, embedder, shared, best

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if self.shared is not self.model:
            self.shared.set_weights(self.model.get_weights())
        val_loss = float(logs.get("val_loss", math.inf))
        if val_loss < self.best:
            self.best = val_loss
            self.embedder.save(self.out / "best.keras")
        self.model.save(self.out / "last.keras.tmp.keras")
        (self.out / "last.keras.tmp.keras").replace(self.out / "last.keras")
        (self.out / "state.json").write_text(json.dumps({"epoch": epoch + 1, "best_val_loss": self.best, "time": time.time()}))


class ProgressLog(keras.callbacks.Callback):
    """One readable line per epoch, flushed, for `tail -f` on a long run."""

    def __init__(self, path: Path, epochs: int):
        super().__init__()
        self.path, self.epochs, self.started = path, epochs, time.time()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        fields = " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()) if isinstance(v, float))
        with self.path.open("a") as handle:
            handle.write(
                f"{time.strftime('%H:%M:%S')} epoch {epoch + 1}/{self.epochs} {fields} elapsed={time.time() - self.started:.0f}s\n"
            )


def train(args: argparse.Namespace) -> Path:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cache = CropCache.load(args.cache)
    grouped = rows_by_identity(cache.identities)
    split = split_identities(grouped, args.val_fraction, args.split_seed)
    split.save(out / "split.json")
    train_ids = {i: grouped[i] for i in split.train}
    val_ids = {i: grouped[i] for i in split.val if len(grouped[i]) >= 2}
    if args.max_train_identities:
        keep = sorted(train_ids)[: args.max_train_identities]
        train_ids = {i: train_ids[i] for i in keep}
    train_rows = np.array(sorted(r for rows in train_ids.values() for r in rows), dtype=np.int64)
    val_rows = np.array(sorted(r for rows in val_ids.values() for r in rows), dtype=np.int64)
    config.update(train_identities=len(train_ids), train_images=len(train_rows), val_identities=len(val_ids), val_images=len(val_rows))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    bs = min(args.bs, len(train_ids))
    val_bs = min(args.bs, len(val_ids))

    embedder = build_embedder(
        input_size=cache.crops.shape[1],
        alpha=args.alpha,
        embedding_size=args.embedding_size,
        backbone_weights=None if args.no_pretrained else args.weights,
        trainable=args.trainable,
        trainable_from=args.trainable_from,
        batchnorm=args.batchnorm,
    )
    state = json.loads((out / "state.json").read_text()) if (out / "state.json").exists() else {"epoch": 0, "best_val_loss": math.inf}
    if args.init_from:
        # Stage two of the recipe: start from a run whose head was trained on the frozen backbone.
        embedder.set_weights(keras.models.load_model(args.init_from, compile=False).get_weights())
    use_cache = args.trunk_cache > 0
    if use_cache and args.trainable == "full":
        raise ValueError("--trunk-cache needs a frozen trunk: --trainable partial or frozen")
    if use_cache:
        cut = "head" if args.trainable == "frozen" else args.trainable_from
        trunk, shared = split_at(embedder, cut)
        if args.reuse_trunk_cache:
            source_config = json.loads((args.reuse_trunk_cache / "config.json").read_text())
            for key in ("trainable_from", "alpha", "weights", "cache", "split_seed", "val_fraction"):
                if source_config.get(key) != config.get(key):
                    raise ValueError(f"--reuse-trunk-cache: {key} differs ({source_config.get(key)} vs {config.get(key)})")
            feats, slot = reuse_trunk_cache(args.reuse_trunk_cache, "trunk_cache", train_rows, len(cache.identities))
            val_feats, val_slot = reuse_trunk_cache(args.reuse_trunk_cache, "trunk_cache_val", val_rows, len(cache.identities))
        else:
            # One TFLite conversion serves both caches, and none is made when both exist.
            runner = functools.cache(lambda: LiteRTModel(to_tflite(trunk), num_threads=2))
            feats = compute_trunk_cache(trunk, runner, cache.crops, train_rows, args.trunk_cache, out / "trunk_cache.npy", args.seed)
            val_feats = compute_trunk_cache(trunk, runner, cache.crops, val_rows, 1, out / "trunk_cache_val.npy", args.seed)
            slot = np.full(len(cache.identities), -1, dtype=np.int64)
            slot[train_rows] = np.arange(len(train_rows))
            val_slot = np.full(len(cache.identities), -1, dtype=np.int64)
            val_slot[val_rows] = np.arange(len(val_rows))
        batches = PairBatches(train_ids, bs=bs, seed=args.seed + state["epoch"])
        source = feature_batches(feats, batches, slot, args.variants)
        val_batches = fixed_validation(val_ids, val_bs, args.seed)
        val_x = np.concatenate([val_feats[0, val_slot[b]].astype(np.float32) for b in val_batches])
        input_shape = feats.shape[2:]
    else:
        shared = embedder
        batches = PairBatches(train_ids, bs=bs, seed=args.seed + state["epoch"])
        source = image_batches(cache.crops, batches, args.seed + state["epoch"])
        val_batches = fixed_validation(val_ids, val_bs, args.seed)
        val_x = np.concatenate([cache.crops[b].astype(np.float32) for b in val_batches])
        input_shape = cache.crops.shape[1:]
    val_y = np.concatenate([pair_mask(val_bs)] * len(val_batches))
    steps = args.steps_per_epoch or batches.steps_per_pass

    if (out / "last.keras").exists():
        model = keras.models.load_model(out / "last.keras")
        print(f"resuming after epoch {state['epoch']} (best val_loss {state['best_val_loss']:.4f})")
    else:
        model = shared
        schedule: Any = args.lr
        if args.cosine:
            schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=args.epochs * steps, alpha=0.02)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=PairLoss(), metrics=pair_metrics())
    if model is not shared:
        shared.set_weights(model.get_weights())

    dataset = tf.data.Dataset.from_generator(
        lambda: source,
        output_signature=(
            tf.TensorSpec((2 * bs, *input_shape), tf.float32),
            tf.TensorSpec((2 * bs, 2 * bs), tf.float32),
        ),
    ).prefetch(2)
    model.fit(
        dataset,
        epochs=args.epochs,
        initial_epoch=state["epoch"],
        steps_per_epoch=steps,
        validation_data=(val_x, val_y),
        validation_batch_size=2 * val_bs,
        callbacks=[
            EmbedderCheckpoint(out, embedder, shared, state["best_val_loss"]),
            keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
            ProgressLog(out / "progress.log", args.epochs),
        ],
        verbose=2,
    )
    return out / "best.keras"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True, help="crop cache from training.prepare")
    p.add_argument("--out", type=Path, required=True, help="run directory (resumed when it exists)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0: one pass over the training identities")
    p.add_argument("--bs", type=int, default=100, help="identities per batch (batch = 2 x bs images)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--cosine", action="store_true", help="cosine-decay the learning rate to 2%% over the run")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--embedding-size", type=int, default=256)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--no-pretrained", action="store_true")
    p.add_argument("--trainable", choices=["frozen", "partial", "full"], default="full" if on_gpu else "partial")
    p.add_argument("--trainable-from", default="block_13")
    p.add_argument("--batchnorm", choices=["frozen", "train"], default="frozen", help="BatchNorm of the trainable blocks")
    p.add_argument("--trunk-cache", type=int, default=0 if on_gpu else 6, help="augmented variants per image to cache (0: off)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=20221)
    p.add_argument("--max-train-identities", type=int, default=0, help="learning curves: train on the first N identities")
    p.add_argument("--init-from", type=Path, default=None, help="start from the weights of this saved embedder (.keras)")
    p.add_argument("--variants", type=int, default=0, help="use only the first N cached variants (0: all; 1: no augmentation)")
    p.add_argument("--reuse-trunk-cache", type=Path, default=None, help="a run directory whose trunk cache covers this run's rows")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    best = train(parse_args(argv))
    print(f"best model: {best}")


if __name__ == "__main__":
    main()
