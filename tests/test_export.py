"""Export: the TFLite file computes what the Keras model computes, and the manifest says so.

(a) runs from the repository alone on a tiny random-weight embedder; (b) checks the shipped
model in ``model_store/`` on real aligned faces from ``../shared``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import training.tflite
from app.vision import manifest as contract
from app.vision.embedder import ModelPackage, ModelPackageError
from app.vision.litert import LiteRTModel
from training import export
from training.model import build_embedder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as training.train leaves it, holding a tiny random-weight embedder."""
    run = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    model = build_embedder(input_size=64, alpha=0.35, embedding_size=16, backbone_weights=None, trainable="partial")
    model.save(run / "best.keras")
    (run / "config.json").write_text(
        json.dumps(
            {
                "cache": str(run / "no-cache-here"),
                "alpha": 0.35,
                "embedding_size": 16,
                "trainable": "partial",
                "trainable_from": "block_13",
                "trunk_cache": 1,
                "no_pretrained": True,
                "epochs": 2,
                "bs": 3,
                "train_identities": 7,
                "train_images": 21,
                "val_identities": 3,
                "val_images": 9,
            }
        )
    )
    (run / "history.csv").write_text(
        "epoch,loss,val_loss\n0,0.9,0.8\n1,0.7,0.75\n1,0.7,0.74\n"  # the repeated epoch is a resumed run's
    )
    return run


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export.export_run(tiny_run, tmp_path_factory.mktemp("store"))


def test_cache_summary_joins_a_runs_caches(tmp_path: Path) -> None:
    """A run over two caches (``training.distill --cache A --cache B``) lists both caches' sources."""
    for name, source, version in (("a", "celeba", "v1"), ("b", "fer2013", "v1"), ("c", "other", "v2")):
        (tmp_path / name).mkdir()
        summary = {"alignment_version": version, "by_source": {source: {"images": 3, "aligned": 2}}}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    one = {"cache": str(tmp_path / "a")}  # the older runs' config: a single path
    assert export.cache_dirs(one) == [tmp_path / "a"]
    assert export.cache_summary(one) == {"by_source": {"celeba": {"images": 3, "aligned": 2}}, "alignment_version": "v1"}
    two = {"cache": [str(tmp_path / "a"), str(tmp_path / "b")]}
    assert export.cache_summary(two) == {
        "by_source": {"celeba": {"images": 3, "aligned": 2}, "fer2013": {"images": 3, "aligned": 2}},
        "alignment_version": "v1",
    }
    # Caches aligned differently are reported as such, and a missing summary gives none.
    assert export.cache_summary({"cache": [str(tmp_path / "a"), str(tmp_path / "c")]})["alignment_version"] == ["v1", "v2"]
    assert export.cache_summary({"cache": [str(tmp_path / "a"), str(tmp_path / "missing")]}) is None


def test_tflite_matches_keras_on_random_inputs(tiny_run: Path, exported: Path) -> None:
    model = keras.models.load_model(tiny_run / "best.keras", compile=False)
    x = np.random.default_rng(0).uniform(0, 255, size=(6, 64, 64, 3)).astype(np.float32)
    keras_out = model.predict(x, verbose=0)
    tflite_out = LiteRTModel(exported / "model.tflite")(x)
    assert tflite_out.shape == keras_out.shape == (6, 16)
    assert float(np.max(np.abs(tflite_out - keras_out))) < 1e-4
    np.testing.assert_allclose(np.linalg.norm(tflite_out, axis=1), 1.0, atol=1e-5)
    assert export.verify_roundtrip(model, exported / "model.tflite", x) < 1e-4


