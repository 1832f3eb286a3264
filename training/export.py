"""Package a training run as a ``model_store/<model_id>/`` entry the service can load and verify.

    python -m training.export --run runs/main --out model_store --eval var/eval/main var/eval/yale_b
    python -m training.export --refresh model_store/<model_id> --eval var/eval/main ...   # re-read evaluations

Writes ``model.keras`` (for further training and evaluation), ``model.tflite`` (what the
service runs) and ``manifest.json``: file hashes, the input contract, the alignment version
the model was trained on, the architecture and data it came from, its evaluation results and
the recommended threshold. The service refuses a model whose files do not match their hashes,
and every stored template records the model id, so vectors of two models are never compared.

The TFLite file is checked against the Keras model on real aligned crops before anything is
written to its final place: an export whose outputs differ by 1e-4 or more is refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.vision import manifest as contract
from app.vision.manifest import FORMAT_VERSION, sha256_file
from training.evidence import (
    _read_json,
    collect_evaluations,
    evidence_fields,
    history_summary,
    library_versions,
)

SERVING_FILE = "model.tflite"
MAX_TFLITE_DIFF = 1e-4
ROUNDTRIP_CROPS = 32
PREPROCESSING = "aligned crop (app.vision.align) as RGB float32 0..255; the model rescales to -1..1 itself"


def verify_roundtrip(keras_model: Any, tflite_path: Path, crops: np.ndarray) -> float:
    """Largest absolute difference between the Keras and the TFLite embeddings of ``crops``.

    Run on real aligned crops, not only noise: conversion problems (a dropped rescaling, a
    fused BatchNorm gone wrong) show on the inputs the model will actually see.
    """
    from app.vision.litert import LiteRTModel

    batch = np.asarray(crops, dtype=np.float32)
    # Eager calls: a few dozen crops do not repay tracing a predict function.
    expected = np.concatenate(
        [np.asarray(keras_model(batch[i : i + 16], training=False), dtype=np.float32) for i in range(0, len(batch), 16)]
    )
    got = LiteRTModel(Path(tflite_path))(batch)
    if got.shape != expected.shape:
        raise ValueError(f"TFLite output shape {got.shape} differs from Keras {expected.shape}")
    return float(np.max(np.abs(got - expected)))


def cache_dirs(config: dict[str, Any]) -> list[Path]:
    """The run's crop caches: one path in older runs' configs, a list since ``--cache`` repeats (never empty)."""
    value = config.get("cache") or ""
    return [Path(str(v)) for v in value] if isinstance(value, list) and value else [Path(str(value))]


def cache_summary(config: dict[str, Any]) -> dict[str, Any] | None:
    """The caches' ``summary.json`` files merged: photos by source, and the alignment version they share."""
    read = [_read_json(d / "summary.json") for d in cache_dirs(config)]
    summaries = [s for s in read if s]
    if len(summaries) < len(read):
        return None
    versions = {s["alignment_version"] for s in summaries}
    return {
        "by_source": {k: v for s in summaries for k, v in s.get("by_source", {}).items()},
        "alignment_version": versions.pop() if len(versions) == 1 else sorted(versions),
    }


