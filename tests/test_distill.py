"""Distillation: the loss on hand-worked vectors, and the training CLI end to end on a tiny dataset."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from training import distill, report
from training.eval.metrics import verification_accuracy
from training.model import build_embedder, output_stride_of, spread_gdc, transfer_weights
from training.teacher import TEACHER_DIM, Teacher

IDENTITIES = [f"person{i:02d}" for i in range(12)]


def test_distill_loss_on_hand_worked_vectors() -> None:
    """Rows: identical (cos 1 -> 0), orthogonal (cos 0 -> 1), opposite (cos -1 -> 2), 60 degrees (cos .5 -> .5)."""
    s = tf.constant([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    t = tf.constant([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert float(distill.distill_loss(s, t, tf.ones(4))) == pytest.approx((0 + 1 + 2 + 0.5) / 4)
    # Rows without a teacher label (weight 0) count for nothing: (0 + 1) / 2.
    assert float(distill.distill_loss(s, t, tf.constant([1.0, 1.0, 0.0, 0.0]))) == pytest.approx(0.5)
    # A batch with no labelled row gives 0, not NaN.
    assert float(distill.distill_loss(s, t, tf.zeros(4))) == 0.0


def test_relation_loss_on_hand_worked_vectors() -> None:
    """Three rows; the student's pair cosines are (0, 0, 1) where the teacher's are (1, 0, 0)."""
    s = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    t = tf.constant([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Pairs (0,1), (0,2), (1,2): squared differences 1, 0, 1; the diagonal never counts.
    assert float(distill.relation_loss(s, t, tf.ones(3))) == pytest.approx(2 / 3)
    # Identical geometry costs nothing, whatever the rotation between the two spaces.
    rotated = tf.constant([[0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    assert float(distill.relation_loss(rotated, t, tf.ones(3))) == pytest.approx(0.0)
    # A row without a teacher label leaves only the pairs of the others: (0, 2) -> 0.
    assert float(distill.relation_loss(s, t, tf.constant([1.0, 0.0, 1.0]))) == pytest.approx(0.0)
    assert float(distill.relation_loss(s, t, tf.constant([1.0, 1.0, 0.0]))) == pytest.approx(1.0)
    # Fewer than two labelled rows: no pair, 0 rather than NaN.
    assert float(distill.relation_loss(s, t, tf.constant([0.0, 1.0, 0.0]))) == 0.0


def test_verification_accuracy_is_exact_on_separable_and_chance_on_identical_vectors() -> None:
    owners = np.repeat(np.arange(6), 3)
    separable = np.eye(6)[owners].astype(np.float32)
    assert verification_accuracy(separable, owners) == 1.0
    same_everywhere = np.ones((len(owners), 4), np.float32) / 2
    assert verification_accuracy(same_everywhere, owners) == pytest.approx(0.5)


def test_subset_is_nested() -> None:
    rows = np.arange(100)
    half, all_ = distill.subset(rows, 0.5, 1), distill.subset(rows, 1.0, 1)
    assert len(half) == 50 and set(half) <= set(all_) and len(distill.subset(rows, 0.0, 1)) == 0
    assert set(distill.subset(rows, 0.25, 1)) <= set(half)


def _label_cache(directory: Path, keys: list[str], vectors: np.ndarray, failed: tuple[str, ...] = ()) -> Path:
    shard = directory / "teacher-0123456789abcdef"
    shard.mkdir(parents=True)
    (shard / "teacher.json").write_text(json.dumps({"sha256": "0123456789abcdef" * 4}))
    np.savez(
        shard / "shard-00000.npz",
        keys=np.array(keys, dtype=str),
        vectors=vectors.astype(np.float32),
        failed_keys=np.array(failed, dtype=str),
        failed_reasons=np.array(["no_face"] * len(failed), dtype=str),
    )
    return directory


def test_teacher_targets_come_from_the_cache_whose_root_holds_the_photo(tmp_path: Path) -> None:
    shared, fetched = tmp_path / "shared" / "data", tmp_path / "var" / "fer"
    a, b, c = np.eye(TEACHER_DIM, dtype=np.float32)[:3]
    # Both caches key a photo "x.jpg": only the one under its own root may answer for it.
    first = _label_cache(tmp_path / "labels_shared", ["faces/p/x.jpg", "x.jpg"], np.stack([a, c]))
    second = _label_cache(tmp_path / "labels_fer", ["x.jpg"], b[None], failed=("y.jpg",))
    paths = [str(shared / "faces/p/x.jpg"), str(fetched / "x.jpg"), str(fetched / "y.jpg"), str(shared / "x.jpg")]
    vectors, found = distill.teacher_targets(paths, [first, second], [shared, fetched])
    assert found.tolist() == [True, True, False, True]
    assert np.array_equal(vectors, np.stack([a, b, np.zeros_like(a), c]))
    with pytest.raises(ValueError, match="under none of the roots"):
        distill.teacher_targets([str(tmp_path / "elsewhere.jpg")], [first], [shared])
    with pytest.raises(ValueError, match="needs its --root"):
        distill.teacher_targets(paths, [first, second], [shared])


def write_tiny_data(root: Path, size: int) -> tuple[Path, Path, Path]:
    """A crop cache (12 people x 3 crops + 10 unlabeled) under a data root, and teacher labels for it.

    Each person's teacher vector is one random direction plus noise; the unlabeled photos get
    their own; one unlabeled photo has no label (the teacher found no face).
    """
    rng = np.random.default_rng(0)
    crops, rows, vectors = [], [], []
    centres = {i: rng.normal(size=TEACHER_DIM) for i in IDENTITIES}
    for identity in IDENTITIES:
        for k in range(3):
            crops.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            rows.append((f"faces/{identity}/{k}.jpg", identity, "faces"))
            vectors.append(centres[identity] + 0.3 * rng.normal(size=TEACHER_DIM))
    for k in range(10):
        crops.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        rows.append((f"unlabeled/{k}.jpg", "", "unlabeled"))
        vectors.append(rng.normal(size=TEACHER_DIM))
    cache = root / "crops"
    cache.mkdir()
    np.save(cache / "crops.npy", np.stack(crops))
    with (cache / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "identity", "source"])
        writer.writerows((i, str(root / p), ident, src) for i, (p, ident, src) in enumerate(rows))
    labels = root / "labels" / "teacher-0123456789abcdef"
    labels.mkdir(parents=True)
    (labels / "teacher.json").write_text(json.dumps({"sha256": "0123456789abcdef" * 4}))
    v = np.array(vectors, np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.savez(
        labels / "shard-00000.npz",
        keys=np.array([p for p, _, _ in rows[:-1]]),
        vectors=v[:-1],
        failed_keys=np.array([rows[-1][0]]),
        failed_reasons=np.array(["no_face"]),
    )
    return root, cache, root / "labels"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_tiny_data(tmp_path_factory.mktemp("data"), 64)


@pytest.fixture(scope="module")
def tiny_data_112(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The same at the teacher's crop size, for online teaching."""
    return write_tiny_data(tmp_path_factory.mktemp("data112"), 112)


