"""Package a training run as a ``model_store/<model_id>/`` entry the service can load and verify.

    python -m training.export --run runs/main --out model_store --eval var/eval/main var/eval/yale_b

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
import csv
import datetime as dt
import hashlib
import json
import platform
import shutil
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from app.vision.embedder import sha256_file

FORMAT_VERSION = 1
SERVING_FILE = "model.tflite"
MAX_TFLITE_DIFF = 1e-4
RECOMMENDED_FAR = 0.001
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


def library_versions() -> dict[str, str | None]:
    """Versions of everything that shapes the numbers: a model is only as portable as these."""
    import keras
    import tensorflow as tf

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "mediapipe": installed("mediapipe"),
        "numpy": np.__version__,
        "ai-edge-litert": installed("ai-edge-litert"),
        "python": platform.python_version(),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def history_summary(path: Path) -> dict[str, Any] | None:
    """Epochs run and the best epoch (1-based, as the progress log counts) by validation loss;
    for a distillation run (rows by step), steps run and the best step by dev accuracy."""
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    if table and "step" in table[0]:
        by_step = {int(r["step"]): r for r in table}
        best_step = max(by_step, key=lambda k: float(by_step[k]["dev_accuracy"]))
        last = max(by_step)
        return {
            "steps_run": last,
            "images_seen": int(by_step[last]["images_seen"]),
            "best_step": best_step,
            "best_step_metrics": {k: float(v) for k, v in by_step[best_step].items() if k != "step"},
            "last_step_metrics": {k: float(v) for k, v in by_step[last].items() if k != "step"},
        }
    rows = {int(float(r["epoch"])): r for r in table}  # a resumed epoch keeps its last row
    if not rows:
        return None
    scored = {e: float(r["val_loss"]) for e, r in rows.items() if r.get("val_loss") not in (None, "")}
    summary: dict[str, Any] = {"epochs_run": len(rows)}
    if scored:
        best = min(scored, key=lambda e: scored[e])
        summary.update(
            best_epoch=best + 1,
            best_val_loss=scored[best],
            best_epoch_metrics={k: float(v) for k, v in rows[best].items() if k != "epoch" and v not in (None, "")},
        )
    return summary


def roundtrip_inputs(config: dict[str, Any], run: Path, size: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Aligned crops of held-out identities from the run's cache, plus a few noise images.

    Without the cache (a copied run directory) only noise is used, and the manifest says so.
    """
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, size=(4, size, size, 3)).astype(np.float32)
    cache_dir = Path(str(config.get("cache", "")))
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


