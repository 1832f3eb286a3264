"""What a model package records about its model: the evaluations measured on exactly this
model (matched by sha256), the thresholds taken from them, the training history, the library
versions. ``training.export`` puts it into the manifest."""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# The service's default operating point, and the burst size a template fuses.
RECOMMENDED_FAR = 0.001
BURST_N = 5


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
        "histograms": {
            "bins": result["histogram_bins"],
            "by_frames": {n: row["histogram"] for n, row in result["per_n"].items() if n in ("1", str(result["template_frames"]))},
        }
        if "histogram_bins" in result
        else None,
    }


def evidence_fields(evaluations: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What the manifest derives from a model's evaluations: the evaluations themselves, the
    thresholds by FAR (photo pairs, fused vectors, bursts) and the recommended threshold."""
    single_image, by_far = recommended_threshold(evaluations["pairs"])
    burst, by_n = burst_thresholds(evaluations["protocol"])
    bursts = burst_table(evaluations["bursts"])
    if bursts is not None:
        five = bursts["by_frames"].get(str(bursts["template_frames"]), {}).get(str(RECOMMENDED_FAR))
        if five is not None:
            burst = {"threshold": five, "far": RECOMMENDED_FAR, "fused_images": bursts["template_frames"], "source": bursts["source"]}
    # The service compares a fused burst with a fused template: its threshold must come from
    # fused vectors. The single-image (pairs) threshold is kept for reference.
    return {
        "evaluation": evaluations,
        "recommended_threshold": burst or single_image,
        "thresholds_by_far": by_far,
        "single_image_threshold": single_image,
        "thresholds_by_fused_n": by_n,
        "burst_thresholds": bursts,
    }
