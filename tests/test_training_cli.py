"""The training, evaluation and export CLIs end to end on a tiny synthetic crop cache, plus
the evaluation's own logic (fused-vector protocol, LFW pairs, 10-fold thresholds, TAR at FAR)
checked against hand-computed or brute-force answers.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from app.matching.fusion import l2_normalise, pairwise_distances
from training import evaluate, export, train
from training.data import split_identities
from training.eval import common as eval_common
from training.eval import metrics, protocol
from training.eval import pairs as eval_pairs

IDENTITIES = [f"person{i:02d}" for i in range(10)]
VAL_FRACTION = 0.25


def split_seed_with_usable_validation() -> int:
    """A split seed that leaves >= 3 training and >= 2 validation identities (bs = 3)."""
    grouped = {i: [0, 1, 2] for i in IDENTITIES}
    for seed in range(1000):
        split = split_identities(grouped, VAL_FRACTION, seed)
        if len(split.val) >= 2 and len(split.train) >= 6:
            return seed
    raise AssertionError("no usable split seed")


def train_args(cache: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--no-pretrained",
        "--alpha",
        "0.35",
        "--embedding-size",
        "16",
        "--bs",
        "3",
        "--epochs",
        str(epochs),
        "--steps-per-epoch",
        "2",
        "--lr",
        "1e-4",
        "--val-fraction",
        str(VAL_FRACTION),
        "--split-seed",
        str(split_seed_with_usable_validation()),
        *extra,
    ]


def history_rows(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def crop_cache(synthetic_crop_cache_factory: Callable[..., Path]) -> Path:
    return synthetic_crop_cache_factory(IDENTITIES, images_per_identity=3, size=64)


@pytest.fixture(scope="module")
def trained_run(crop_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs with the frozen-trunk cache: the CPU default.

    train.py converts the same frozen trunk to TFLite twice (training and validation caches);
    here it is converted once, which halves the fixture's cost without changing any result.
    """
    run = tmp_path_factory.mktemp("run") / "cached"
    converted: dict[int, bytes] = {}
    convert = train.to_tflite

    def convert_once(model: keras.Model) -> bytes:
        if id(model) not in converted:
            converted[id(model)] = convert(model)
        return converted[id(model)]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "to_tflite", convert_once)
        train.main(train_args(crop_cache, run, 2, "--trunk-cache", "1", "--trainable", "partial"))
    return run


def test_train_writes_the_run_directory(trained_run: Path) -> None:
    for name in ("best.keras", "last.keras", "history.csv", "split.json", "config.json", "state.json"):
        assert (trained_run / name).exists(), name
    assert len(history_rows(trained_run)) == 2
    split = json.loads((trained_run / "split.json").read_text())
    config = json.loads((trained_run / "config.json").read_text())
    assert config["val_identities"] == len(split["val"]) >= 2
    assert config["train_identities"] + len(split["val"]) == len(IDENTITIES)


