"""The GPU path: a shard of crops and teacher labels, and the Keras-on-torch trainer that reads it.

The shard is built from the tiny dataset of ``tests/test_distill.py``; the trainer runs end to
end in a child process with ``KERAS_BACKEND=torch`` (this process runs Keras on TensorFlow), and
the model it saves is loaded back here, on TensorFlow, and must compute the vectors torch did.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from tests.test_distill import IDENTITIES, write_tiny_data
from training import distill, shard
from training.model import build_embedder

torch = pytest.importorskip("torch", reason="torch is not installed (the `train` extra brings it): the GPU trainer cannot run")
distill_torch = pytest.importorskip("training.distill_torch")
REPO = Path(__file__).resolve().parents[2]
SIZE = 64


def shard_args(data: tuple[Path, Path, Path], out: Path, *extra: str) -> list[str]:
    root, cache, labels = data
    return [
        *("--cache", str(cache), "--labels", str(labels), "--root", str(root), "--out", str(out)),
        *("--val-fraction", "0.2", "--dev-fraction", "0.25", "--split-seed", "3", "--threads", "1"),
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_tiny_data(tmp_path_factory.mktemp("data"), SIZE)


@pytest.fixture(scope="module")
def built_shard(tiny_data: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shard") / "part0"
    shard.build(shard.parse_args(shard_args(tiny_data, out)))
    return out


@pytest.fixture(scope="module")
def init_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small student with the shipped model's head (192-d, linear, unit vectors; gdc pooling), saved on TensorFlow."""
    keras.utils.set_random_seed(0)
    model = build_embedder(
        input_size=SIZE,
        alpha=0.35,
        embedding_size=192,
        backbone_weights=None,
        trainable="full",
        batchnorm="train",
        head_activation=None,
        pooling="gdc",
    )
    path = tmp_path_factory.mktemp("init") / "init.keras"
    model.save(path)
    return path


def test_quantised_vectors_on_hand_worked_and_random_rows() -> None:
    codes, scale = shard.quantise(np.array([[0.6, -0.8]], np.float32))
    # The largest component maps to -127; 0.6 / (0.8 / 127) = 95.25 rounds to 95.
    assert codes.dtype == np.int8 and codes.tolist() == [[95, -127]]
    assert scale.tolist() == pytest.approx([0.8 / 127])
    assert shard.dequantise(codes, scale)[0] == pytest.approx([95 / math.hypot(95, 127), -127 / math.hypot(95, 127)])
    vectors = np.random.default_rng(0).normal(size=(500, 192)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    back = shard.dequantise(*shard.quantise(vectors))
    assert np.allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-5)
    assert np.sum(back * vectors, axis=1).min() > 0.9998


def test_webp_round_trip_keeps_a_smooth_crop() -> None:
    ramp = np.linspace(0, 255, 112, dtype=np.float32)
    crop = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (112, 1)), np.tile(ramp[:, None], (1, 112))], -1).astype(np.uint8)
    data = shard.encode(crop, 80)
    assert data[:4] == b"RIFF" and len(data) < crop.nbytes / 10
    back = shard.decode(data)
    assert back.shape == crop.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - crop).mean() < 3.0
    with pytest.raises(ValueError, match="damaged"):
        shard.decode(b"not an image")


def test_parts_are_disjoint_cover_the_pool_and_are_reproducible() -> None:
    pool = np.arange(100, 203)
    parts = [shard.part_of(pool, 4, k, seed=7) for k in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == pool.tolist()
    assert [len(p) for p in parts] == [26, 26, 26, 25]
    assert np.array_equal(shard.part_of(pool, 4, 2, seed=7), parts[2])
    assert not np.array_equal(shard.part_of(pool, 4, 2, seed=8), parts[2])
    with pytest.raises(ValueError, match="--part"):
        shard.part_of(pool, 4, 4, seed=7)


def test_the_shard_holds_what_training_distill_would_train_and_watch(tiny_data: tuple[Path, Path, Path], built_shard: Path) -> None:
    loaded = shard.Shard.load(built_shard, threads=1)
    root, cache, labels = tiny_data
    args = distill.parse_args(
        [
            "--cache",
            str(cache),
            "--labels",
            str(labels),
            "--root",
            str(root),
            "--out",
            "unused",
            "--val-fraction",
            "0.2",
            "--dev-fraction",
            "0.25",
            "--split-seed",
            "3",
        ]
    )
    data = distill.load_data(args, None)
    dev_rows, dev_owners = distill.DevSet.rows(data, 800, 0)
    # The dev crops are training.distill's, with their owners; every other crop is from its training pool.
    assert loaded.rows[loaded.dev].tolist() == dev_rows.tolist()
    assert loaded.owners[loaded.dev].tolist() == dev_owners.tolist()
    assert set(loaded.owners[~loaded.dev].tolist()) == {-1}
    assert sorted(loaded.rows[~loaded.dev].tolist()) == sorted(data.distill_rows.tolist())
    # Held-out people are nowhere in it, and the split is the one the CPU trainer writes.
    split = json.loads((built_shard / "split.json").read_text())
    held_out_rows = {r for i in split["val"] for r in data.heldout_ids[i]}
    assert held_out_rows and not held_out_rows & set(loaded.rows.tolist())
    # Teacher vectors survive int8; crops come back at full size.
    assert np.sum(loaded.teacher * data.teacher[loaded.rows], axis=1).min() > 0.9998
    assert loaded.crops.shape == (len(loaded.rows), SIZE, SIZE, 3)
    meta = json.loads((built_shard / "meta.json").read_text())
    # Under the default size limit the whole pool fits: 3 crops of every training person and the 9 labelled unlabeled photos.
    assert meta["train_crops"] == meta["pool_crops"] == len(data.distill_rows) == 3 * meta["counts"]["train_identities"] + 9
    assert meta["counts"]["train_identities"] + meta["counts"]["dev_identities"] + len(split["val"]) == len(IDENTITIES)


def test_the_size_limit_cuts_the_training_crops(tiny_data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    full = shard.build(shard.parse_args(shard_args(tiny_data, tmp_path / "full")))
    limit = full["bytes"] * 0.6 / 2**20
    cut = shard.build(shard.parse_args(shard_args(tiny_data, tmp_path / "cut", "--max-mib", str(limit))))
    assert 0 < cut["train_crops"] < full["train_crops"] and cut["dev_crops"] == full["dev_crops"]
    assert cut["bytes"] <= limit * 2**20 + 4096  # the arrays within the limit; npz headers besides
    with pytest.raises(ValueError, match="no training crop"):
        shard.build(shard.parse_args(shard_args(tiny_data, tmp_path / "none", "--max-mib", "0.001")))


def test_door_augment_is_seeded_in_range_and_keeps_the_layout() -> None:
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8))

    def run(seed: int) -> Any:
        return distill_torch.door_augment(crops, torch.Generator().manual_seed(seed))

    first = run(1)
    assert first.shape == crops.shape and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 255.0
    assert torch.equal(first, run(1)) and not torch.equal(first, run(2))
    # Most crops change, and some come through untouched or only mirrored (each change has p < 1).
    changed = [not torch.equal(first[i], crops[i].float()) and not torch.equal(first[i], crops[i].float().flip(1)) for i in range(16)]
    assert 0 < sum(changed) < 16


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    args = distill_torch.parse_args(["--shard", "s", "--init", "i", "--out", "o", "--lr", "1e-3", "--warmup", "10"])
    assert distill_torch.learning_rate(args, 0, 0.0) == pytest.approx(1e-4)
    assert distill_torch.learning_rate(args, 9, 0.01) == pytest.approx(1e-3)
    assert distill_torch.learning_rate(args, 50, 0.5) == pytest.approx(5e-4)
    assert distill_torch.learning_rate(args, 99, 1.0) == pytest.approx(0.0)


