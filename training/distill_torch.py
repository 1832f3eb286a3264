"""Whole-network distillation from a shard, with Keras 3 on the torch backend: the trainer for a lent GPU.

    KERAS_BACKEND=torch python -m training.distill_torch --shard .shard/part0 \\
        --init model_store/<model id>/model.keras --out $OUT/run --minutes 7

A lent GPU machine has torch and no TensorFlow, and ``../shared`` does not travel there. This
trainer reads everything from a shard (``training.shard``: crops, the teacher's vectors, the dev
crops) and starts from a saved student (``--init``, a ``.keras`` file: the shipped package or an
earlier run), so the model it writes is the same Keras model ``training.distill`` trains,
exported and evaluated here with the same tools (a ``.keras`` file saved on torch loads on
TensorFlow and computes the same vectors; a test checks it).

Every step draws ``--batch`` training crops of the shard (a new random order every pass),
augments them on the device (:func:`door_augment`: the kinds and ranges of
``training.data.door_augmentation``, done in torch on the whole batch) and minimises the mean
cosine distance between the student's vector and the teacher's cached vector of the clean photo
(``training.distill --loss distill``; the teacher is not run here, so no online teaching), with
Adam, the whole network trained and BatchNorm in training mode. The learning rate warms up over
``--warmup`` steps, then follows a cosine to 0 over ``--minutes`` of wall-clock time (the run
then ends, decayed, inside the device's time limit, whatever its speed) or over ``--steps``.

The run directory holds ``config.json`` (the shard's data settings, so ``training.export`` and
``training.report`` read it like a CPU run), ``split.json``, ``progress.csv``, ``history.csv``
(dev distance to the teacher and dev accuracy, every ``--eval-every-s`` seconds and at the end),
``best.keras`` (best dev accuracy, a tie to the lower distance to the teacher), ``state.json``
and ``last.keras`` (every ``--checkpoint-every-s`` seconds: a run killed at the device's limit
still brings back its weights), replaced by ``final.keras`` at the end. The same command on the
same directory resumes an interrupted run (weights, step, clock and best; Adam's moments
restart). Across machines, a new run starts ``--init`` from the last one's ``final.keras`` or
``last.keras``, with ``--images-before`` so the learning curve continues.
"""

from __future__ import annotations

import os
import sys

if "keras" not in sys.modules:  # the backend is fixed when Keras is first imported; never change another process's setting
    os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import torch
import torch.nn.functional as F

from training.eval.metrics import verification_accuracy
from training.runlog import append_csv, improves, jsonable
from training.shard import Shard

# Settings a resumed run must share with the run it resumes.
FIXED = ("shard", "init", "batch", "lr", "warmup", "minutes", "steps", "bf16", "seed")