def test_train_resumes_instead_of_restarting(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    train.main(train_args(Path(config["cache"]), run, 3, "--trunk-cache", "1", "--trainable", "partial"))
    epochs = [int(r["epoch"]) for r in history_rows(run)]
    assert epochs == [0, 1, 2]  # one more epoch, not three more
    assert json.loads((run / "state.json").read_text())["epoch"] == 3


def test_train_full_network_without_trunk_cache(crop_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "full"
    train.main(train_args(crop_cache, run, 2, "--trunk-cache", "0", "--trainable", "full"))
    assert (run / "best.keras").exists() and (run / "last.keras").exists()
    assert len(history_rows(run)) == 2
    assert not (run / "trunk_cache.npy").exists()


@pytest.fixture(scope="module")
def protocol_dir(trained_run: Path, crop_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    evaluate.main(
        [
            "protocol",
            "--cache",
            str(crop_cache),
            "--model",
            str(trained_run / "best.keras"),
            "--identities",
            str(trained_run / "split.json"),
            "--n",
            "1",
            "2",
            "--out",
            str(out),
        ]
    )
    return out


def test_protocol_on_held_out_identities(protocol_dir: Path, trained_run: Path) -> None:
    report = json.loads((protocol_dir / "protocol.json").read_text())
    held_out = json.loads((trained_run / "split.json").read_text())["val"]
    [cache] = report["caches"]
    assert cache["identities"] == len(held_out)
    assert cache["images"] == 3 * len(held_out)
    one, two = cache["per_n"]["1"], cache["per_n"]["2"]
    assert one["queries"] == one["vectors"] == 3 * len(held_out)
    assert 0.0 <= one["accuracy"] <= one["top5"] <= 1.0
    assert one["pos"]["count"] == 3 * len(held_out)  # 3 pairs per identity
    assert two["queries"] == 0 and two["note"] == "n/a: data has no identity with 4 images"
    assert cache["degenerate_embeddings"] == 0  # a collapsed head would make the comparison below vacuous
    assert report["model_sha256"] == hashlib.sha256((trained_run / "best.keras").read_bytes()).hexdigest()
    assert report["origin"]["table"]["1"]["accuracy"] == 0.8596
    assert (protocol_dir / f"protocol_{Path(cache['cache']).name}_cdf.png").stat().st_size > 0
    assert "n/a: data has no identity with 4 images" in (protocol_dir / "protocol.md").read_text()


def test_compare_a_model_with_itself_finds_no_difference(protocol_dir: Path, trained_run: Path, crop_cache: Path, tmp_path: Path) -> None:
    model = str(trained_run / "best.keras")
    args = ["compare", "--cache", str(crop_cache), "--model-a", model, "--model-b", model]
    report = evaluate.main([*args, "--identities", str(trained_run / "split.json"), "--out", str(tmp_path)])
    [cache] = report["caches"]
    one = json.loads((protocol_dir / "protocol.json").read_text())["caches"][0]["per_n"]["1"]
    # The same queries as the protocol's n=1 cell, and no discordant query: nothing to test.
    assert cache["queries"] == one["queries"] and cache["accuracy_a"] == pytest.approx(one["accuracy"])
    assert (cache["only_a"], cache["only_b"], cache["p_value"]) == (0, 0, 1.0)
    assert "McNemar exact p" in (tmp_path / "compare.md").read_text()


def test_protocol_refuses_a_cache_without_the_identities(crop_cache: Path, trained_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "ids.txt"
    other.write_text("nobody\n")
    args = [
        "protocol",
        "--cache",
        str(crop_cache),
        "--model",
        str(trained_run / "best.keras"),
        "--identities",
        str(other),
        "--n",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    with pytest.raises(ValueError, match="--all-identities"):
        evaluate.main(args)


def test_export_then_evaluate_the_tflite(trained_run: Path, protocol_dir: Path, crop_cache: Path, tmp_path: Path) -> None:
    final = export.main(["--run", str(trained_run), "--out", str(tmp_path / "store"), "--eval", str(protocol_dir)])
    manifest = json.loads((final / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        assert meta["sha256"] == hashlib.sha256((final / name).read_bytes()).hexdigest()
    assert manifest["tflite_max_abs_diff"] < 1e-4
    held_out = json.loads((trained_run / "split.json").read_text())["val"]
    assert manifest["tflite_roundtrip_inputs"].startswith(f"{3 * len(held_out)} aligned crops")  # held-out crops
    assert manifest["training"]["sources"] == {"synthetic": {"images": 30, "aligned": 30, "identities": 10}}
    assert manifest["training"]["history"]["epochs_run"] == 2
    [protocol] = manifest["evaluation"]["protocol"]
    assert protocol["measured_this_model"] is True
    assert manifest["recommended_threshold"]["threshold"] is None

    # The shipped TFLite file gives the Keras model's protocol figures.
    out = tmp_path / "tflite_eval"
    report = evaluate.main(
        [
            "protocol",
            "--cache",
            str(crop_cache),
            "--model",
            str(final / "model.tflite"),
            "--identities",
            str(trained_run / "split.json"),
            "--n",
            "1",
            "--out",
            str(out),
        ]
    )
    keras_one = json.loads((protocol_dir / "protocol.json").read_text())["caches"][0]["per_n"]["1"]
    tflite_one = report["caches"][0]["per_n"]["1"]
    assert tflite_one["accuracy"] == keras_one["accuracy"]
    assert tflite_one["pos"]["avg"] == pytest.approx(keras_one["pos"]["avg"], abs=1e-4)


def test_curves(trained_run: Path, tmp_path: Path) -> None:
    summary = evaluate.main(["curves", "--history", str(trained_run / "history.csv"), "--out", str(tmp_path)])
    assert summary["epochs"] == 2
    assert (tmp_path / "curves.png").stat().st_size > 0


# --------------------------------------------------------------------------- evaluation logic


def brute_force_protocol(vectors: np.ndarray, owners: np.ndarray) -> dict[str, float]:
    """The protocol's definitions, written as plainly as possible."""
    dist = pairwise_distances(vectors).astype(np.float64)
    count = len(vectors)
    others = {i: [j for j in range(count) if j != i] for i in range(count)}
    queries = [i for i in range(count) if sum(owners[j] == owners[i] for j in others[i]) >= 1]
    negatives = [dist[i, j] for i, j in itertools.combinations(range(count), 2) if owners[i] != owners[j]]
    positives = [dist[i, j] for i, j in itertools.combinations(range(count), 2) if owners[i] == owners[j]]
    smallest_negative = min(negatives)
    accuracy = top5 = safe = 0
    for i in queries:
        ranked = sorted(others[i], key=lambda j: dist[i, j])
        accuracy += owners[ranked[0]] == owners[i]
        top5 += any(owners[j] == owners[i] for j in ranked[:5])
        safe += min(dist[i, j] for j in others[i] if owners[j] == owners[i]) <= smallest_negative
    return {
        "accuracy": accuracy / len(queries),
        "top5": top5 / len(queries),
        "safe": safe / len(queries),
        "queries": len(queries),
        "pos_avg": float(np.mean(positives)),
        "neg_min": smallest_negative,
        "neg_avg": float(np.mean(negatives)),
        "neg_max": max(negatives),
    }


def test_fused_protocol_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    centres = np.abs(rng.normal(size=(12, 8)))
    owners = np.array([f"p{i}" for i in range(12) for _ in range(1 + i % 4)])  # 1..4 vectors per identity
    vectors = l2_normalise(centres[[int(o[1:]) for o in owners]] + 0.6 * np.abs(rng.normal(size=(len(owners), 8))))
    result = protocol.fused_protocol(vectors, owners, rng)
    expected = brute_force_protocol(vectors, owners)
    assert result["queries"] == expected["queries"]
    assert result["distractor_identities"] == 3
    for key in ("accuracy", "top5", "safe"):
        assert result[key] == pytest.approx(expected[key]), key
    assert result["pos"]["avg"] == pytest.approx(expected["pos_avg"], abs=1e-6)
    assert result["neg"]["min"] == pytest.approx(expected["neg_min"], abs=1e-6)
    assert result["neg"]["avg"] == pytest.approx(expected["neg_avg"], abs=1e-6)
    assert result["neg"]["max"] == pytest.approx(expected["neg_max"], abs=1e-6)


def test_group_vectors_are_disjoint_fused_groups() -> None:
    embeddings = l2_normalise(np.abs(np.random.default_rng(0).normal(size=(11, 4))))
    identities = ["a"] * 7 + ["b"] * 4
    vectors, owners = protocol.group_vectors(embeddings, identities, 3, seed=0)
    assert owners.tolist() == ["a", "a", "b"]  # 7 // 3 and 4 // 3 groups; remainders dropped
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    again, _ = protocol.group_vectors(embeddings, identities, 3, seed=0)
    np.testing.assert_array_equal(vectors, again)


PAIRS_TEXT = """2 2
alice 1 2
bob 1 3
alice 1 bob 2
carol 1 dave 1
erin 2 4
frank 1 2
erin 1 frank 3
gina 1 alice 2
"""


def test_parse_pairs_reads_lfw_format(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(PAIRS_TEXT)
    pairs, folds = eval_pairs.parse_pairs(path)
    assert folds == 2 and len(pairs) == 8
    assert pairs[0] == eval_pairs.Pair(0, "alice", 1, "alice", 2) and pairs[0].same
    assert pairs[3] == eval_pairs.Pair(0, "carol", 1, "dave", 1) and not pairs[3].same
    assert [p.fold for p in pairs] == [0] * 4 + [1] * 4
    path.write_text(PAIRS_TEXT.replace("bob 1 3", "bob 1 carol 3"))
    with pytest.raises(ValueError, match="matched"):
        eval_pairs.parse_pairs(path)
    path.write_text("3 2\nalice 1 2\n")
    with pytest.raises(ValueError, match="header"):
        eval_pairs.parse_pairs(path)


def test_ten_fold_accuracy_on_separable_distances() -> None:
    rng = np.random.default_rng(0)
    folds = np.repeat(np.arange(10), 20)
    same = np.tile(np.repeat([True, False], 10), 10)
    distances = np.where(same, rng.uniform(0.05, 0.3, 200), rng.uniform(0.4, 0.9, 200))
    result = metrics.k_fold_accuracy(distances, same, folds)
    assert result["mean_accuracy"] == 1.0 and result["std_accuracy"] == 0.0
    assert all(distances[same].max() < f["threshold"] < distances[~same].min() for f in result["folds"])


def test_ten_fold_threshold_comes_from_the_other_folds() -> None:
    """Fold 0 holds one positive at 0.5; the other folds put the best threshold near 0.3, so the
    held-out fold scores 3/4 while every other fold is perfect: mean 0.975, std 0.075."""
    folds = np.repeat(np.arange(10), 4)
    same = np.tile([True, True, False, False], 10)
    distances = np.tile([0.1, 0.2, 0.4, 0.6], 10)
    distances[1] = 0.5
    result = metrics.k_fold_accuracy(distances, same, folds)
    assert result["folds"][0]["accuracy"] == 0.75
    assert result["mean_accuracy"] == pytest.approx(0.975)
    assert result["std_accuracy"] == pytest.approx(0.075)


def test_threshold_at_far_counts_negatives() -> None:
    """1000 negatives at 0.400, 0.4005, ...: FAR 1% lets 10 through, so the threshold sits between
    the 10th (0.4045) and 11th (0.4050) negatives; FAR 0.1% lets 1 through (0.4000 | 0.4005)."""
    negatives = 0.4 + 0.0005 * np.arange(1000)
    positives = np.array([0.1, 0.3, 0.4025, 0.41, 0.8])
    distances = np.concatenate([positives, negatives])
    same = np.array([True] * 5 + [False] * 1000)
    at_1 = metrics.threshold_at_far(distances, same, 0.01)
    assert at_1["threshold"] == pytest.approx(0.40475)
    assert at_1["far"] == pytest.approx(0.01) and at_1["tar"] == pytest.approx(3 / 5)
    at_01 = metrics.threshold_at_far(distances, same, 0.001)
    assert at_01["threshold"] == pytest.approx(0.40025)
    assert at_01["far"] == pytest.approx(0.001) and at_01["tar"] == pytest.approx(2 / 5)


def test_image_resolver_lfw_names_and_merged_roots(tmp_path: Path) -> None:
    lfw, first, second = tmp_path / "lfw", tmp_path / "a", tmp_path / "b"
    for path in (
        lfw / "Ann_Lee" / "Ann_Lee_0002.jpg",
        first / "7" / "000200.jpg",
        first / "7" / "000100.jpg",
        second / "7" / "000050.jpg",
        first / "7" / "notes.txt",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    resolver = eval_pairs.ImageResolver([lfw, first, second])
    assert resolver("Ann_Lee", 2) == lfw / "Ann_Lee" / "Ann_Lee_0002.jpg"
    assert [resolver("7", k).name for k in (1, 2, 3)] == ["000100.jpg", "000200.jpg", "000050.jpg"]
    with pytest.raises(FileNotFoundError, match="only 3 files"):
        resolver("7", 4)


def make_tree(root: Path, names: dict[str, int], source: Path | None = None) -> list[Path]:
    """``root/<name>/<NNN>.jpg`` files (copies of ``source`` photos when given, else empty)."""
    made: list[Path] = []
    photos = sorted(source.glob("*/*.jpg")) if source else []
    for name, count in names.items():
        for k in range(count):
            path = root / name / f"{k:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            if photos:
                shutil.copy(photos[len(made) % len(photos)], path)
            else:
                path.write_bytes(b"")
            made.append(path)
    return made


def write_index(cache: Path, paths: list[Path]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "identity", "source"])
        writer.writerows((i, str(p), p.parent.name, p.parent.parent.name) for i, p in enumerate(paths))


def test_make_pairs_numbering_folds_and_no_repeats(tmp_path: Path) -> None:
    """Two roots merged by name; an image the aligner failed on keeps its number but is never drawn."""
    first = make_tree(tmp_path / "aligned", {f"{i}": 3 for i in range(12)})
    second = make_tree(tmp_path / "wild", {"0": 2, "5": 1})
    failed = tmp_path / "aligned" / "3" / "001.jpg"
    write_index(tmp_path / "cache", [p for p in first + second if p != failed])
    held_out = tmp_path / "split.json"
    held_out.write_text(json.dumps({"val": [str(i) for i in range(12)] + ["not-in-cache"]}))
    out = tmp_path / "pairs" / "pairs.txt"
    summary = evaluate.main(
        [
            "make-pairs",
            "--cache",
            str(tmp_path / "cache"),
            "--identities",
            str(held_out),
            "--out",
            str(out),
            "--folds",
            "3",
            "--per-fold",
            "4",
        ]
    )
    assert summary["identity_disjoint"] is True
    assert summary["roots"] == [str(tmp_path / "aligned"), str(tmp_path / "wild")]
    pairs, folds = eval_pairs.parse_pairs(out)
    assert folds == 3 and len(pairs) == 24
    resolver = eval_pairs.ImageResolver([tmp_path / "aligned", tmp_path / "wild"])
    keys = [tuple(sorted([(p.name_a, p.index_a), (p.name_b, p.index_b)])) for p in pairs]
    assert len(set(keys)) == len(keys)  # no pair twice
    fold_people = [{n for p in pairs if p.fold == f for n in (p.name_a, p.name_b)} for f in range(3)]
    assert all(not (a & b) for a, b in itertools.combinations(fold_people, 2))  # identity-disjoint folds
    for p in pairs:
        for name, k in ((p.name_a, p.index_a), (p.name_b, p.index_b)):
            assert resolver(name, k) != failed
            assert resolver(name, k).parent.name == name
    assert resolver("0", 4).parent.parent.name == "wild"  # numbering runs on into the second root
    listed = (out.parent / "pairs_images.txt").read_text().splitlines()[1:]
    assert all(resolver(n, int(k)) == Path(path) for n, k, path in (line.split() for line in listed))
    assert "identity-disjoint folds: yes" in (out.parent / "pairs_README.txt").read_text()


def test_make_pairs_reuses_identities_when_folds_cannot_be_disjoint(tmp_path: Path) -> None:
    paths = make_tree(tmp_path / "root", {"a": 5, "b": 5, "c": 5})
    write_index(tmp_path / "cache", paths)
    out = tmp_path / "pairs.txt"
    summary = evaluate.main(
        ["make-pairs", "--cache", str(tmp_path / "cache"), "--all-identities", "--out", str(out), "--folds", "4", "--per-fold", "5"]
    )
    assert summary["identity_disjoint"] is False
    pairs, _ = eval_pairs.parse_pairs(out)
    keys = [tuple(sorted([(p.name_a, p.index_a), (p.name_b, p.index_b)])) for p in pairs]
    assert len(set(keys)) == len(keys) == 40
    with pytest.raises(ValueError, match="lower --per-fold"):
        evaluate.main(
            ["make-pairs", "--cache", str(tmp_path / "cache"), "--all-identities", "--out", str(out), "--folds", "10", "--per-fold", "5"]
        )


def test_make_pairs_and_pairs_on_real_photos(trained_run: Path, shared_dir: Path, tmp_path: Path) -> None:
    """Real photos through the service's aligner: make-pairs -> pairs, plus an LFW-layout file
    with an image that has no face, which must count as a failed alignment and a non-match."""
    wild = shared_dir / "data" / "faces" / "celeba_wild"
    people = sorted(p.name for p in wild.iterdir() if len(list(p.glob("*.jpg"))) >= 3)[:4]
    roots = [tmp_path / "celeba_wild"]
    paths = []
    for name in people:
        for k, photo in enumerate(sorted((wild / name).glob("*.jpg"))[:3]):
            target = roots[0] / name / f"{k:03d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)
            paths.append(target)
    write_index(tmp_path / "cache", paths)
    pairs_file = tmp_path / "pairs" / "pairs.txt"
    evaluate.main(
        ["make-pairs", "--cache", str(tmp_path / "cache"), "--all-identities", "--out", str(pairs_file), "--folds", "2", "--per-fold", "3"]
    )
    report = evaluate.main(
        [
            "pairs",
            "--root",
            str(roots[0]),
            "--pairs",
            str(pairs_file),
            "--model",
            str(trained_run / "best.keras"),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert report["pairs"] == 12 and report["folds"] == 2
    assert report["images"] - report["failed_alignments"] >= 6
    assert set(report["tar_at_far"]) == {"0.01", "0.001"}
    assert (tmp_path / "eval" / "pairs_roc.png").stat().st_size > 0

    lfw = tmp_path / "lfw"
    for k, path in enumerate(paths[:2], 1):
        (lfw / "Ann").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, lfw / "Ann" / f"Ann_{k:04d}.jpg")
    (lfw / "Bob").mkdir()
    shutil.copy(paths[3], lfw / "Bob" / "Bob_0001.jpg")
    (lfw / "Noise").mkdir()
    cv2.imwrite(str(lfw / "Noise" / "Noise_0001.jpg"), np.full((120, 120, 3), 128, dtype=np.uint8))  # no face
    lfw_pairs = tmp_path / "lfw_pairs.txt"
    lfw_pairs.write_text("1 1\nAnn 1 2\nBob 1 Noise 1\n")
    report = evaluate.main(
        [
            "pairs",
            "--root",
            str(lfw),
            "--pairs",
            str(lfw_pairs),
            "--model",
            str(trained_run / "best.keras"),
            "--out",
            str(tmp_path / "lfw_eval"),
        ]
    )
    assert report["failed_alignments"] == 1 and report["failed_pairs"] == 1
    assert str(lfw / "Noise" / "Noise_0001.jpg") in report["failures"]
    assert report["distances"][1] == [0, False, eval_common.FAILED_PAIR_DISTANCE] == [0, False, 2.0]  # scored as a non-match