def test_cosine_distance_on_hand_worked_vectors() -> None:
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert float(distill_torch.cosine_distance(s, t)) == pytest.approx((0 + 1 + 2 + 0.5) / 4)


def test_the_trainer_refuses_keras_on_another_backend(tmp_path: Path) -> None:
    assert keras.backend.backend() == "tensorflow"
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=torch"):
        distill_torch.train(distill_torch.parse_args(["--shard", "s", "--init", "i", "--out", str(tmp_path)]))


def run_torch(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_trains_stops_resumes_and_saves_a_model_tensorflow_reads(built_shard: Path, init_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = ["-m", "training.distill_torch", "--shard", str(built_shard), "--init", str(init_model), "--out", str(out)]
    command += ["--steps", "4", "--batch", "8", "--warmup", "1", "--log-every", "1", "--eval-every-s", "0", "--threads", "1"]
    stopped = run_torch(*command, "--stop-after", "2")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "stopped at step 2" in stopped.stdout and (out / "last.keras").exists() and not (out / "final.keras").exists()
    changed = run_torch(*command[:-6], "--steps", "5", *command[-4:])
    assert changed.returncode != 0 and "other settings (['steps'])" in changed.stderr

    finished = run_torch(*command)
    assert finished.returncode == 0, finished.stderr[-3000:]
    progress = list(csv.DictReader((out / "progress.csv").open()))
    assert [int(r["step"]) for r in progress] == [1, 2, 3, 4]  # two more steps, not four
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in progress)
    lrs = [float(r["lr"]) for r in progress]
    assert lrs[-1] < lrs[1]  # the schedule continued after the resume
    history = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["step"]) for r in history][-1] == 4 and all(0.0 <= float(r["dev_accuracy"]) <= 1.0 for r in history)
    state = json.loads((out / "state.json").read_text())
    assert state["step"] == 4 and state["images_seen"] == 32
    assert (out / "final.keras").exists() and (out / "best.keras").exists() and not (out / "last.keras").exists()
    config = json.loads((out / "config.json").read_text())
    meta = json.loads((built_shard / "meta.json").read_text())
    assert config["trainer"] == "training.distill_torch" and config["loss"] == "distill" and config["input_size"] == SIZE
    assert config["train_identities"] == meta["counts"]["train_identities"] and config["split_seed"] == 3
    assert (out / "split.json").read_text() == (built_shard / "split.json").read_text()
    again = run_torch(*command)
    assert again.returncode != 0 and "finished run" in again.stderr

    # The model saved on torch, read here on TensorFlow: trained (not the initial weights) and the same function.
    inputs = np.random.default_rng(5).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", inputs)
    script = (
        "import sys, numpy as np, keras; m = keras.models.load_model(sys.argv[1], compile=False); "
        "np.save(sys.argv[3], np.asarray(m(np.load(sys.argv[2]), training=False).detach().cpu()))"
    )
    embedded = run_torch("-c", script, str(out / "final.keras"), str(tmp_path / "inputs.npy"), str(tmp_path / "torch.npy"))
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    trained = keras.models.load_model(out / "final.keras", compile=False)
    on_tensorflow = np.asarray(trained(inputs, training=False))
    assert np.abs(on_tensorflow - np.load(tmp_path / "torch.npy")).max() < 1e-4
    initial = np.asarray(keras.models.load_model(init_model, compile=False)(inputs, training=False))
    assert np.abs(on_tensorflow - initial).max() > 1e-4
