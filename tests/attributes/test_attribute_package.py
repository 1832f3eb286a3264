"""Attribute models end to end from the repository alone: a tiny random-weight model is
trained-shaped, exported, verified and served; broken packages are refused, and a service
without attribute packages reports them unavailable instead of failing."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from app.vision import manifest as contract
from app.vision.attributes import EXPRESSIONS, AttributeModel, AttributeModelError, AttributeModels, find_attribute_package
from training.attributes.export import export
from training.attributes.model import build_attribute_model, build_preprocess, grayscale_layer, with_mirror

SPLITS = {"expression": ("Training", "PublicTest", "PrivateTest"), "gender_age": ("train", "val", "test")}


def test_grayscale_layer_is_luma_in_every_channel() -> None:
    rgb = np.array([[[[255.0, 0.0, 0.0], [0.0, 255.0, 0.0], [10.0, 20.0, 30.0]]]], dtype=np.float32)
    out = np.asarray(grayscale_layer()(rgb))
    expected = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.allclose(out, expected[..., None].repeat(3, axis=-1), atol=1e-4)


def test_preprocess_gives_the_backbone_its_working_size() -> None:
    crops = np.random.default_rng(0).uniform(0, 255, (2, 112, 112, 3)).astype(np.float32)
    grey = np.asarray(build_preprocess("expression", 48)(crops))
    assert grey.shape == (2, 48, 48, 3) and np.allclose(grey[..., 0], grey[..., 2])
    colour = np.asarray(build_preprocess("gender_age", 112)(crops))
    assert np.array_equal(colour, crops)  # no resizing, no grayscale: the crop as it is


def test_served_model_averages_the_crop_and_its_mirror() -> None:
    keras.utils.set_random_seed(1)
    model = build_attribute_model("gender_age", 32, backbone_weights=None)
    served = with_mirror(model, "gender_age")
    crops = np.random.default_rng(1).uniform(0, 255, (3, 112, 112, 3)).astype(np.float32)
    a, b = model(crops, training=False), model(crops[:, :, ::-1], training=False)
    out = np.asarray(served(crops, training=False))
    assert out.shape == (3, 2)
    assert np.allclose(out[:, 0], (np.asarray(a["female"]) + np.asarray(b["female"]))[:, 0] / 2, atol=1e-5)
    assert np.allclose(out[:, 1], 100 * (np.asarray(a["age"]) + np.asarray(b["age"]))[:, 0] / 2, atol=1e-3)
    # The mirror image gives the same answer: the served model is symmetric by construction.
    assert np.allclose(np.asarray(served(crops[:, :, ::-1], training=False)), out, atol=1e-4)


def fake_cache(root: Path, task: str, per_split: int = 16) -> Path:
    """A prepared cache (random crops) with every label present in every split."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    labels_csv = ["file,age,gender,race"]
    for split in SPLITS[task]:
        for i in range(per_split):
            if task == "expression":
                rows.append((f"/x/{split}/{i}.jpg", EXPRESSIONS[i % len(EXPRESSIONS)], split, int(i % 5 != 0)))
            else:
                name = f"{20 + i}_{i % 2}_{i % 5}_{split}{i}.jpg"
                labels_csv.append(f"{name},{20 + i},{i % 2},{i % 5}")
                rows.append((str(root / "images" / name), name, split, 1))
    np.save(root / "crops.npy", rng.integers(0, 256, (len(rows), 112, 112, 3), dtype=np.uint8))
    with (root / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "label", "split", "detected"])
        for i, row in enumerate(rows):
            writer.writerow([i, *row])
    (root / "summary.json").write_text(json.dumps({"alignment_version": "facemesh-5pt-v1", "photos": len(rows)}))
    if task == "gender_age":
        (root / "labels.csv").write_text("\n".join(labels_csv) + "\n")
        (root / "images").mkdir()
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both tasks exported by training.attributes.export from tiny random-weight runs."""
    base = tmp_path_factory.mktemp("attr")
    store = base / "store"
    packages = {}
    for task in ("expression", "gender_age"):
        data = fake_cache(base / f"data-{task}", task)
        if task == "gender_age":
            # The labels file sits beside the images folder, as in ../shared's UTKFace.
            shutil.move(str(data / "labels.csv"), str(data / "labels.csv"))
        run = base / f"run-{task}"
        run.mkdir()
        keras.utils.set_random_seed(0)
        build_attribute_model(task, 32, backbone_weights=None).save(run / "best.keras")
        (run / "config.json").write_text(json.dumps({"task": task, "input_size": 32, "epochs": 1, "batch": 8, "lr": 0.001}))
        packages[task] = export(run, data, store, figures=base / "figures")
    packages["figures"] = base / "figures"
    return packages


def test_export_writes_a_verified_package_with_its_evaluation(exported: dict[str, Path]) -> None:
    expression = contract.read_attributes(exported["expression"])
    assert expression.kind == "attributes" and expression.task == "expression" and expression.outputs == list(EXPRESSIONS)
    contract.verify(exported["expression"], expression)
    test = expression.extra("evaluation")["test"]
    assert test["split"] == "PrivateTest" and test["photos"] == 16 and len(test["confusion"]) == 7
    gender_age = contract.read_attributes(exported["gender_age"])
    assert gender_age.extra("evaluation")["test"]["split"] == "test"
    assert set(gender_age.extra("evaluation")["test"]["by_race"]) == {"White", "Black", "Asian", "Indian", "Other"}
    assert (exported["figures"] / "expression-confusion.png").stat().st_size > 1000
    assert (exported["figures"] / "gender-age-by-group.png").stat().st_size > 1000
    # The embedder's reader refuses an attribute package by name, and the other way round.
    with pytest.raises(contract.ManifestError, match="not an 'embedder'"):
        contract.read(exported["expression"])


def test_served_package_predicts_named_records(exported: dict[str, Path]) -> None:
    model = AttributeModel.open(exported["expression"])
    crops = np.random.default_rng(2).uniform(0, 255, (3, 112, 112, 3)).astype(np.float32)
    records = model.predict(crops)
    assert len(records) == 3
    for record in records:
        probabilities = record["expression"]["probabilities"]
        assert list(probabilities) == list(EXPRESSIONS)
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert record["expression"]["top"] == max(probabilities, key=probabilities.get)
    both = AttributeModels.load(
        exported["expression"].parent, {"expression": True, "gender_age": True}, {"expression": None, "gender_age": None}
    )
    assert set(both.loaded) == {"expression", "gender_age"} and both.unavailable == {}
    merged = both.predict(crops)
    assert set(merged[0]) == {"expression", "gender", "age"}
    assert 0.0 <= merged[0]["gender"]["female_probability"] <= 1.0


def test_broken_or_missing_packages_are_unavailable_not_fatal(exported: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "store" / exported["expression"].name
    shutil.copytree(exported["expression"], broken)
    with (broken / "model.tflite").open("r+b") as handle:
        handle.seek(2000)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(AttributeModelError, match="corrupt"):
        AttributeModel.open(broken)
    models = AttributeModels.load(tmp_path / "store", {"expression": True, "gender_age": False}, {})
    assert models.loaded == {}
    assert "corrupt" in models.unavailable["expression"] and models.unavailable["gender_age"] == "switched off by configuration"
    empty = AttributeModels.load(tmp_path / "nothing-here", {"expression": True}, {})
    assert "no expression package" in empty.unavailable["expression"]

    wrong = tmp_path / "wrong" / exported["gender_age"].name
    shutil.copytree(exported["gender_age"], wrong)
    raw = json.loads((wrong / "manifest.json").read_text())
    raw["outputs"] = ["age_years", "female_probability"]
    (wrong / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(AttributeModelError, match="not the gender_age columns"):
        AttributeModel.open(wrong)


def test_find_attribute_package_picks_the_task_and_the_id(exported: dict[str, Path]) -> None:
    store = exported["expression"].parent
    assert find_attribute_package(store, "expression") == exported["expression"]
    assert find_attribute_package(store, "gender_age", exported["gender_age"].name) == exported["gender_age"]
    with pytest.raises(AttributeModelError, match="no expression package 'nope'"):
        find_attribute_package(store, "expression", "nope")


def test_colour_measurement_twin_differs_only_in_the_grayscale_step() -> None:
    from training.attributes.colour import colour_twin, measure, to_grey

    keras.utils.set_random_seed(3)
    model = build_attribute_model("expression", 32, backbone_weights=None)
    crops = np.random.default_rng(3).integers(0, 256, (6, 112, 112, 3)).astype(np.uint8)
    twin = colour_twin(model)
    grey = to_grey(crops)
    # On a crop that is already grey the twin and the model agree exactly.
    a = np.asarray(model(grey, training=False)["expression"])
    b = np.asarray(twin(grey, training=False)["expression"])
    assert np.allclose(a, b, atol=1e-5)
    result = measure(model, crops)
    assert result["crops"] == 6 and result["grayscale_input_top_class_changes"] == 0.0
    assert result["grayscale_input_max_abs_difference"] < 1e-4