def run_args(data: tuple[Path, Path, Path], out: Path, loss: str, steps: int, *extra: str) -> list[str]:
    root, cache, labels = data
    return [
        *("--cache", str(cache), "--labels", str(labels), "--root", str(root), "--out", str(out)),
        *("--loss", loss, "--steps", str(steps), "--batch", "8", "--no-pretrained", "--alpha", "0.35"),
        *("--trainable-from", "all", "--val-fraction", "0.2", "--dev-fraction", "0.25", "--split-seed", "3"),
        *("--log-every", "1", "--eval-every", "2", "--checkpoint-every", "2", "--warmup", "1"),
        *extra,
    ]


@pytest.mark.parametrize("loss", ["both", "distill", "pair"])
def test_each_loss_trains_and_writes_the_run(tiny_data: tuple[Path, Path, Path], tmp_path: Path, loss: str) -> None:
    out = tmp_path / loss
    final = distill.distill(distill.parse_args(run_args(tiny_data, out, loss, 2)))
    assert final.exists() and (out / "best.keras").exists()
    progress = list(csv.DictReader((out / "progress.csv").open()))
    assert [int(r["step"]) for r in progress] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) for r in progress)
    assert (float(progress[0]["pair"]) == 0.0) == (loss == "distill")
    assert (float(progress[0]["distill"]) > 0.0) or loss == "pair"
    config = json.loads((out / "config.json").read_text())
    split = json.loads((out / "split.json").read_text())
    # Held-out and dev people are never trained on; unlabeled photos with a label are used.
    assert config["train_identities"] + config["dev_identities"] + len(split["val"]) == len(IDENTITIES)
    assert config["unlabeled_images"] == 9
    history = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["step"]) for r in history] == [2]
    assert 0.0 <= float(history[0]["dev_accuracy"]) <= 1.0