def collect_evaluations(eval_dirs: Sequence[Path], model_hashes: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The protocol and pairs results found in ``eval_dirs``, each marked with whether it
    measured this very model (by the sha256 the evaluation recorded for its model file)."""
    found: dict[str, list[dict[str, Any]]] = {"protocol": [], "pairs": [], "bursts": []}
    for directory in eval_dirs:
        hits = 0
        for kind in found:
            result = _read_json(Path(directory) / f"{kind}.json")
            if result is None:
                continue
            hits += 1
            if kind == "pairs":
                result = {k: v for k, v in result.items() if k != "distances"}  # per-pair rows stay in the eval dir
            result["source"] = str(Path(directory) / f"{kind}.json")
            result["measured_this_model"] = result.get("model_sha256") in model_hashes
            found[kind].append(result)
        if not hits:
            raise FileNotFoundError(f"--eval {directory} holds none of protocol.json, pairs.json, bursts.json")
    return found


def recommended_threshold(pairs_results: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float | None]]:
    """The FAR 0.1% threshold of the largest pairs evaluation of this model, when there is one.

    An evaluation of another model file is never used: a threshold belongs to one model.
    """
    own = [r for r in pairs_results if r["measured_this_model"]]
    if not own:
        reason = (
            "no pairs evaluation of this model: run `python -m training.evaluate pairs` and pass its --out as --eval"
            if not pairs_results
            else "the pairs evaluations given measured a different model file (sha256 mismatch); re-run them on this model"
        )
        return {"threshold": None, "far": RECOMMENDED_FAR, "source": None, "reason": reason}, {
            "0.01": None,
            "0.001": None,
        }
    best = max(own, key=lambda r: r["pairs"])
    by_far = {far: point["threshold"] for far, point in best["tar_at_far"].items()}
    point = best["tar_at_far"].get(str(RECOMMENDED_FAR))
    if point is None:
        return {
            "threshold": None,
            "far": RECOMMENDED_FAR,
            "source": best["source"],
            "reason": f"{best['source']} has no FAR {RECOMMENDED_FAR} operating point",
        }, by_far
    source = (
        f"{best['source']}: TAR {point['tar']:.4f} at FAR {point['far']:.4f} over {best['pairs']} pairs "
        f"({point['negatives']} mismatched) of {best['pairs_file']}"
    )
    recommended = {"threshold": point["threshold"], "far": RECOMMENDED_FAR, "source": source}
    if point["negatives"] * RECOMMENDED_FAR < 1:
        # Below 1/FAR mismatched pairs no negative may pass: this is the smallest-negative rule.
        recommended["note"] = (
            f"only {point['negatives']} mismatched pairs: FAR {RECOMMENDED_FAR} is not resolved, the threshold "
            "sits just below the smallest mismatched distance"
        )
    return recommended, by_far


BURST_N = 5


def burst_thresholds(protocol_results: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """FAR thresholds measured on fused vectors (the service matches sum vectors, not images).

    Returns (the FAR 0.1% point at n = BURST_N of the first cache of this model's protocol
    evaluation, or None; every cache's thresholds by n and FAR).
    """
    own = [r for r in protocol_results if r["measured_this_model"]]
    table: dict[str, Any] = {}
    chosen = None
    for result in own:
        for cache in result.get("caches", []):
            per_n = {n: stats.get("far_thresholds") for n, stats in cache.get("per_n", {}).items() if stats.get("far_thresholds")}
            table[cache["name"]] = per_n
            point = (per_n.get(str(BURST_N)) or {}).get(str(RECOMMENDED_FAR))
            if chosen is None and point and point.get("threshold") is not None:
                chosen = {
                    "threshold": point["threshold"],
                    "far": RECOMMENDED_FAR,
                    "fused_images": BURST_N,
                    "tar": point["tar"],
                    "source": f"{result['source']}: cache {cache['name']}, fused vectors of {BURST_N} images, "
                    f"{point['negatives']} negative / {point['positives']} positive pairs",
                }
    return chosen, table


def burst_table(burst_results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Threshold by (frames fused in the query, target FAR) from this model's first burst evaluation.

    The service applies the row for the number of usable frames in a request, so a stranger
    sending 16 frames meets the same false-accept rate as one sending 1.
    """
    own = [r for r in burst_results if r["measured_this_model"]]
    if not own:
        return None
    result = own[0]
    by_frames = {n: {far: point["threshold"] for far, point in row["by_far"].items()} for n, row in result["per_n"].items()}
    tar = {n: {far: point["tar"] for far, point in row["by_far"].items()} for n, row in result["per_n"].items()}
    return {
        "template_frames": result["template_frames"],
        "default_far": RECOMMENDED_FAR,
        "source": f"{result['source']}: cache {result.get('cache_name')}, {result['people']} held-out people, "
        f"{result['repetitions']} repetitions, query bursts of n frames against {result['template_frames']}-frame templates",
        "by_frames": by_frames,
        "tar": tar,
    }


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
        evaluations = collect_evaluations(eval_dirs, {sha256_file(model_file), hashes[SERVING_FILE]})
        single_image, by_far = recommended_threshold(evaluations["pairs"])
        burst, by_n = burst_thresholds(evaluations["protocol"])
        bursts = burst_table(evaluations["bursts"])
        if bursts is not None:
            five = bursts["by_frames"].get(str(bursts["template_frames"]), {}).get(str(RECOMMENDED_FAR))
            if five is not None:
                burst = {
                    "threshold": five,
                    "far": RECOMMENDED_FAR,
                    "fused_images": bursts["template_frames"],
                    "source": bursts["source"],
                }
        # The service compares a fused burst with a fused template: its threshold must come
        # from fused vectors. The single-image (pairs) threshold is kept for reference.
        recommended = burst or single_image
        cache_summary = _read_json(Path(str(config.get("cache", ""))) / "summary.json")
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
                "sources": cache_summary.get("by_source") if cache_summary else None,
                "cache_alignment_version": cache_summary.get("alignment_version") if cache_summary else None,
                "history": history_summary(run / "history.csv"),
            },
            "evaluation": evaluations,
            "recommended_threshold": recommended,
            "thresholds_by_far": by_far,
            "single_image_threshold": single_image,
            "thresholds_by_fused_n": by_n,
            "burst_thresholds": bursts,
            "tflite_max_abs_diff": diff,
            "tflite_roundtrip_inputs": crops_note,
            "library_versions": library_versions(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
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


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="training run directory (runs/main)")
    parser.add_argument("--out", type=Path, default=Path("model_store"), help="model store root")
    parser.add_argument(
        "--eval", type=Path, nargs="+", action="extend", default=[], help="evaluation output dirs (protocol.json / pairs.json) to include"
    )
    parser.add_argument("--model-id", help="default: facegate-mnv2-<alpha>-<size>-<emb>-<YYYYMMDD>-<tflite sha256[:8]>")
    parser.add_argument("--checkpoint", default="best.keras", help="file in --run to export")
    parser.add_argument("--force", action="store_true", help="replace an existing model directory of the same id")
    args = parser.parse_args(argv)
    final = export_run(args.run, args.out, args.eval, args.model_id, args.checkpoint, args.force)
    manifest = json.loads((final / "manifest.json").read_text())
    print(f"exported {manifest['model_id']} to {final}")
    print(f"recommended threshold: {manifest['recommended_threshold']}")
    return final


if __name__ == "__main__":
    main()
