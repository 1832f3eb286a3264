"""Distil the teacher into our MobileNetV2: the student learns to reproduce the teacher's embedding.

    python -m training.distill --cache var/crops/train --labels var/teacher/labels \\
        --root ../shared/data --out runs/distill --loss both --steps 6000

Every step takes one batch of ``--batch`` aligned crops and minimises, by ``--loss``:

- ``distill``: the cosine distance between the student's unit vector and the teacher's, over
  crops from labelled and unlabeled photos alike;
- ``pair``: the method's pair loss on a pair batch (``batch / 2`` identities, two photos each);
- ``both``: a pair batch of ``batch / 4`` identities plus ``batch / 2`` unlabeled crops, with the
  distillation loss on every crop and ``--pair-weight`` times the pair loss on the pair batch.

``--relation-weight W`` adds W times :func:`relation_loss`, the batch's cosine matrix matched to
the teacher's, to any of them.

With ``--teach-online F`` a share F of every batch is *taught consistently*: those crops get
the stronger ``teaching_augmentation`` and their target is the teacher's vector of the augmented
crop itself, computed during training (``Teacher.embed_views``), instead of the cached vector of
the clean photo; the rest keep ``door_augmentation`` and the cached labels. Every pass over a
photo then brings new inputs with exact targets, where cached labels make it a repeat.

Identities are split as ``training.train`` splits them (hash of seed and identity, so the
held-out people never move); a further ``--dev-fraction`` of the training identities is kept
out of training to follow progress (``history.csv``: distance to the teacher and verification
accuracy on dev people, against images seen). The held-out people are never looked at here.

The run directory holds ``config.json``, ``split.json``, ``ckpt/`` (model, optimiser and step,
written every ``--checkpoint-every`` steps), ``progress.csv``, ``history.csv``, ``best.keras``
(best dev accuracy; a tie goes to the lower dev distance to the teacher) and ``final.keras``.
The same command resumes an interrupted run from its last checkpoint; the learning-rate schedule
and the data order continue where they stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.data import PairBatches, door_augmentation, pair_mask, rows_by_identity, split_identities, teaching_augmentation
from training.datasets import UNLABELED
from training.eval.metrics import verification_accuracy
from training.losses import pair_loss
from training.model import DEFAULT_WEIGHTS, OUTPUT_STRIDES, POOLINGS, build_embedder, recalibrate_batchnorm, transfer_weights
from training.prepare import CropCache
from training.runlog import append_csv, improves, jsonable
from training.teacher import DEFAULT_TEACHER, TEACHER_DIM, Teacher, load_labels

LOSSES = ("both", "distill", "pair")
# Settings added after runs were made: a run directory without them ran at these values.
LATER_SETTINGS: dict[str, Any] = {"relation_weight": 0.0, "output_stride": 32}


def distill_loss(student: tf.Tensor, teacher: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    """Weighted mean cosine distance ``1 - s.t`` between unit vectors; rows of weight 0 count for nothing."""
    cosine = tf.reduce_sum(student * teacher, axis=-1)
    return tf.reduce_sum((1.0 - cosine) * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def relation_loss(student: tf.Tensor, teacher: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    """Mean squared difference between the student's and the teacher's cosine for every pair of rows in the batch.

    It matches the batch's similarity matrices (relational distillation) on the pairs ``i < j``
    whose rows both carry a teacher label: the student is trained on the cosines a door compares,
    whatever the rotation between its space and the teacher's, where :func:`distill_loss` asks
    for the teacher's vectors themselves.
    """
    student_gram = tf.matmul(student, student, transpose_b=True)
    teacher_gram = tf.matmul(teacher, teacher, transpose_b=True)
    # Both grams are symmetric: every pair counted as (i, j) and (j, i) leaves the mean as over i < j.
    off_diagonal = 1.0 - tf.eye(tf.shape(student_gram)[0])
    pairs = off_diagonal * weight[:, None] * weight[None, :]
    return tf.reduce_sum(tf.square(student_gram - teacher_gram) * pairs) / tf.maximum(tf.reduce_sum(pairs), 1.0)


@dataclass
class DistillData:
    crops: np.ndarray  # (N, s, s, 3) uint8
    teacher: np.ndarray  # (N, 192) float32; zero where the teacher has no label
    has_teacher: np.ndarray  # (N,) bool
    train_ids: dict[str, list[int]]
    dev_ids: dict[str, list[int]]
    unlabeled_rows: np.ndarray
    heldout: list[str]
    heldout_ids: dict[str, list[int]]
    sources: np.ndarray  # (N,) str: the source of every crop

    @property
    def train_rows(self) -> np.ndarray:
        return np.array(sorted(r for rows in self.train_ids.values() for r in rows), dtype=np.int64)

    @property
    def distill_rows(self) -> np.ndarray:
        """What ``--loss distill`` draws from: the training people's crops with a teacher label, then the unlabeled ones."""
        train_rows = self.train_rows
        return np.concatenate([train_rows[self.has_teacher[train_rows]], self.unlabeled_rows])