def roundtrip_inputs(config: dict[str, Any], run: Path, size: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Aligned crops of held-out identities from the run's cache, plus a few noise images.

    Without the cache (a copied run directory) only noise is used, and the manifest says so.
    """
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, size=(4, size, size, 3)).astype(np.float32)
    cache_dir = cache_dirs(config)[0]
    if not (cache_dir / "crops.npy").exists():
        return noise, "uniform noise only (the run's crop cache was not found)"
    from training.prepare import CropCache

    cache = CropCache.load(cache_dir)
    if cache.crops.shape[1] != size:
        return noise, f"uniform noise only ({cache_dir} crops are not {size} px)"
    split = _read_json(run / "split.json") or {}
    held_out = np.flatnonzero(np.isin(cache.identities, np.array(split.get("val", []), dtype=str)))
    pool = held_out if held_out.size else np.arange(len(cache.identities))
    rows = np.sort(rng.choice(pool, size=min(ROUNDTRIP_CROPS, pool.size), replace=False))
    crops = np.asarray(cache.crops[rows], dtype=np.float32)
    return np.concatenate([crops, noise]), f"{len(rows)} aligned crops from {cache_dir} and 4 uniform-noise images"


def default_model_id(alpha: float, size: int, embedding_size: int, tflite_sha256: str, today: dt.date) -> str:
    return f"facegate-mnv2-{float(alpha)}-{size}-{embedding_size}-{today:%Y%m%d}-{tflite_sha256[:8]}"


def export_run(
    run: Path,
    out: Path,
    eval_dirs: Sequence[Path] = (),
    model_id: str | None = None,
    checkpoint: str = "best.keras",
    force: bool = False,
) -> Path:
    """Write ``out/<model_id>/`` from ``run/<checkpoint>``; returns the model directory."""
    import keras

    import training.losses  # noqa: F401 - registers the custom objects a saved model may name
    from app.vision.align import ALIGNMENT_VERSION
    from training.model import output_stride_of
    from training.tflite import to_tflite

    run, out = Path(run), Path(out)
    model_file = run / checkpoint
    if not model_file.exists():
        raise FileNotFoundError(f"{model_file} not found: train first (`python -m training.train --out {run}`)")
    config = _read_json(run / "config.json") or {}
    model = keras.models.load_model(model_file, compile=False)
    size = int(model.input_shape[1])
    embedding_size = int(model.output_shape[-1])
    tflite = to_tflite(model)
    tflite_sha = hashlib.sha256(tflite).hexdigest()
    created = dt.datetime.now(dt.UTC)
    model_id = model_id or default_model_id(config.get("alpha", 1.0), size, embedding_size, tflite_sha, created.date())
    final = out / model_id
    if final.exists() and not force:
        raise FileExistsError(f"{final} exists: a model id names one artefact forever; pass --force to replace it")
    staging = out / f".partial-{model_id}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        (staging / SERVING_FILE).write_bytes(tflite)
        model.save(staging / "model.keras")
        if (run / "split.json").exists():
            # The held-out identities travel with the model: whoever evaluates it later can
            # check that their people were never trained on.
            shutil.copyfile(run / "split.json", staging / "split.json")
        crops, crops_note = roundtrip_inputs(config, run, size)
        diff = verify_roundtrip(model, staging / SERVING_FILE, crops)
        print(f"TFLite vs Keras max abs diff on {crops_note}: {diff:.3g}")
        if not diff < MAX_TFLITE_DIFF:
            raise ValueError(f"TFLite output differs from Keras by {diff:.3g} (limit {MAX_TFLITE_DIFF}): not exported")
        packaged = [name for name in ("model.keras", SERVING_FILE, "split.json") if (staging / name).exists()]
        hashes = {name: sha256_file(staging / name) for name in packaged}
        files = {name: {"sha256": digest, "bytes": (staging / name).stat().st_size} for name, digest in hashes.items()}
        evidence = evidence_fields(collect_evaluations(eval_dirs, {sha256_file(model_file), hashes[SERVING_FILE]}))
        summary = cache_summary(config)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_id": model_id,
            "created": created.isoformat(timespec="seconds"),
            "files": files,
            "serving_file": SERVING_FILE,
            "input": {"size": size, "channels": 3, "color": "RGB", "dtype": "float32", "range": [0, 255]},
            "preprocessing": PREPROCESSING,
            "alignment_version": ALIGNMENT_VERSION,
            "embedding_size": embedding_size,
            "distance": "sum((a-b)^2)/2 of L2-normalised vectors, = 1 - cosine (0..1 for a ReLU head, 0..2 for a linear one)",
            "architecture": {
                "backbone": "MobileNetV2",
                "alpha": config.get("alpha"),
                "input_size": size,
                "pooling": config.get("pooling", "max"),
                "output_stride": output_stride_of(model),
                "head": f"Dense({embedding_size}, linear) + L2 normalisation"
                if "loss" in config
                else f"Dense({embedding_size}, relu) + L2 normalisation",
                "embedding_size": embedding_size,
                "trainable": config.get("trainable"),
                "trainable_from": config.get("trainable_from"),
                "trunk_cache": config.get("trunk_cache"),
                "pretrained": None if not config else not config.get("no_pretrained", False),
                "backbone_weights": Path(str(config["weights"])).name if config.get("weights") else None,
                "parameters": int(model.count_params()),
            },
            "training": {
                "run": str(run),
                "checkpoint": checkpoint,
                "checkpoint_sha256": sha256_file(model_file),
                "cache": config.get("cache"),
                **{k: config.get(k) for k in ("train_identities", "train_images", "val_identities", "val_images")},
                "epochs_requested": config.get("epochs"),
                "init_from": config.get("init_from"),
                "batchnorm": config.get("batchnorm", "frozen"),
                "augmented_variants": config.get("variants") or config.get("trunk_cache"),
                "batch_identities": config.get("bs"),
                "learning_rate": config.get("lr"),
                "cosine": config.get("cosine"),
                **(
                    {
                        "method": "distillation",
                        "loss": config.get("loss"),
                        "pair_weight": config.get("pair_weight"),
                        "steps": config.get("steps"),
                        "batch": config.get("batch"),
                        "teacher_labels": config.get("labels"),
                        "unlabeled_images": config.get("unlabeled_images"),
                        "unlabeled_fraction": config.get("unlabeled_fraction"),
                        "dev_identities": config.get("dev_identities"),
                        "heldout_identities": config.get("heldout_identities"),
                    }
                    if "loss" in config
                    else {}
                ),
                "split_seed": config.get("split_seed"),
                "val_fraction": config.get("val_fraction"),
                "sources": summary["by_source"] if summary else None,
                "cache_alignment_version": summary["alignment_version"] if summary else None,
                "history": history_summary(run / "history.csv"),
            },
            **evidence,
            "tflite_max_abs_diff": diff,
            "tflite_roundtrip_inputs": crops_note,
            "library_versions": library_versions(),
        }
        # Through JSON once (numpy scalars to numbers), then validated against the package contract.
        contract.write(staging, json.loads(json.dumps(manifest, default=_json_default)))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def refresh_evaluations(package: Path, eval_dirs: Sequence[Path]) -> contract.PackageManifest:
    """Re-read the evaluations of a shipped model (matched by the sha256 of its files or of the
    checkpoint it was exported from) and rewrite what the manifest derives from them: the model
    files are untouched, so the model id and every enrolled template stay valid."""
    manifest = contract.read(package)
    contract.verify(package, manifest)
    raw = manifest.model_dump(mode="json")
    hashes = {entry.sha256 for entry in manifest.files.values()}
    checkpoint = (raw.get("training") or {}).get("checkpoint_sha256")
    if checkpoint:
        hashes.add(checkpoint)
    evidence = evidence_fields(collect_evaluations(eval_dirs, hashes))
    if evidence["burst_thresholds"] is None and raw.get("burst_thresholds"):
        raise ValueError("none of the evaluations given measured this model's bursts: refusing to drop its thresholds")
    return contract.write(package, {**raw, **evidence, "evaluation_refreshed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="training run directory (runs/main)")
    parser.add_argument("--out", type=Path, default=Path("model_store"), help="model store root")
    parser.add_argument(
        "--eval", type=Path, nargs="+", action="extend", default=[], help="evaluation output dirs (protocol.json / pairs.json) to include"
    )
    parser.add_argument("--model-id", help="default: facegate-mnv2-<alpha>-<size>-<emb>-<YYYYMMDD>-<tflite sha256[:8]>")
    parser.add_argument("--checkpoint", default="best.keras", help="file in --run to export")
    parser.add_argument("--force", action="store_true", help="replace an existing model directory of the same id")
    parser.add_argument(
        "--refresh", type=Path, help="a shipped package: re-read its evaluations (--eval) into its manifest, files untouched"
    )
    args = parser.parse_args(argv)
    if args.refresh:
        refreshed = refresh_evaluations(args.refresh, args.eval)
        print(f"refreshed the evaluations of {refreshed.model_id}")
        return Path(args.refresh)
    if args.run is None:
        parser.error("--run is required (or --refresh)")
    final = export_run(args.run, args.out, args.eval, args.model_id, args.checkpoint, args.force)
    manifest = contract.read(final)
    print(f"exported {manifest.model_id} to {final}")
    print(f"recommended threshold: {manifest.extra('recommended_threshold')}")
    return final


if __name__ == "__main__":
    main()