def test_a_dense_tail_model_exports_with_the_same_vectors(tiny_run: Path, tmp_path: Path) -> None:
    """Output stride 16 (dilated depthwise convolutions) converts to LiteRT and computes what Keras does."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    keras.utils.set_random_seed(1)
    dense = build_embedder(input_size=64, alpha=0.35, embedding_size=16, backbone_weights=None, pooling="gdc", output_stride=16)
    dense.save(run / "best.keras")
    exported = export.export_run(run, tmp_path / "store")
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["architecture"]["output_stride"] == 16 and manifest["tflite_max_abs_diff"] < 1e-4
    x = np.random.default_rng(3).uniform(0, 255, size=(4, 64, 64, 3)).astype(np.float32)
    assert export.verify_roundtrip(dense, exported / "model.tflite", x) < 1e-4


def test_manifest_lists_hashes_and_the_model_contract(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert set(manifest["files"]) == {"model.keras", "model.tflite"}
    for name, meta in manifest["files"].items():
        assert meta["sha256"] == sha256(exported / name)
        assert meta["bytes"] == (exported / name).stat().st_size
    tflite_sha = manifest["files"]["model.tflite"]["sha256"]
    assert re.fullmatch(rf"facegate-mnv2-0\.35-64-16-\d{{8}}-{tflite_sha[:8]}", manifest["model_id"])
    assert exported.name == manifest["model_id"]
    assert manifest["serving_file"] == "model.tflite"
    assert manifest["input"] == {"size": 64, "channels": 3, "color": "RGB", "dtype": "float32", "range": [0, 255]}
    assert manifest["embedding_size"] == 16
    assert manifest["architecture"]["alpha"] == 0.35
    assert manifest["architecture"]["output_stride"] == 32
    assert manifest["tflite_max_abs_diff"] < 1e-4
    assert "noise" in manifest["tflite_roundtrip_inputs"]  # the run's cache is absent here
    assert manifest["training"]["history"]["epochs_run"] == 2
    assert manifest["training"]["history"]["best_epoch"] == 2
    assert manifest["training"]["history"]["best_val_loss"] == pytest.approx(0.74)
    assert manifest["recommended_threshold"]["threshold"] is None
    assert "no pairs evaluation" in manifest["recommended_threshold"]["reason"]
    libraries = {"tensorflow", "keras", "mediapipe", "numpy", "ai-edge-litert", "python"}
    assert set(manifest["library_versions"]) == libraries
    assert not list(exported.parent.glob(".partial-*"))


def test_export_refuses_to_overwrite_and_to_ship_a_diverging_tflite(
    tiny_run: Path, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tflite = (exported / "model.tflite").read_bytes()
    monkeypatch.setattr(training.tflite, "to_tflite", lambda model: tflite)  # skip a second conversion
    with pytest.raises(FileExistsError, match="--force"):
        export.export_run(tiny_run, exported.parent)
    monkeypatch.setattr(export, "verify_roundtrip", lambda *args: 1e-3)
    with pytest.raises(ValueError, match="differs from Keras"):
        export.export_run(tiny_run, exported.parent, model_id="diverging")
    assert not (exported.parent / "diverging").exists()
    assert not list(exported.parent.glob(".partial-*"))


def test_export_is_loadable_by_the_service(exported: Path) -> None:
    package = ModelPackage.open(exported)
    assert package.model_id == exported.name
    assert package.input_size == 64


def test_manifest_round_trip_export_read_verify(exported: Path, tmp_path: Path) -> None:
    """export -> read -> verify; written again, the same contract; a tampered file, a missing
    one and an unknown format are refused by name."""
    manifest = contract.read(exported)
    contract.verify(exported, manifest)
    assert manifest.model_id == exported.name and manifest.serving_file == "model.tflite"
    assert manifest.files["model.tflite"] == contract.file_entry(exported / "model.tflite")
    assert manifest.extra("training")["history"]["epochs_run"] == 2  # records kept as written

    copy = tmp_path / exported.name
    shutil.copytree(exported, copy)
    contract.write(copy, manifest)
    assert contract.read(copy) == manifest
    contract.verify(copy, contract.read(copy))

    with (copy / "model.tflite").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(contract.ManifestError, match="corrupt"):
        contract.verify(copy, manifest)
    with pytest.raises(ModelPackageError, match="corrupt"):
        ModelPackage.open(copy)
    (copy / "model.keras").unlink()
    with pytest.raises(contract.ManifestError, match="missing"):
        contract.verify(copy, manifest)

    raw = json.loads((exported / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**raw, "format_version": 2}))
    with pytest.raises(contract.ManifestError, match="format_version 2"):
        contract.read(copy)
    (copy / "manifest.json").write_text(json.dumps({**raw, "serving_file": "other.tflite"}))
    with pytest.raises(contract.ManifestError, match="not covered by the manifest checksums"):
        contract.read(copy)


def test_refresh_rereads_evaluations_without_touching_the_model(exported: Path, tmp_path: Path) -> None:
    """A burst evaluation of this very model (matched by sha256) lands in the manifest; one of
    another model is listed but never trusted; the model files and id do not change."""
    from training.bursts import evaluate_bursts

    package = tmp_path / exported.name
    shutil.copytree(exported, package)
    before = contract.read(package)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1, 60, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    result = evaluate_bursts(vectors, np.repeat(np.arange(12), 5), frames=(1, 2, 5), repetitions=2, template_frames=5)
    mine, other = tmp_path / "mine", tmp_path / "other"
    for directory, sha in ((mine, before.files["model.tflite"].sha256), (other, "0" * 64)):
        directory.mkdir()
        (directory / "bursts.json").write_text(json.dumps({**result, "model_sha256": sha, "cache_name": "synthetic"}))
    export.main(["--refresh", str(package), "--eval", str(other), str(mine)])
    after = contract.read(package)
    contract.verify(package, after)
    assert after.files == before.files and after.model_id == before.model_id
    assert after.burst_thresholds is not None and after.burst_thresholds.histograms is not None
    assert set(after.burst_thresholds.by_frames) == {"1", "2", "5"} and str(mine) in (after.burst_thresholds.source or "")
    assert [b["measured_this_model"] for b in after.extra("evaluation")["bursts"]] == [False, True]
    with pytest.raises(ValueError, match="refusing to drop"):
        export.refresh_evaluations(package, [other])


def test_the_shipped_manifests_fit_the_contract(repo_root: Path) -> None:
    for path in shipped_models(repo_root):
        manifest = contract.read(path.parent)
        assert contract.Manifest.model_validate(manifest.model_dump(mode="json")) == manifest


def shipped_models(repo_root: Path, kind: str = "embedder") -> list[Path]:
    store = repo_root / "model_store"
    return sorted(p for p in store.glob("*/manifest.json") if contract.kind_of(p.parent) == kind) if store.is_dir() else []


def test_the_shipped_attribute_manifests_fit_the_contract(repo_root: Path) -> None:
    for path in shipped_models(repo_root, "attributes"):
        manifest = contract.read_attributes(path.parent)
        contract.verify(path.parent, manifest)
        assert contract.AttributeManifest.model_validate(manifest.model_dump(mode="json")) == manifest
        # Measured on the served file by the repository's evaluation code, validation and test.
        evaluation = manifest.extra("evaluation")
        assert {"validation", "test"} <= set(evaluation) and evaluation["test"]["photos"] > 1000
        assert manifest.extra("tflite_max_abs_diff") < 1e-4


def test_shipped_model_tflite_matches_keras_on_real_aligned_faces(repo_root: Path, shared_dir: Path) -> None:
    """The shipped package, run on crops the service's aligner makes from real photos."""
    manifests = shipped_models(repo_root)
    if not manifests:
        pytest.skip("model_store/ holds no exported model yet: run `python -m training.export --run runs/b6`")
    from app.vision.align import FaceAligner
    from training.eval.pairs import read_rgb

    photos = sorted((shared_dir / "data" / "faces" / "celeba_aligned").glob("*/*.jpg"))[:12]
    for manifest_path in manifests:
        package = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        for name, meta in manifest["files"].items():
            assert sha256(package / name) == meta["sha256"], f"{package / name} does not match its manifest"
        crops = []
        with FaceAligner(size=manifest["input"]["size"]) as aligner:
            for photo in photos:
                rgb = read_rgb(photo)
                result = aligner.align(rgb, pick_largest=True) if rgb is not None else None
                if result is not None and result.face is not None:
                    crops.append(result.face.crop)
                if len(crops) == 6:
                    break
        assert len(crops) >= 3, "the aligner found too few faces in the sample photos"
        batch = np.stack(crops).astype(np.float32)
        model = keras.models.load_model(package / "model.keras", compile=False)
        diff = export.verify_roundtrip(model, package / manifest["serving_file"], batch)
        assert diff < 1e-4, f"{package.name}: TFLite differs from Keras by {diff:.3g} on real aligned faces"