def subset(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A fixed share of ``rows``; a smaller share is always inside a larger one (same seed)."""
    if fraction >= 1.0:
        return rows
    order = np.random.default_rng(seed).permutation(len(rows))
    return np.sort(rows[order[: round(fraction * len(rows))]])


def teacher_targets(paths: Sequence[str], label_dirs: Sequence[Path], roots: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's vector of every crop and whether it has one, from one or more label caches.

    Each label cache is keyed relative to its own root (``training.teacher label --root``): a
    photo is looked up in the first cache whose root holds it, so photos from outside
    ``../shared/data`` (a fetched dataset under ``var/``) come from a cache of their own.
    """
    if len(label_dirs) != len(roots):
        raise ValueError(f"every --labels needs its --root: {len(label_dirs)} label caches, {len(roots)} roots")
    resolved = [Path(p).resolve() for p in paths]
    teacher = np.zeros((len(paths), TEACHER_DIM), np.float32)
    found = np.zeros(len(paths), bool)
    placed = np.zeros(len(paths), bool)
    for label_dir, root in zip(label_dirs, roots, strict=True):
        root = Path(root).resolve()
        rows = [i for i, p in enumerate(resolved) if not placed[i] and p.is_relative_to(root)]
        if not rows:
            continue
        vectors, hit = load_labels(label_dir).lookup([str(resolved[i].relative_to(root)) for i in rows])
        teacher[rows], found[rows], placed[rows] = vectors, hit, True
    if not placed.all():
        outside = paths[int(np.flatnonzero(~placed)[0])]
        raise ValueError(f"{int((~placed).sum())} crops lie under none of the roots {[str(r) for r in roots]}, e.g. {outside}")
    return teacher, found


def load_data(args: argparse.Namespace, out: Path | None) -> DistillData:
    """The run's crops, teacher targets and identity groups; the split is written to ``out`` (none: not written)."""
    cache = CropCache.load_many(args.cache)
    teacher, found = teacher_targets(cache.paths, args.labels, args.root)
    labelled = np.array([i != UNLABELED for i in cache.identities])
    grouped = {k: v for k, v in rows_by_identity(cache.identities).items() if k != UNLABELED}
    split = split_identities(grouped, args.val_fraction, args.split_seed)
    if out is not None:
        split.save(out / "split.json")
    train_part = {i: grouped[i] for i in split.train}
    dev = split_identities(train_part, args.dev_fraction, args.split_seed + 1)
    train_ids = {i: train_part[i] for i in dev.train}
    if args.max_train_identities:
        train_ids = {i: train_ids[i] for i in sorted(train_ids)[: args.max_train_identities]}
    dev_ids = {i: train_part[i] for i in dev.val if len(train_part[i]) >= 2}
    unlabeled = np.flatnonzero(~labelled & found)
    return DistillData(
        crops=cache.crops,
        teacher=teacher,
        has_teacher=found,
        train_ids=train_ids,
        dev_ids=dev_ids,
        unlabeled_rows=subset(unlabeled, args.unlabeled_fraction, args.split_seed),
        heldout=split.val,
        heldout_ids={i: grouped[i] for i in split.val},
        sources=cache.sources,
    )


class Batches:
    """Row indices of every step's batch, by loss mode, resumable by step; the first ``2 * pair_bs`` rows form the pair batch."""

    def __init__(self, data: DistillData, loss: str, batch: int, seed: int, start_step: int):
        self.loss, self.batch = loss, batch
        self.rng = np.random.default_rng([seed, start_step])
        self.pair_bs = {"both": batch // 4, "pair": batch // 2, "distill": 0}[loss]
        if self.pair_bs:
            self.pairs = PairBatches(data.train_ids, bs=self.pair_bs, seed=seed + start_step)
        # Both: the rest of the batch is unlabeled photos; with none (the learning curve's 0 point), labelled ones.
        self.pool = data.unlabeled_rows if loss == "both" and len(data.unlabeled_rows) else data.distill_rows

    def __next__(self) -> np.ndarray:
        if self.loss == "pair":
            return next(self.pairs)
        if self.loss == "distill":
            return self.rng.choice(self.pool, size=self.batch, replace=False)
        rows = next(self.pairs)
        return np.concatenate([rows, self.rng.choice(self.pool, size=self.batch - len(rows), replace=False)])


def batch_stream(
    data: DistillData, batches: Batches, seed: int, teacher: Teacher | None = None, online: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Augmented crops, targets and target weights; with a teacher, the last ``online`` crops are labelled as augmented."""
    aug = door_augmentation(seed)
    strong = teaching_augmentation(seed + 1)
    if online and teacher is None:
        raise ValueError("online teaching needs a teacher")
    while True:
        rows = next(batches)
        cut = len(rows) - online
        mild = [aug(image=np.asarray(data.crops[r]))["image"] for r in rows[:cut]]
        taught = [strong(image=np.asarray(data.crops[r]))["image"] for r in rows[cut:]]
        images = np.stack(mild + taught)
        targets, weights = data.teacher[rows].copy(), data.has_teacher[rows].astype(np.float32)
        if online:
            assert teacher is not None
            targets[cut:] = teacher.embed_views(images[cut:])
            weights[cut:] = 1.0
        yield images.astype(np.float32), targets, weights


@dataclass(frozen=True)
class DevSet:
    images: np.ndarray
    teacher: np.ndarray
    owners: np.ndarray
    teacher_accuracy: float

    @staticmethod
    def rows(data: DistillData, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The dev crops (at most ``limit``, seeded) with a teacher label, and the dev person of each (0, 1, ...)."""
        rows = np.array(sorted(r for rs in data.dev_ids.values() for r in rs if data.has_teacher[r]), dtype=np.int64)
        if len(rows) > limit:
            rows = np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
        owner_of = {r: i for i, rs in enumerate(data.dev_ids.values()) for r in rs}
        return rows, np.array([owner_of[int(r)] for r in rows], dtype=np.int64)

    @classmethod
    def build(cls, data: DistillData, limit: int, seed: int) -> DevSet:
        rows, owners = cls.rows(data, limit, seed)
        teacher = data.teacher[rows]
        return cls(np.asarray(data.crops[rows], dtype=np.float32), teacher, owners, verification_accuracy(teacher, owners, seed))

    def evaluate(self, model: keras.Model) -> dict[str, float]:
        vectors = np.concatenate([np.asarray(model(self.images[i : i + 128], training=False)) for i in range(0, len(self.images), 128)])
        return {
            "dev_distance_to_teacher": float(np.mean(1.0 - np.sum(vectors * self.teacher, axis=1))),
            "dev_accuracy": verification_accuracy(vectors, self.owners),
            "dev_teacher_accuracy": self.teacher_accuracy,
        }


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak: float, warmup: int, total: int):
        self.peak, self.warmup, self.total = peak, max(warmup, 1), max(total, 1)

    def __call__(self, step: Any) -> Any:
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / self.warmup
        progress = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1), 0.0, 1.0)
        cosine = self.peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup, warm, cosine)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total}