def door_augment(crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``training.data.door_augmentation`` on a batch in torch: (B, H, W, 3) uint8 -> float32 0..255, same layout.

    Each crop independently: a mirror (p .5); a shift of up to 4%, scale 0.95-1.05 and rotation
    of up to 6 degrees with a black border (p .5); brightness and contrast +-0.2 (p .5); grey
    (p .1); and, for a share of .15 of the batch, a downscale to 0.4-0.8 of the size and back
    (one factor a batch). The teacher's cached vector is of the clean photo embedded with its
    mirror, so each change keeps the target valid.
    """
    b, h, w, _ = crops.shape
    device = crops.device

    def coin(p: float) -> torch.Tensor:
        return torch.rand(b, device=device, generator=generator) < p

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, device=device, generator=generator)

    image = crops.permute(0, 3, 1, 2).float()
    image = torch.where(coin(0.5)[:, None, None, None], image.flip(3), image)

    moved = coin(0.5)
    angle = torch.deg2rad(uniform(-6.0, 6.0))
    scale = uniform(0.95, 1.05)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Normalised coordinates span 2 across the crop: a 4% shift is 0.08.
    theta = torch.stack([torch.stack([cos, -sin, uniform(-0.08, 0.08)], 1), torch.stack([sin, cos, uniform(-0.08, 0.08)], 1)], 1)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    image = torch.where(moved[:, None, None, None], warped, image)

    lit = coin(0.5)
    contrast = torch.where(lit, uniform(0.8, 1.2), torch.ones(b, device=device))
    brightness = torch.where(lit, uniform(-0.2, 0.2) * 255.0, torch.zeros(b, device=device))
    image = (image * contrast[:, None, None, None] + brightness[:, None, None, None]).clamp(0.0, 255.0)

    weights = torch.tensor([0.299, 0.587, 0.114], device=device)[None, :, None, None]
    grey = (image * weights).sum(1, keepdim=True).expand_as(image)
    image = torch.where(coin(0.1)[:, None, None, None], grey, image)

    small = coin(0.15)
    if bool(small.any()):
        factor = float(0.4 + 0.4 * torch.rand((), device=device, generator=generator))
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        blurred = F.interpolate(F.interpolate(image, size=size, mode="area"), size=(h, w), mode="bilinear", align_corners=False)
        image = torch.where(small[:, None, None, None], blurred, image)
    return image.permute(0, 2, 3, 1).contiguous()


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - s.t`` over the batch (both unit vectors): ``training.distill.distill_loss`` with every weight 1."""
    return (1.0 - (student * teacher).sum(-1)).mean()


def learning_rate(args: argparse.Namespace, step: int, progress: float) -> float:
    """Linear warm-up over ``--warmup`` steps, then a cosine from the peak to 0 as ``progress`` goes 0 -> 1."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def embed(model: keras.Model, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate(
            [np.asarray(model(images[i : i + batch].float(), training=False).detach().cpu()) for i in range(0, len(images), batch)]
        )


def dev_scores(
    model: keras.Model, images: torch.Tensor, teacher: np.ndarray, owners: np.ndarray, teacher_accuracy: float
) -> dict[str, float]:
    """The figures ``training.distill`` logs for its dev people, on the shard's dev crops."""
    vectors = embed(model, images)
    return {
        "dev_distance_to_teacher": float(np.mean(1.0 - np.sum(vectors * teacher, axis=1))),
        "dev_accuracy": verification_accuracy(vectors, owners),
        "dev_teacher_accuracy": teacher_accuracy,
    }


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(args: argparse.Namespace) -> Path:
    if keras.backend.backend() != "torch":
        raise RuntimeError(f"training.distill_torch needs Keras on torch (KERAS_BACKEND=torch), this process has {keras.backend.backend()}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    state_path, last_path = out / "state.json", out / "last.keras"
    if (out / "final.keras").exists():
        raise ValueError(f"{out} holds a finished run: start a new one with --init {out / 'final.keras'}")
    settings = {k: jsonable(v) for k, v in vars(args).items()}
    if (out / "config.json").exists():
        previous = json.loads((out / "config.json").read_text())
        changed = sorted(k for k in FIXED if previous.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{out} holds a run with other settings ({changed}): use a new --out")
    keras.utils.set_random_seed(args.seed)
    device = _device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    shard = Shard.load(args.shard, threads=args.threads)
    meta = shard.meta
    resumed = state_path.exists() and last_path.exists()
    state: dict[str, Any] = json.loads(state_path.read_text()) if resumed else {"step": 0, "elapsed_s": 0.0, "best": None}
    model = keras.models.load_model(last_path if resumed else args.init, compile=False)
    model.trainable = True  # the whole network; BatchNorm follows training=True
    size = int(model.input_shape[1])
    if size != meta["crop_size"]:
        raise ValueError(f"{args.init} takes {size} px crops, the shard holds {meta['crop_size']} px")
    if model.output_shape[-1] != shard.teacher.shape[1]:
        raise ValueError(f"{args.init} embeds to {model.output_shape[-1]} numbers, the teacher's vectors have {shard.teacher.shape[1]}")

    train_index = shard.train_index
    if len(train_index) < args.batch:
        raise ValueError(f"{args.shard} holds {len(train_index)} training crops, fewer than one batch of {args.batch}")
    crops = torch.from_numpy(shard.crops[train_index]).to(device)
    targets = torch.from_numpy(shard.teacher[train_index]).to(device)
    dev_images = torch.from_numpy(shard.crops[shard.dev_index]).to(device)
    dev_teacher, dev_owners = shard.teacher[shard.dev_index], shard.owners[shard.dev_index]
    teacher_accuracy = verification_accuracy(dev_teacher, dev_owners)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    config = {
        **meta["settings"],
        **meta["counts"],
        **settings,
        "trainer": "training.distill_torch",
        "backend": f"keras {keras.__version__} on torch {torch.__version__}",
        "device": name,
        "loss": "distill",
        "trainable_from": "all",
        "teach_online": 0.0,
        "init_from": str(args.init),
        "input_size": size,
        "shard_train_crops": len(train_index),
        "shard_part": [meta["part"], meta["parts"]],
        "shard_quality": meta["quality"],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(shard.directory / "split.json", out / "split.json")
    print(
        f"{'resuming' if resumed else 'starting'} on {name}: {len(train_index)} training crops, {len(dev_owners)} dev crops, "
        f"from {'step ' + str(state['step']) if resumed else args.init}",
        flush=True,
    )

    params = [v.value for v in model.trainable_variables]
    optimizer = torch.optim.Adam(params, lr=args.lr, eps=1e-7)  # Keras's epsilon, as training.distill
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed * 1_000_003 + state["step"])
    budget = args.minutes * 60.0
    step, elapsed = int(state["step"]), float(state["elapsed_s"])
    best: dict[str, float] | None = state["best"]
    order, cursor = torch.randperm(len(train_index), device=device, generator=generator), 0

    def progress_now(now_elapsed: float) -> float:
        return step / args.steps if args.steps else now_elapsed / budget

    def save_state(path: Path) -> None:
        model.save(path)
        state_path.write_text(
            json.dumps({"step": step, "images_seen": step * args.batch, "elapsed_s": round(elapsed, 1), "best": best}) + "\n"
        )

    def evaluate() -> None:
        nonlocal best
        scores = dev_scores(model, dev_images, dev_teacher, dev_owners, teacher_accuracy)
        images = step * args.batch
        append_csv(out / "history.csv", {"step": step, "images_seen": images, **{k: round(v, 5) for k, v in scores.items()}})
        print(f"dev at step {step} ({images} images): {scores}", flush=True)
        if improves(scores, best):
            best = {"step": step, **scores}
            model.save(out / "best.keras")

    started = time.perf_counter() - elapsed
    window_start, window_steps, window_loss = time.perf_counter(), 0, 0.0
    last_eval = last_checkpoint = time.perf_counter()
    stop_at = step + args.stop_after if args.stop_after else None
    while progress_now(time.perf_counter() - started) < 1.0:
        if step == stop_at:
            save_state(last_path)
            print(f"stopped at step {step}; run the same command to continue", flush=True)
            return last_path
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(len(train_index), device=device, generator=generator), 0
        batch = order[cursor : cursor + args.batch]
        cursor += args.batch
        rate = learning_rate(args, step, progress_now(time.perf_counter() - started))
        for group in optimizer.param_groups:
            group["lr"] = rate
        x = door_augment(crops[batch], generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            student = model(x, training=True)
        loss = cosine_distance(student.float(), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        window_steps += 1
        window_loss += float(loss.detach())
        now = time.perf_counter()
        elapsed = now - started
        if step % args.log_every == 0:
            row = {
                "step": step,
                "images_seen": step * args.batch,
                "loss": round(window_loss / window_steps, 5),
                "distill": round(window_loss / window_steps, 5),
                "lr": rate,
                "images_per_s": round(window_steps * args.batch / (now - window_start), 1),
                "time": time.strftime("%H:%M:%S"),
            }
            append_csv(out / "progress.csv", row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            window_start, window_steps, window_loss = now, 0, 0.0
        if now - last_eval >= args.eval_every_s:
            evaluate()
            last_eval = time.perf_counter()
        if now - last_checkpoint >= args.checkpoint_every_s:
            save_state(last_path)
            last_checkpoint = time.perf_counter()
    evaluate()
    save_state(out / "final.keras")
    last_path.unlink(missing_ok=True)
    chosen = f"step {best['step']}, dev accuracy {best['dev_accuracy']:.4f}" if best else "none"
    print(f"finished at step {step} ({step * args.batch} images) after {elapsed:.0f} s; best.keras: {chosen}", flush=True)
    return out / "final.keras"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shard", type=Path, required=True, help="shard directory from training.shard")
    p.add_argument("--init", type=Path, required=True, help="the student to start from (.keras)")
    p.add_argument("--out", type=Path, required=True, help="run directory (resumed when it holds an unfinished run)")
    p.add_argument("--minutes", type=float, default=7.0, help="wall-clock length of the schedule (ignored with --steps)")
    p.add_argument("--steps", type=int, default=0, help="a fixed number of steps instead of --minutes")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (Adam)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    p.add_argument("--bf16", action="store_true", help="run the forward pass in bfloat16 autocast")
    p.add_argument("--images-before", type=int, default=0, help="images the --init model had seen (for the learning curve)")
    p.add_argument("--log-every", type=int, default=20, help="steps between progress rows")
    p.add_argument("--eval-every-s", type=float, default=60.0)
    p.add_argument("--checkpoint-every-s", type=float, default=120.0)
    p.add_argument("--threads", type=int, default=8, help="threads decoding the shard")
    p.add_argument("--stop-after", type=int, default=0, help="stop this invocation after N steps (resume later); 0: run to the end")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be at least 2")
    if args.steps < 0 or (not args.steps and args.minutes <= 0):
        p.error("give a positive --minutes or --steps")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    print(f"final model: {train(parse_args(argv))}")


if __name__ == "__main__":
    main()