def test_resumes_from_the_checkpoint(tiny_data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    stopped = distill.distill(distill.parse_args(run_args(tiny_data, out, "both", 4, "--stop-after", "2")))
    assert stopped.name == "ckpt" and not (out / "final.keras").exists()
    with pytest.raises(ValueError, match="other settings"):
        distill.distill(distill.parse_args(run_args(tiny_data, out, "distill", 4)))
    # The same command continues where the run stopped: two more steps, not four.
    assert distill.distill(distill.parse_args(run_args(tiny_data, out, "both", 4))).name == "final.keras"
    steps = [int(r["step"]) for r in csv.DictReader((out / "progress.csv").open())]
    assert steps == [1, 2, 3, 4]
    lrs = [float(r["lr"]) for r in csv.DictReader((out / "progress.csv").open())]
    assert lrs[-1] < lrs[1]  # the schedule continued; it did not restart

    # The run report reads the dev history the run wrote, one evaluation every 2 steps.
    runs = report.main(["--run", f"{out}=tiny run", "--out", str(tmp_path / "report")])
    assert [r["images_seen"] for r in runs] == [32] and [p[0] for p in runs[0]["curve"]] == [16, 32]
    assert "| tiny run | both | 9 | 32 |" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "report.png").stat().st_size > 0
    # A continued run is drawn after the images its starting point had seen.
    [shifted] = report.main(["--run", f"{out}=continued@100", "--out", str(tmp_path / "shifted")])
    assert shifted["images_seen"] == 132 and [p[0] for p in shifted["curve"]] == [116, 132]