def distill(args: argparse.Namespace) -> Path:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    config = {k: jsonable(v) for k, v in vars(args).items()}
    if config_path.exists():
        previous = json.loads(config_path.read_text())
        changed = {
            k
            for k in (
                "loss",
                "batch",
                "steps",
                "trainable_from",
                "unlabeled_fraction",
                "pair_weight",
                "relation_weight",
                "lr",
                "pooling",
                "output_stride",
                "teach_online",
            )
            if previous.get(k, LATER_SETTINGS.get(k)) != config.get(k)
        }
        if changed:
            raise ValueError(f"{out} holds a run with other settings ({sorted(changed)}): use a new --out")
    keras.utils.set_random_seed(args.seed)
    data = load_data(args, out)
    if len(data.train_ids) < 2:
        raise ValueError(f"only {len(data.train_ids)} training identities with two or more photos: nothing to pair")
    size = data.crops.shape[1]
    config.update(
        train_identities=len(data.train_ids),
        train_images=len(data.train_rows),
        unlabeled_images=len(data.unlabeled_rows),
        dev_identities=len(data.dev_ids),
        heldout_identities=len(data.heldout),
        input_size=size,
    )
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    model = build_embedder(
        input_size=size,
        embedding_size=data.teacher.shape[1],
        backbone_weights=None if args.no_pretrained else args.weights,
        trainable="full" if args.trainable_from == "all" else "partial",
        trainable_from=args.trainable_from if args.trainable_from != "all" else "block_13",
        batchnorm="train",
        head_activation=None,
        pooling=args.pooling,
        output_stride=args.output_stride,
        alpha=args.alpha,
    )
    optimizer = keras.optimizers.Adam(WarmupCosine(args.lr, args.warmup, args.steps))
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(checkpoint, str(out / "ckpt"), max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).expect_partial()
        print(f"resuming {out} at step {int(step.numpy())} of {args.steps}", flush=True)
    elif args.init_from:
        # Continue a finished run with a fresh schedule (e.g. more steps, more blocks trained, gdc pooling or output stride 16).
        fresh = transfer_weights(keras.models.load_model(args.init_from, compile=False), model)
        note = f"; new layers at their initial values: {fresh}" if fresh else ""
        print(f"started from the weights of {args.init_from}{note}", flush=True)
    elif not args.no_pretrained:
        sample = data.train_rows[np.random.default_rng(args.seed).permutation(len(data.train_rows))[: args.recalibrate_images]]
        layers = recalibrate_batchnorm(model, np.asarray(data.crops[np.sort(sample)], dtype=np.float32))
        print(f"recalibrated {layers} BatchNorm layers on {len(sample)} face crops", flush=True)

    batches = Batches(data, args.loss, args.batch, args.seed, int(step.numpy()))
    online = round(args.teach_online * (args.batch - 2 * batches.pair_bs))
    teacher = Teacher(args.teacher, num_threads=args.teacher_threads) if online else None
    stream = batch_stream(data, batches, args.seed + int(step.numpy()), teacher, online)
    dataset = tf.data.Dataset.from_generator(
        lambda: stream,
        output_signature=(
            tf.TensorSpec((args.batch, size, size, 3), tf.float32),
            tf.TensorSpec((args.batch, data.teacher.shape[1]), tf.float32),
            tf.TensorSpec((args.batch,), tf.float32),
        ),
    ).prefetch(2)
    pair_rows = 2 * batches.pair_bs
    mask = tf.constant(pair_mask(batches.pair_bs) if pair_rows else np.zeros((0, 0), np.float32))
    distill_weight = 0.0 if args.loss == "pair" else 1.0
    pair_weight = {"both": args.pair_weight, "pair": 1.0, "distill": 0.0}[args.loss]

    @tf.function(jit_compile=False)
    def train_step(x: tf.Tensor, t: tf.Tensor, has_t: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            s = model(x, training=True)
            d = distill_loss(s, t, has_t)
            p = tf.reduce_mean(pair_loss(mask, s[:pair_rows])) if pair_rows else tf.constant(0.0)
            r = relation_loss(s, t, has_t) if args.relation_weight else tf.constant(0.0)
            loss = distill_weight * d + pair_weight * p + args.relation_weight * r
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return {"loss": loss, "distill": d, "pair": p, **({"relation": r} if args.relation_weight else {})}

    dev = DevSet.build(data, args.dev_images, args.seed)
    best_path = out / "best.json"
    best: dict[str, float] | None = json.loads(best_path.read_text()) if best_path.exists() else None
    sums: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    stop_at = min(args.steps, int(step.numpy()) + args.stop_after) if args.stop_after else args.steps
    for x, t, has_t in dataset:
        current = int(step.numpy())
        if current >= stop_at:
            break
        metrics = train_step(x, t, has_t)
        step.assign_add(1)
        current += 1
        window_steps += 1
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        if current % args.log_every == 0 or current == args.steps:
            elapsed = time.perf_counter() - window_start
            row = {
                "step": current,
                "images_seen": current * args.batch,
                **{k: round(v / window_steps, 5) for k, v in sums.items()},
                "lr": float(optimizer.learning_rate.numpy()) if hasattr(optimizer.learning_rate, "numpy") else args.lr,
                "images_per_s": round(window_steps * args.batch / elapsed, 1),
                "time": time.strftime("%H:%M:%S"),
            }
            append_csv(out / "progress.csv", row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            sums, window_start, window_steps = {}, time.perf_counter(), 0
        if current % args.checkpoint_every == 0 or current in (args.steps, stop_at):
            manager.save(checkpoint_number=current)
        if current % args.eval_every == 0 or current == args.steps:
            scores = dev.evaluate(model)
            append_csv(
                out / "history.csv", {"step": current, "images_seen": current * args.batch, **{k: round(v, 5) for k, v in scores.items()}}
            )
            print(f"dev at step {current}: {scores}", flush=True)
            if improves(scores, best):
                best = scores
                model.save(out / "best.keras")
                best_path.write_text(json.dumps({"step": current, **scores}) + "\n")
            window_start = time.perf_counter()
    if int(step.numpy()) < args.steps:
        print(f"stopped at step {int(step.numpy())} of {args.steps}; run the same command to continue", flush=True)
        return out / "ckpt"
    model.save(out / "final.keras")
    return out / "final.keras"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cache",
        type=Path,
        action="append",
        required=True,
        help="crop cache from training.prepare (labelled and unlabeled photos; repeatable: the caches are joined)",
    )
    p.add_argument(
        "--labels", type=Path, action="append", required=True, help="label cache from training.teacher (repeatable, each with its --root)"
    )
    p.add_argument(
        "--root", type=Path, action="append", required=True, help="the --root that --labels cache was keyed against, in the same order"
    )
    p.add_argument("--out", type=Path, required=True, help="run directory (resumed when it exists)")
    p.add_argument("--loss", choices=LOSSES, default="both")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=128, help="crops per step (a multiple of 4)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--pair-weight", type=float, default=0.5, help="weight of the pair loss with --loss both")
    p.add_argument("--relation-weight", type=float, default=0.0, help="weight of the relational loss (batch cosine matrices)")
    p.add_argument("--trainable-from", default="block_6", help="first trained block (block_N, a stage start) or 'all'")
    p.add_argument("--pooling", choices=POOLINGS, default="avg", help="gdc: a learned weight per channel and position (starts as avg)")
    p.add_argument(
        "--output-stride", type=int, choices=OUTPUT_STRIDES, default=32, help="16: no last downsampling, a 7x7 map at 112 px (dense_tail)"
    )
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--no-pretrained", action="store_true")
    p.add_argument("--recalibrate-images", type=int, default=512)
    p.add_argument("--init-from", type=Path, default=None, help="start from this saved student (.keras) instead of ImageNet")
    p.add_argument(
        "--teach-online", type=float, default=0.0, help="share of each batch (outside the pair batch) labelled by the teacher as augmented"
    )
    p.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="teacher model for --teach-online")
    p.add_argument("--teacher-threads", type=int, default=2)
    p.add_argument("--unlabeled-fraction", type=float, default=1.0, help="share of the unlabeled photos used (learning curves)")
    p.add_argument("--max-train-identities", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out identities (as training.train)")
    p.add_argument("--split-seed", type=int, default=20221)
    p.add_argument("--dev-fraction", type=float, default=0.04, help="training identities kept out to follow progress")
    p.add_argument("--dev-images", type=int, default=800)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--stop-after", type=int, default=0, help="stop this invocation after N steps (resume later); 0: run to --steps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch % 4:
        p.error("--batch must be a multiple of 4")
    if not 0.0 <= args.teach_online <= 1.0:
        p.error("--teach-online is a share between 0 and 1")
    if args.relation_weight < 0.0:
        p.error("--relation-weight cannot be negative")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    print(f"final model: {distill(parse_args(argv))}")


if __name__ == "__main__":
    main()