def test_relation_weight_trains_logs_and_is_part_of_the_run(tiny_data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "relation"
    args = run_args(tiny_data, out, "distill", 2, "--relation-weight", "2", "--stop-after", "1")
    distill.distill(distill.parse_args(args))
    progress = list(csv.DictReader((out / "progress.csv").open()))
    relation = float(progress[0]["relation"])
    assert relation > 0.0 and float(progress[0]["loss"]) == pytest.approx(float(progress[0]["distill"]) + 2 * relation, rel=1e-4)
    with pytest.raises(ValueError, match="relation_weight"):
        distill.distill(distill.parse_args(run_args(tiny_data, out, "distill", 2)))
    # A run directory written before the setting existed ran without it, and still resumes.
    config = json.loads((out / "config.json").read_text())
    del config["relation_weight"]
    (out / "config.json").write_text(json.dumps(config))
    assert distill.distill(distill.parse_args(run_args(tiny_data, out, "distill", 2))).name == "final.keras"
    # The progress log keeps its columns: the resumed step's row sits under the same header.
    rows = list(csv.DictReader((out / "progress.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2] and rows[1]["relation"] == "" and float(rows[1]["distill"]) > 0.0
    with pytest.raises(SystemExit):
        distill.parse_args(run_args(tiny_data, out, "distill", 2, "--relation-weight", "-1"))


def test_a_second_cache_and_label_cache_add_unlabeled_photos(tiny_data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A fetched dataset prepared apart (its own crops, labels and root) joins the run's unlabeled pool."""
    fetched = tmp_path / "fetched"
    cache = fetched / "crops"
    cache.mkdir(parents=True)
    rng = np.random.default_rng(1)
    np.save(cache / "crops.npy", rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8))
    with (cache / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "identity", "source"])
        writer.writerows((i, str(fetched / f"images/{i}.jpg"), "", "fetched") for i in range(5))
    vectors = rng.normal(size=(4, TEACHER_DIM))
    labels = _label_cache(
        fetched / "labels", [f"images/{i}.jpg" for i in range(4)], vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    )
    out = tmp_path / "joined"
    args = run_args(tiny_data, out, "distill", 1, "--cache", str(cache), "--labels", str(labels), "--root", str(fetched))
    distill.distill(distill.parse_args(args))
    config = json.loads((out / "config.json").read_text())
    # 9 labelled unlabeled photos in the first cache, 4 of the 5 in the second (one has no label).
    assert config["unlabeled_images"] == 9 + 4 and config["cache"] == [str(tiny_data[1]), str(cache)]
    # The held-out people are the same as without the second cache: only identities decide them.
    alone = tmp_path / "alone"
    distill.distill(distill.parse_args(run_args(tiny_data, alone, "distill", 1)))
    assert json.loads((out / "split.json").read_text()) == json.loads((alone / "split.json").read_text())


def test_init_from_continues_a_finished_run(tiny_data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    first = distill.distill(distill.parse_args(run_args(tiny_data, tmp_path / "first", "distill", 1)))
    second = tmp_path / "second"
    distill.distill(distill.parse_args(run_args(tiny_data, second, "distill", 1, "--init-from", str(first), "--lr", "0")))
    import keras

    before, after = (
        keras.models.load_model(p, compile=False).get_layer("embedding_dense").get_weights() for p in (first, second / "final.keras")
    )
    # A zero learning rate trains nothing (BatchNorm statistics still follow the batches): the
    # head holds exactly the weights it started from, not a fresh random initialisation.
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_unlabeled_fraction_zero_uses_no_unlabeled_photo(tiny_data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "none"
    distill.distill(distill.parse_args(run_args(tiny_data, out, "both", 1, "--unlabeled-fraction", "0")))
    assert json.loads((out / "config.json").read_text())["unlabeled_images"] == 0


def test_gdc_pooling_starts_as_average_pooling_from_an_avg_model() -> None:
    """Weights trained with average pooling carry over to gdc pooling unchanged: the same vectors before any training."""
    kwargs = {"input_size": 64, "alpha": 0.35, "embedding_size": 16, "backbone_weights": None, "head_activation": None}
    tf.keras.utils.set_random_seed(0)
    avg = build_embedder(pooling="avg", **kwargs)
    gdc = build_embedder(pooling="gdc", **kwargs)
    assert transfer_weights(avg, gdc) == ["gdc"]
    # 64 px -> a 2x2 last feature map: every weight 1/4.
    np.testing.assert_allclose(gdc.get_layer("gdc").get_weights()[0], 0.25)
    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(gdc(x, training=False)), np.asarray(avg(x, training=False)), atol=1e-5)
    # A model that differs elsewhere is refused, not half copied.
    with pytest.raises(ValueError, match="embedding_dense"):
        transfer_weights(avg, build_embedder(pooling="gdc", **{**kwargs, "embedding_size": 8}))


@pytest.mark.parametrize(("size", "coarse", "fine"), [(112, 4, 7), (64, 2, 4)])
def test_output_stride_16_computes_what_the_stride_32_model_did(size: int, coarse: int, fine: int) -> None:
    """A trained gdc model moved onto the dense tail gives the same vectors before any training.

    112 px: block_13 sees 7x7, the strided map is 4x4 and the dense one 7x7 (the old positions
    are the even ones); 64 px: 4x4 input, 2x2 -> 4x4 (the odd ones).
    """
    kwargs = {"input_size": size, "alpha": 0.35, "embedding_size": 16, "backbone_weights": None, "head_activation": None, "pooling": "gdc"}
    tf.keras.utils.set_random_seed(1)
    coarse_model = build_embedder(**kwargs)
    gdc = coarse_model.get_layer("gdc")
    kernel = np.random.default_rng(2).uniform(0.0, 0.5, gdc.get_weights()[0].shape).astype(np.float32)
    gdc.set_weights([kernel])
    dense_model = build_embedder(output_stride=16, **kwargs)
    assert (output_stride_of(coarse_model), output_stride_of(dense_model)) == (32, 16)
    assert coarse_model.get_layer("gdc").input.shape[1:3] == (coarse, coarse)
    assert dense_model.get_layer("gdc").input.shape[1:3] == (fine, fine)
    assert transfer_weights(coarse_model, dense_model) == []
    spread = dense_model.get_layer("gdc").get_weights()[0]
    assert np.count_nonzero(spread) == kernel.size and spread.sum() == pytest.approx(kernel.sum(), rel=1e-5)
    x = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(dense_model(x, training=False)), np.asarray(coarse_model(x, training=False)), atol=1e-5)


def test_spread_gdc_places_the_kernel_and_refuses_other_sizes() -> None:
    kernel = np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1) + 1
    odd = spread_gdc(kernel, (3, 3))[..., 0, 0]
    np.testing.assert_array_equal(odd, [[1, 0, 2], [0, 0, 0], [3, 0, 4]])
    even = spread_gdc(kernel, (4, 4))[..., 0, 0]
    np.testing.assert_array_equal(even, [[0, 0, 0, 0], [0, 1, 0, 2], [0, 0, 0, 0], [0, 3, 0, 4]])
    with pytest.raises(ValueError, match="does not spread"):
        spread_gdc(kernel, (5, 5))


def test_online_teaching_labels_the_augmented_crops(tiny_data_112: tuple[Path, Path, Path], fake_teacher: Path, tmp_path: Path) -> None:
    """The last crops of a batch are labelled by the teacher as augmented; the others keep the cached labels."""
    args = distill.parse_args(run_args(tiny_data_112, tmp_path / "run", "distill", 1))
    data = distill.load_data(args, tmp_path)
    batches = distill.Batches(data, "distill", 8, seed=0, start_step=0)
    teacher = Teacher(fake_teacher)
    images, targets, weights = next(distill.batch_stream(data, batches, seed=0, teacher=teacher, online=3))
    assert images.shape == (8, 112, 112, 3) and np.all(weights == 1.0)
    np.testing.assert_allclose(targets[5:], teacher.embed_views(images[5:]), atol=1e-5)
    cached = data.teacher[data.has_teacher]
    for target in targets[:5]:
        assert np.min(np.abs(cached - target).max(axis=1)) == 0.0  # a cached row, untouched
    for target in targets[5:]:
        assert np.min(np.abs(cached - target).max(axis=1)) > 1e-3  # not a cached row


def test_cli_trains_gdc_with_online_teaching_from_an_avg_run(
    tiny_data_112: tuple[Path, Path, Path], fake_teacher: Path, tmp_path: Path
) -> None:
    first = distill.distill(distill.parse_args(run_args(tiny_data_112, tmp_path / "avg", "distill", 1)))
    out = tmp_path / "gdc"
    extra = ("--pooling", "gdc", "--init-from", str(first), "--teach-online", "0.5", "--teacher", str(fake_teacher))
    final = distill.distill(distill.parse_args(run_args(tiny_data_112, out, "distill", 2, *extra)))
    import keras

    model = keras.models.load_model(final, compile=False)
    gdc = model.get_layer("gdc")
    # 112 px -> a 4x4 last feature map; trained, so no longer the plain average it started as.
    assert gdc.get_weights()[0].shape == (4, 4, gdc.input.shape[-1], 1)
    assert not np.allclose(gdc.get_weights()[0], 1 / 16)
    config = json.loads((out / "config.json").read_text())
    assert config["pooling"] == "gdc" and config["teach_online"] == 0.5
    assert [int(r["step"]) for r in csv.DictReader((out / "progress.csv").open())] == [1, 2]
    with pytest.raises(SystemExit):
        distill.parse_args(run_args(tiny_data_112, out, "distill", 2, "--teach-online", "1.5"))


def test_cli_moves_a_gdc_run_onto_output_stride_16(tiny_data_112: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """--output-stride 16 from a stride-32 gdc run: a 7x7 kernel, recorded in the config; the stride cannot change on resume."""
    first = distill.distill(distill.parse_args(run_args(tiny_data_112, tmp_path / "coarse", "distill", 1, "--pooling", "gdc")))
    out = tmp_path / "dense"
    extra = ("--pooling", "gdc", "--output-stride", "16", "--init-from", str(first), "--lr", "0")
    final = distill.distill(distill.parse_args(run_args(tiny_data_112, out, "distill", 1, *extra)))
    import keras

    coarse, dense = (keras.models.load_model(p, compile=False) for p in (first, final))
    assert output_stride_of(dense) == 16 and dense.get_layer("gdc").get_weights()[0].shape[:2] == (7, 7)
    # A zero learning rate: the spread kernel is the trained 4x4 one, on the even positions.
    np.testing.assert_array_equal(dense.get_layer("gdc").get_weights()[0], spread_gdc(coarse.get_layer("gdc").get_weights()[0], (7, 7)))
    assert json.loads((out / "config.json").read_text())["output_stride"] == 16
    with pytest.raises(ValueError, match="output_stride"):
        distill.distill(distill.parse_args(run_args(tiny_data_112, out, "distill", 1, "--pooling", "gdc", "--init-from", str(first))))
    with pytest.raises(SystemExit):
        distill.parse_args(run_args(tiny_data_112, out, "distill", 1, "--output-stride", "8"))


def test_best_checkpoint_rule_breaks_accuracy_ties_by_the_distance_to_the_teacher() -> None:
    from training.runlog import improves

    best = {"dev_accuracy": 0.93875, "dev_distance_to_teacher": 0.1864}
    assert improves({"dev_accuracy": 0.9, "dev_distance_to_teacher": 0.5}, None)
    assert improves({"dev_accuracy": 0.93897, "dev_distance_to_teacher": 0.20}, best)
    assert not improves({"dev_accuracy": 0.93853, "dev_distance_to_teacher": 0.10}, best)
    assert improves({"dev_accuracy": 0.93875, "dev_distance_to_teacher": 0.1777}, best)
    assert not improves({"dev_accuracy": 0.93875, "dev_distance_to_teacher": 0.1864}, best)
    # A best.json without a distance (none is older than the rule, but a hand-written one): any tie replaces it.
    assert improves({"dev_accuracy": 0.93875, "dev_distance_to_teacher": 0.18}, {"dev_accuracy": 0.93875})
