"""Evaluate an embedder: the method's fused-vector protocol, LFW-format pairs, training curves.

    python -m training.evaluate protocol --cache var/crops/celeba --model runs/main/best.keras \\
        --identities runs/main/split.json --out var/eval/main
    python -m training.evaluate protocol --cache var/crops/yale_b --all-identities \\
        --model runs/main/best.keras --out var/eval/yale_b
    python -m training.evaluate make-pairs --cache var/crops/celeba --identities runs/main/split.json \\
        --out var/eval/pairs/pairs.txt
    python -m training.evaluate pairs --root ../shared/data/faces/celeba_aligned \\
        --root ../shared/data/faces/celeba_wild --pairs var/eval/pairs/pairs.txt \\
        --model runs/main/best.keras --out var/eval/main
    python -m training.evaluate curves --history runs/main/history.csv --out var/eval/main

Every subcommand prints a plain-text table and writes JSON and PNG files into ``--out``.

Distances are always the method's normalised distance (``app.matching.fusion``): the figures
here are on the same 0..1 scale as the service's threshold. A model is a Keras file (run
through one compiled ``tf.function`` in batches) or a TFLite file (run through the service's
own ``LiteRTModel``), so the shipped artefact itself can be measured.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import itertools
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.matching.fusion import fuse, l2_normalise
from app.vision.embedder import sha256_file
from training.datasets import IMAGE_SUFFIXES
from training.teacher import TEACHER_SHA256

DEFAULT_NS = (1, 2, 3, 5, 7)
EMBED_BATCH = 64
FAILED_PAIR_DISTANCE = 2.0  # the largest distance between unit vectors: a certain non-match
REPORTED_FARS = (0.01, 0.001)

# The origin's published results (method.md): 523 external identities, 19,992 images,
# fused vectors of n images compared with each other. Kept verbatim as the bar to beat.
ORIGIN_NAME = "2022 thesis, external set of 523 identities / 19,992 images"
ORIGIN_TABLE: dict[int, dict[str, Any]] = {
    1: {"accuracy": 0.8596, "top5": 0.9329, "safe": 0.2080, "pos": (0.001, 0.364, 0.819), "neg": (0.098, 0.600, 0.964)},
    2: {"accuracy": 0.9527, "top5": 0.9872, "safe": 0.4190, "pos": (0.015, 0.224, 0.691), "neg": (0.103, 0.539, 0.921)},
    3: {"accuracy": 0.9832, "top5": 0.9972, "safe": 0.5540, "pos": (0.007, 0.161, 0.729), "neg": (0.099, 0.510, 0.911)},
    5: {"accuracy": 0.9955, "top5": 0.9989, "safe": 0.7100, "pos": (0.008, 0.103, 0.448), "neg": (0.084, 0.482, 0.886)},
    7: {"accuracy": 0.9992, "top5": 1.0000, "safe": 0.8160, "pos": (0.008, 0.073, 0.237), "neg": (0.090, 0.468, 0.859)},
}

Embed = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LoadedModel:
    """A model as the evaluation sees it: a batch function plus what identifies the file."""

    embed: Embed
    input_size: int
    path: str
    sha256: str


def load_model(path: Path) -> LoadedModel:
    """A ``.keras`` or ``.tflite`` embedder as one ``(n, s, s, 3) float32 -> (n, d)`` function.

    The file's sha256 travels with every result, so the export can tell whether an evaluation
    measured the very model it ships.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} not found: train one with `python -m training.train` first")
    digest = sha256_file(path)
    if path.suffix == ".tflite" and digest == TEACHER_SHA256:
        # The distillation teacher, measured on the same harness as the student it teaches.
        from training.teacher import Teacher

        teacher = Teacher(path, num_threads=min(2, os.cpu_count() or 1))
        return LoadedModel(teacher.embed, 112, str(path), digest)
    if path.suffix == ".tflite":
        from app.vision.litert import LiteRTModel

        runner = LiteRTModel(path, num_threads=min(2, os.cpu_count() or 1))
        return LoadedModel(runner, int(runner.input_shape[0]), str(path), digest)
    if path.suffix != ".keras":
        raise ValueError(f"model {path}: expected a .keras or .tflite file")
    import keras
    import tensorflow as tf

    import training.losses  # noqa: F401 - registers the custom objects a saved model may name

    model = keras.models.load_model(path, compile=False)
    size = int(model.input_shape[1])
    # One trace for every batch size: eager per-image calls are ~50x slower on a CPU.
    forward = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
        reduce_retracing=True,
    )

    def embed(batch: np.ndarray) -> np.ndarray:
        return np.asarray(forward(tf.convert_to_tensor(np.asarray(batch, dtype=np.float32))))

    return LoadedModel(embed, size, str(path), digest)


def degenerate_count(embeddings: np.ndarray) -> int:
    """Embeddings that are not unit vectors: a dead ReLU head emits all zeros, and for those
    ``1 - a.b`` (used for speed) and ``sum((a-b)^2)/2`` disagree, so the figures mean little."""
    if embeddings.size == 0:
        return 0
    return int((np.abs(np.linalg.norm(embeddings, axis=1) - 1.0) > 1e-3).sum())


def embed_images(embed: Embed, images: np.ndarray, rows: Sequence[int] | np.ndarray | None = None, desc: str = "embedding") -> np.ndarray:
    """Embed ``images[rows]`` in batches (memory-mapped caches are read one batch at a time)."""
    from tqdm import tqdm

    index = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    chunks = []
    for start in tqdm(range(0, len(index), EMBED_BATCH), desc=desc, unit="batch", disable=len(index) <= EMBED_BATCH):
        batch = np.asarray(images[index[start : start + EMBED_BATCH]], dtype=np.float32)
        chunks.append(np.asarray(embed(batch), dtype=np.float32))
    if not chunks:
        return np.empty((0, 0), dtype=np.float32)
    return np.concatenate(chunks)


# --------------------------------------------------------------------------- protocol


def group_vectors(embeddings: np.ndarray, identities: Sequence[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fused vectors of disjoint groups of ``n`` images per identity.

    Each identity's images are shuffled (seeded by ``seed``, ``n`` and the identity, so one
    identity's groups do not depend on which other identities are evaluated) and cut into
    ``len // n`` groups; the remainder is dropped. Returns (vectors, identity per vector).
    """
    rows: dict[str, list[int]] = defaultdict(list)
    for row, identity in enumerate(identities):
        rows[str(identity)].append(row)
    vectors, owners = [], []
    for identity in sorted(rows):
        key = int.from_bytes(hashlib.sha256(f"{seed}:{n}:{identity}".encode()).digest()[:8], "big")
        order = np.random.default_rng(key).permutation(rows[identity])
        for g in range(len(order) // n):
            vectors.append(fuse(embeddings[order[g * n : (g + 1) * n]]))
            owners.append(identity)
    if not vectors:
        return np.empty((0, embeddings.shape[1]), dtype=np.float32), np.empty(0, dtype=str)
    return np.stack(vectors), np.array(owners)


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {
        "min": float(values.min()),
        "avg": float(values.mean()),
        "max": float(values.max()),
        "count": int(values.size),
    }


def fused_protocol(vectors: np.ndarray, owners: np.ndarray, rng: np.random.Generator, sample: int = 100_000) -> dict[str, Any]:
    """The method's comparison of fused vectors with each other.

    Queries are the vectors of identities with at least two vectors; every vector is in the
    gallery, so identities with one vector act as distractors. Distances are the method's
    distance in the form ``app.matching.fusion.pairwise_distances`` uses for unit vectors,
    ``1 - a.b``, computed in row blocks so a large set never needs the whole matrix at once.
    """
    count = len(vectors)
    ids, owner_index = np.unique(owners, return_inverse=True)
    per_identity = np.bincount(owner_index, minlength=len(ids))
    is_query = per_identity[owner_index] >= 2
    result: dict[str, Any] = {
        "identities": len(ids),
        "vectors": count,
        "queries": int(is_query.sum()),
        "distractor_identities": int((per_identity == 1).sum()),
    }
    if not is_query.any():
        return result
    nearest_same = np.full(count, np.inf)
    hits = np.zeros(count, dtype=bool)
    hits5 = np.zeros(count, dtype=bool)
    positives: list[np.ndarray] = []
    neg_min, neg_max, neg_sum, neg_count = np.inf, -np.inf, 0.0, 0
    neg_sample: list[np.ndarray] = []
    neg_upper: list[np.ndarray] = []  # every different-identity pair once, for FAR thresholds
    block = 1024
    # Each different-identity pair is met twice (row i and row j): min, max and mean are
    # unaffected, and the sample for the plot is drawn uniformly from both copies alike.
    sample_rate = min(1.0, sample / max(1, count * count))
    for start in range(0, count, block):
        stop = min(count, start + block)
        dist = np.maximum(1.0 - vectors[start:stop] @ vectors.T, 0.0).astype(np.float64)
        local = np.arange(stop - start)
        dist[local, local + start] = np.inf
        same = owner_index[start:stop, None] == owner_index[None, :]
        same[local, local + start] = False
        negatives = dist[~same & np.isfinite(dist)]
        if negatives.size:
            neg_min, neg_max = min(neg_min, float(negatives.min())), max(neg_max, float(negatives.max()))
            neg_sum += float(negatives.sum())
            neg_count += negatives.size
            neg_sample.append(negatives[rng.random(negatives.size) < sample_rate])
        upper = same & (np.arange(count)[None, :] > (local + start)[:, None])
        positives.append(dist[upper])
        later = np.arange(count)[None, :] > (local + start)[:, None]
        neg_upper.append(dist[~same & later & np.isfinite(dist)].astype(np.float32))
        nearest_same[start:stop] = np.where(same, dist, np.inf).min(axis=1)
        nearest = np.argmin(dist, axis=1)
        hits[start:stop] = owner_index[nearest] == owner_index[start:stop]
        k = min(5, count - 1)
        top = np.argpartition(dist, k - 1, axis=1)[:, :k]
        hits5[start:stop] = (owner_index[top] == owner_index[start:stop, None]).any(axis=1)
    pos = np.concatenate(positives)
    result.update(
        accuracy=float(hits[is_query].mean()),
        top5=float(hits5[is_query].mean()),
        pos=_stats(pos),
        neg=None
        if neg_count == 0
        else {
            "min": neg_min,
            "avg": neg_sum / neg_count,
            "max": neg_max,
            "count": neg_count // 2,
        },
    )
    # "Safe": the match would survive a threshold set at the smallest negative of the whole set,
    # the origin demo's own threshold rule.
    result["safe"] = None if neg_count == 0 else float((nearest_same[is_query] <= neg_min).mean())
    negatives_all = np.concatenate(neg_upper) if neg_upper else np.empty(0, np.float32)
    result["far_thresholds"] = far_thresholds(pos, negatives_all)
    result["_pos_values"] = pos
    result["_neg_sample"] = np.concatenate(neg_sample) if neg_sample else np.empty(0)
    return result


FARS = (0.01, 0.001)


def far_thresholds(positives: np.ndarray, negatives: np.ndarray, fars: Sequence[float] = FARS) -> dict[str, Any]:
    """Per target FAR: the largest threshold accepting at most that share of negative pairs,
    and the share of positive pairs it accepts (TAR).

    Fused vectors of n images sit much closer together than single images, for different
    people too, so a threshold for bursts must be measured on fused vectors of that size.
    """
    out: dict[str, Any] = {}
    ordered = np.sort(negatives)
    for far in fars:
        allowed = int(np.floor(far * len(ordered)))
        if len(ordered) == 0 or allowed < 1:
            out[str(far)] = {"threshold": None, "tar": None, "negatives": len(ordered), "note": "too few negative pairs"}
            continue
        # Midway between the last accepted and the first refused negative distance.
        threshold = float((ordered[allowed - 1] + ordered[allowed]) / 2) if allowed < len(ordered) else float(ordered[-1])
        out[str(far)] = {
            "threshold": threshold,
            "tar": float((positives <= threshold).mean()) if len(positives) else None,
            "far_actual": float((negatives <= threshold).mean()),
            "negatives": len(ordered),
            "positives": len(positives),
        }
    return out


def _far_cell(result: dict[str, Any], far: float) -> str:
    point = (result.get("far_thresholds") or {}).get(str(far)) or {}
    if point.get("threshold") is None:
        return "n/a"
    return f"{point['threshold']:.3f} / {_pct(point['tar'])}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _triple(stats: dict[str, float] | tuple[float, float, float] | None) -> str:
    if stats is None:
        return "n/a"
    values = (stats["min"], stats["avg"], stats["max"]) if isinstance(stats, dict) else stats
    return "/".join(f"{v:.3f}".replace("0.", ".", 1) for v in values)


def protocol_table(per_n: dict[int, dict[str, Any]], title: str) -> str:
    """The method's table layout, each n as an "ours" column next to the origin's figure."""
    ns = sorted(per_n)
    header = ["metric"] + [f"n={n} {who}" for n in ns for who in ("ours", "origin")]
    rows: list[list[str]] = []

    def row(label: str, ours: Callable[[dict[str, Any]], str], origin: Callable[[dict[str, Any]], str]) -> None:
        cells = [label]
        for n in ns:
            result = per_n[n]
            # The reason for an empty column is said once, in its first row.
            empty = result.get("note", "n/a") if not rows else "n/a"
            cells.append(ours(result) if result.get("queries") else empty)
            cells.append(origin(ORIGIN_TABLE[n]) if n in ORIGIN_TABLE else "-")
        rows.append(cells)

    row("accuracy (nearest is same person)", lambda r: _pct(r["accuracy"]), lambda o: _pct(o["accuracy"]))
    row("top-5 (same person among nearest 5)", lambda r: _pct(r["top5"]), lambda o: _pct(o["top5"]))
    row("safe (pos <= smallest neg of the set)", lambda r: _pct(r["safe"]), lambda o: _pct(o["safe"]))
    row("pos min / avg / max", lambda r: _triple(r["pos"]), lambda o: _triple(o["pos"]))
    row("neg min / avg / max", lambda r: _triple(r["neg"]), lambda o: _triple(o["neg"]))
    for far in FARS:
        row(f"threshold @ FAR {far:g} / TAR", functools.partial(_far_cell, far=far), lambda o: "-")
    counts = [
        ["identities / queries / vectors"]
        + [
            v
            for n in ns
            for v in (
                f"{per_n[n]['identities']} / {per_n[n]['queries']} / {per_n[n]['vectors']}",
                "523 ids / - / -" if n in ORIGIN_TABLE else "-",
            )
        ]
    ]
    return f"### {title}\n\n" + markdown_table(header, rows + counts)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def read_identity_list(path: Path) -> list[str]:
    """Held-out identities from a run's ``split.json`` ("val") or a plain one-per-line list."""
    path = Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if "val" not in data:
            raise ValueError(f"{path} has no 'val' list: pass a run's split.json")
        return [str(i) for i in data["val"]]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def select_identities(cache_identities: np.ndarray, wanted: list[str] | None, all_identities: bool, cache: Path) -> np.ndarray:
    """Rows of ``cache`` to evaluate: the held-out identities it holds, or all of it.

    ``--identities`` applies to every cache that holds any of them; a cache that holds none
    (Yale B against a CelebA split) is used whole only under ``--all-identities``, so a
    training set is never evaluated whole by accident.
    """
    if wanted is None:
        if not all_identities:
            raise ValueError(f"{cache}: pass --identities runs/<run>/split.json, or --all-identities for held-out sets")
        return np.arange(len(cache_identities))
    rows = np.flatnonzero(np.isin(cache_identities, np.array(wanted)))
    if rows.size:
        return rows
    if all_identities:
        return np.arange(len(cache_identities))
    raise ValueError(f"{cache} holds none of the --identities; add --all-identities to use it whole (e.g. Yale B)")


def cdf_plot(per_n: dict[int, dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [n for n in sorted(per_n) if per_n[n].get("queries")]
    fig, axes = plt.subplots(1, max(1, len(ns)), figsize=(4 * max(1, len(ns)), 3.6), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], ns, strict=False):
        curves = (("_pos_values", "same person", "tab:green"), ("_neg_sample", "different people", "tab:red"))
        for key, label, colour in curves:
            values = np.sort(per_n[n][key])
            if values.size:
                ax.plot(values, np.arange(1, values.size + 1) / values.size, label=label, color=colour)
        ax.set_title(f"n = {n}")
        ax.set_xlabel("distance")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("cumulative share")
    axes[0][0].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_protocol(args: argparse.Namespace) -> dict[str, Any]:
    from training.prepare import CropCache

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    wanted = read_identity_list(args.identities) if args.identities else None
    report: dict[str, Any] = {
        "model": model.path,
        "model_sha256": model.sha256,
        "ns": list(args.n),
        "seed": args.seed,
        "identities_file": str(args.identities) if args.identities else None,
        "distance": "sum((a-b)^2)/2 of L2-normalised vectors",
        "origin": {"name": ORIGIN_NAME, "table": ORIGIN_TABLE},
        "caches": [],
    }
    tables = []
    for cache_dir in args.cache:
        cache = CropCache.load(cache_dir)
        if cache.crops.shape[1] != model.input_size:
            raise ValueError(f"{cache_dir} holds {cache.crops.shape[1]} px crops but the model takes {model.input_size} px")
        rows = select_identities(cache.identities, wanted, args.all_identities, cache_dir)
        embeddings = embed_images(model.embed, cache.crops, rows, desc=f"embedding {Path(cache_dir).name}")
        identities = cache.identities[rows]
        per_n: dict[int, dict[str, Any]] = {}
        for n in args.n:
            vectors, owners = group_vectors(embeddings, identities, n, args.seed)
            result = fused_protocol(vectors, owners, np.random.default_rng(args.seed))
            if not result["queries"]:
                result["note"] = f"n/a: data has no identity with {2 * n} images"
            per_n[n] = result
        name = Path(cache_dir).name
        title = f"{name}: {len(np.unique(identities))} identities, {len(rows)} images, model {Path(model.path).name}"
        degenerate = degenerate_count(embeddings)
        tables.append(protocol_table(per_n, title))
        if degenerate:
            tables.append(f"WARNING: {degenerate} of {len(rows)} embeddings are not unit vectors (a dead head?)\n")
        cdf_plot(per_n, title, out / f"protocol_{name}_cdf.png")
        report["caches"].append(
            {
                "cache": str(cache_dir),
                "name": name,
                "identities": len(np.unique(identities)),
                "images": len(rows),
                "degenerate_embeddings": degenerate,
                "used_whole": wanted is None or not np.isin(cache.identities, np.array(wanted)).any(),
                "per_n": {str(n): {k: v for k, v in r.items() if not k.startswith("_")} for n, r in per_n.items()},
                "cdf_plot": f"protocol_{name}_cdf.png",
            }
        )
    legend = f"origin = the method's published figures, {ORIGIN_NAME}; ours = this model on the data above."
    text = "\n".join(tables) + f"\n{legend}\n"
    print(text)
    (out / "protocol.md").write_text(text)
    (out / "protocol.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


# --------------------------------------------------------------------------- LFW-format pairs


@dataclass(frozen=True)
class Pair:
    fold: int
    name_a: str
    index_a: int  # 1-based image number, LFW's convention
    name_b: str
    index_b: int

    @property
    def same(self) -> bool:
        return self.name_a == self.name_b


def parse_pairs(path: Path) -> tuple[list[Pair], int]:
    """LFW ``pairs.txt``: a "<folds> <per_fold>" header, then per fold ``per_fold`` matched lines
    ``name i j`` followed by ``per_fold`` mismatched lines ``name1 i name2 j``.

    A one-number header (``pairsDevTest.txt``) is read as one fold. Returns (pairs, folds).
    """
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    header = [int(v) for v in lines[0]]
    folds, per_fold = (1, header[0]) if len(header) == 1 else (header[0], header[1])
    body = lines[1:]
    if len(body) != folds * 2 * per_fold:
        raise ValueError(f"{path}: header promises {folds} x 2 x {per_fold} pairs, found {len(body)} lines")
    pairs = []
    for number, parts in enumerate(body):
        fold = number // (2 * per_fold)
        matched_part = number % (2 * per_fold) < per_fold
        if len(parts) == 3 and matched_part:
            pairs.append(Pair(fold, parts[0], int(parts[1]), parts[0], int(parts[2])))
        elif len(parts) == 4 and not matched_part:
            pairs.append(Pair(fold, parts[0], int(parts[1]), parts[2], int(parts[3])))
        else:
            kind = "matched 'name i j'" if matched_part else "mismatched 'name1 i name2 j'"
            raise ValueError(f"{path}:{number + 2}: expected a {kind} line, got {' '.join(parts)!r}")
    return pairs, folds


def identity_files(roots: Sequence[Path], name: str) -> list[Path]:
    """All image files of one identity across the roots, by (root order, file name).

    The same listing as ``training.datasets.read_folder_tree``; image number k of a pairs file
    is entry k - 1 here, whether or not the aligner succeeds on it.
    """
    files: list[Path] = []
    for root in roots:
        folder = Path(root) / name
        if folder.is_dir():
            files.extend(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    return files


class ImageResolver:
    """Maps (name, k) to a file: LFW's ``<name>/<name>_<kkkk>.jpg`` when it exists, else the
    k-th file of the merged, sorted identity folders."""

    def __init__(self, roots: Sequence[Path]):
        self.roots = [Path(r) for r in roots]
        self._listing: dict[str, list[Path]] = {}

    def __call__(self, name: str, k: int) -> Path:
        for root in self.roots:
            lfw = root / name / f"{name}_{k:04d}.jpg"
            if lfw.exists():
                return lfw
        if name not in self._listing:
            self._listing[name] = identity_files(self.roots, name)
        files = self._listing[name]
        if not 1 <= k <= len(files):
            roots = [str(r) for r in self.roots]
            raise FileNotFoundError(f"image {k} of {name!r}: only {len(files)} files under {roots}")
        return files[k - 1]


def read_rgb(path: Path) -> np.ndarray | None:
    """Decode with the service's decoder, as ``training.prepare`` does; None when it refuses the file."""
    from app.core.errors import DomainError
    from app.vision.decode import read_image_file

    try:
        return read_image_file(path)
    except DomainError:
        return None


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold (match when ``distance <= t``) with the best accuracy on these pairs.

    Candidates lie midway between consecutive distinct distances (and just outside both
    ends), so the chosen threshold never sits exactly on a training pair's distance.
    Returns (threshold, accuracy); the first, i.e. smallest, best threshold wins ties.
    """
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    values = np.unique(distances)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    pos, neg = np.sort(distances[same]), np.sort(distances[~same])
    true_accepts = np.searchsorted(pos, candidates, side="right")
    false_accepts = np.searchsorted(neg, candidates, side="right")
    accuracy = (true_accepts + (neg.size - false_accepts)) / distances.size
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


def k_fold_accuracy(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """LFW's protocol: per fold, the threshold that is best on the other folds, tested on it."""
    distances, same, folds = np.asarray(distances, dtype=np.float64), np.asarray(same, bool), np.asarray(folds)
    per_fold = []
    for fold in np.unique(folds):
        test = folds == fold
        train = ~test if (~test).any() else test  # one fold: fit and test on it (said in the report)
        threshold, train_accuracy = best_threshold(distances[train], same[train])
        accuracy = float(((distances[test] <= threshold) == same[test]).mean())
        per_fold.append({"fold": int(fold), "threshold": threshold, "train_accuracy": train_accuracy, "accuracy": accuracy})
    accuracies = np.array([f["accuracy"] for f in per_fold])
    return {"mean_accuracy": float(accuracies.mean()), "std_accuracy": float(accuracies.std()), "folds": per_fold}


def threshold_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> dict[str, Any]:
    """The largest-margin threshold whose false accept rate on these pairs is at most ``far``.

    With ``k = floor(far * negatives)`` negatives allowed below it, the threshold sits midway
    between the k-th and (k+1)-th smallest negative distances (ties are kept out), so it
    generalises a little better than a threshold touching a negative pair.
    """
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, bool)
    neg, pos = np.sort(distances[~same]), distances[same]
    if neg.size == 0 or pos.size == 0:
        raise ValueError("TAR at FAR needs both matched and mismatched pairs")
    allowed = math.floor(far * neg.size + 1e-9)
    if allowed >= neg.size:
        threshold = float(neg[-1])
    else:
        first_out = neg[allowed]
        below = neg[neg < first_out]
        threshold = float((below[-1] + first_out) / 2) if below.size else float(np.nextafter(first_out, -np.inf))
    return {
        "far_target": far,
        "threshold": threshold,
        "far": float((neg <= threshold).mean()),
        "tar": float((pos <= threshold).mean()),
        "negatives": int(neg.size),
        "positives": int(pos.size),
        "negatives_allowed": int(allowed),
    }


def roc_points(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, bool)
    thresholds = np.unique(distances)
    tar = np.searchsorted(np.sort(distances[same]), thresholds, side="right") / max(1, same.sum())
    far = np.searchsorted(np.sort(distances[~same]), thresholds, side="right") / max(1, (~same).sum())
    return far, tar


def roc_plot(distances: np.ndarray, same: np.ndarray, operating: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    far, tar = roc_points(distances, same)
    negatives = max(1, int((~np.asarray(same, bool)).sum()))
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.step(np.maximum(far, 0.5 / negatives), tar, where="post", label="ROC")
    for point in operating:
        ax.plot(
            max(point["far"], 0.5 / negatives),
            point["tar"],
            "o",
            label=f"FAR<={point['far_target']:g}: TAR {point['tar']:.3f} @ t={point['threshold']:.3f}",
        )
    ax.set_xscale("log")
    ax.set_xlim(0.5 / negatives, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (mismatched pairs accepted)")
    ax.set_ylabel("true accept rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_image_list(images_file: Path, resolver: ImageResolver) -> None:
    """Refuse to score a pairs file against a tree that numbers its images differently.

    ``make-pairs`` writes ``<stem>_images.txt`` next to the pairs file: ``name k path`` per
    image used. Image numbers are positions in a folder listing, so a file added to or
    removed from a folder silently renumbers every later image; this catches that.
    """
    for line in images_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, k, recorded = line.split(maxsplit=2)
        found = resolver(name, int(k))
        if Path(recorded).parts[-2:] != found.parts[-2:]:
            raise ValueError(
                f"{images_file}: image {k} of {name} was {recorded} when the pairs were made but is {found} now; "
                "pass the same --root folders in the same order, or regenerate the pairs"
            )


def run_pairs(args: argparse.Namespace) -> dict[str, Any]:
    """Verification on raw photos: decode, align with the service's aligner, embed, compare.

    A photo where the aligner finds no face counts as a failed alignment: every pair using it
    scores ``FAILED_PAIR_DISTANCE`` (2.0, the largest distance), i.e. a non-match, the way
    the service would turn such a person away. Photos with several faces keep the largest
    face, as dataset preparation does (LFW photos often show bystanders).
    """
    from tqdm import tqdm

    from app.vision.align import ALIGNMENT_VERSION, FaceAligner

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pairs, folds = parse_pairs(args.pairs)
    resolver = ImageResolver(args.root)
    images_file = args.pairs.with_name(f"{args.pairs.stem}_images.txt")
    if images_file.exists():
        check_image_list(images_file, resolver)
    model = load_model(args.model)
    needed = sorted({(p.name_a, p.index_a) for p in pairs} | {(p.name_b, p.index_b) for p in pairs})
    paths = {key: resolver(*key) for key in needed}
    crops: dict[tuple[str, int], np.ndarray] = {}
    failures: dict[str, str] = {}
    with FaceAligner(size=model.input_size) as aligner:
        for key in tqdm(needed, desc="aligning", unit="img"):
            rgb = read_rgb(paths[key])
            if rgb is None:
                failures[str(paths[key])] = "decode_error"
                continue
            result = aligner.align(rgb, pick_largest=True)
            if result.face is None:
                failures[str(paths[key])] = "no_face"
                continue
            crops[key] = result.face.crop
    keys = sorted(crops)
    embedded = embed_images(model.embed, np.stack([crops[k] for k in keys])) if keys else np.empty((0, 1))
    degenerate = degenerate_count(embedded)
    vectors = dict(zip(keys, l2_normalise(embedded), strict=True))
    distances = np.array(
        [
            float(np.sum((vectors[(p.name_a, p.index_a)] - vectors[(p.name_b, p.index_b)]) ** 2) / 2.0)
            if (p.name_a, p.index_a) in vectors and (p.name_b, p.index_b) in vectors
            else FAILED_PAIR_DISTANCE
            for p in pairs
        ]
    )
    same = np.array([p.same for p in pairs])
    fold_of = np.array([p.fold for p in pairs])
    accuracy = k_fold_accuracy(distances, same, fold_of)
    operating = [threshold_at_far(distances, same, far) for far in REPORTED_FARS]
    failed_pairs = int(sum((p.name_a, p.index_a) not in vectors or (p.name_b, p.index_b) not in vectors for p in pairs))
    title = f"{args.pairs.name}: {len(pairs)} pairs, model {Path(model.path).name}"
    roc_plot(distances, same, operating, title, out / "pairs_roc.png")
    report = {
        "model": model.path,
        "model_sha256": model.sha256,
        "pairs_file": str(args.pairs),
        "roots": [str(r) for r in args.root],
        "alignment_version": ALIGNMENT_VERSION,
        "folds": folds,
        "pairs": len(pairs),
        "matched": int(same.sum()),
        "mismatched": int((~same).sum()),
        "images": len(needed),
        "failed_alignments": len(failures),
        "failed_pairs": failed_pairs,
        "failed_pair_distance": FAILED_PAIR_DISTANCE,
        "failures": failures,
        "degenerate_embeddings": degenerate,
        "accuracy": accuracy,
        "tar_at_far": {str(o["far_target"]): o for o in operating},
        "roc_plot": "pairs_roc.png",
        "distances": [[int(f), bool(s), round(float(d), 6)] for f, s, d in zip(fold_of, same, distances, strict=True)],
    }
    header = ["metric", "value"]
    rows = [
        ["pairs (matched / mismatched)", f"{len(pairs)} ({int(same.sum())} / {int((~same).sum())}) in {folds} folds"],
        ["images / failed alignments", f"{len(needed)} / {len(failures)} ({failed_pairs} pairs scored as non-matches)"],
        [f"{folds}-fold accuracy (mean ± std)", f"{100 * accuracy['mean_accuracy']:.2f}% ± {100 * accuracy['std_accuracy']:.2f}%"],
    ]
    if degenerate:
        rows.append(["WARNING", f"{degenerate} embeddings are not unit vectors (a dead head?)"])
    if folds == 1:
        rows.append(["note", "one fold only: the threshold was fitted and tested on the same pairs"])
    rows += [
        [
            f"TAR @ FAR {100 * o['far_target']:g}%",
            f"{100 * o['tar']:.2f}% at threshold {o['threshold']:.4f} "
            f"(actual FAR {100 * o['far']:.3f}%, {o['negatives_allowed']} of {o['negatives']} negatives allowed)",
        ]
        for o in operating
    ]
    text = f"### {title}\n\n" + markdown_table(header, rows)
    print(text)
    (out / "pairs.md").write_text(text)
    (out / "pairs.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return report


# --------------------------------------------------------------------------- make-pairs


def _roots_from_paths(paths: Sequence[str]) -> list[Path]:
    """The dataset roots a cache was prepared from, in the order ``prepare`` read them."""
    seen: dict[Path, None] = {}
    for p in paths:
        seen.setdefault(Path(p).parent.parent, None)
    return list(seen)


def _usable_images(roots: Sequence[Path], identities: Sequence[str], aligned: set[str]) -> dict[str, list[tuple[int, Path]]]:
    """Per identity, the (1-based image number, path) of every image the aligner succeeded on."""
    usable = {}
    for name in identities:
        files = identity_files(roots, name)
        usable[name] = [(k, f) for k, f in enumerate(files, 1) if os.path.normpath(f) in aligned]
    return usable


def _assign_folds(capacity: dict[str, int], folds: int, rng: np.random.Generator) -> list[list[str]]:
    """Identity-disjoint folds with balanced matched-pair capacity (greedy, randomised ties)."""
    names = list(capacity)
    order = sorted(rng.permutation(len(names)), key=lambda i: -capacity[names[i]])
    buckets: list[list[str]] = [[] for _ in range(folds)]
    load = np.zeros(folds)
    for i in order:
        target = int(np.argmin(load + rng.random(folds) * 1e-3))
        buckets[target].append(names[i])
        load[target] += capacity[names[i]]
    return buckets


def _sample_pairs(
    usable: dict[str, list[tuple[int, Path]]],
    names: Sequence[str],
    count: int,
    used: set[tuple[tuple[str, int], tuple[str, int]]],
    rng: np.random.Generator,
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, str, int]]] | None:
    """``count`` matched and ``count`` mismatched pairs among ``names``, none in ``used``.

    Matched pairs go round the identities one pair each, so many people contribute rather
    than the few with many photos. Returns None when the identities cannot supply enough.
    """

    def key(a: tuple[str, int], b: tuple[str, int]) -> tuple[tuple[str, int], tuple[str, int]]:
        return (a, b) if a <= b else (b, a)

    options = {n: [p for p in itertools.combinations([k for k, _ in usable[n]], 2) if key((n, p[0]), (n, p[1])) not in used] for n in names}
    if sum(len(v) for v in options.values()) < count:
        return None
    for n in options:
        options[n] = [options[n][i] for i in rng.permutation(len(options[n]))]
    matched: list[tuple[str, int, int]] = []
    cycle = [n for n in rng.permutation(list(names)) if options[n]]
    while len(matched) < count:
        cycle = [n for n in cycle if options[n]]
        for n in cycle:
            if len(matched) == count:
                break
            i, j = options[n].pop()
            matched.append((str(n), i, j))
    with_images = [n for n in names if usable[n]]
    images = sum(len(usable[n]) for n in with_images)
    possible = (images * images - sum(len(usable[n]) ** 2 for n in with_images)) // 2
    inside = set(names)
    already = sum(1 for a, b in used if a[0] != b[0] and a[0] in inside and b[0] in inside)
    if len(with_images) < 2 or possible - already < count:
        return None
    mismatched: list[tuple[str, int, str, int]] = []
    taken: set[tuple[tuple[str, int], tuple[str, int]]] = set()
    attempts = 0
    while len(mismatched) < count:
        attempts += 1
        if attempts > 200 * count + 10_000:
            return None
        a, b = rng.choice(len(with_images), size=2, replace=False)
        na, nb = with_images[a], with_images[b]
        ia = usable[na][rng.integers(len(usable[na]))][0]
        ib = usable[nb][rng.integers(len(usable[nb]))][0]
        pair_key = key((na, ia), (nb, ib))
        if pair_key in used or pair_key in taken:
            continue
        taken.add(pair_key)
        first, second = sorted([(na, ia), (nb, ib)])
        mismatched.append((first[0], first[1], second[0], second[1]))
    for name, i, j in matched:
        used.add(key((name, i), (name, j)))
    used.update(taken)
    return matched, mismatched


def run_make_pairs(args: argparse.Namespace) -> dict[str, Any]:
    """Write an LFW-format pairs file over held-out identities of a prepared cache.

    Folds are identity-disjoint like LFW's when the identities allow it; otherwise identities
    repeat across folds (said on stdout and in the README) but no pair is ever used twice.
    Only images the aligner succeeded on (rows of the cache's ``index.csv``) are used, and
    image numbers count every file of the identity, so the file reads against the raw tree.
    """
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with (Path(args.cache) / "index.csv").open(newline="") as handle:
        index = list(csv.DictReader(handle))
    if not index:
        raise ValueError(f"{args.cache}/index.csv lists no crops")
    roots = [Path(r) for r in args.root] if args.root else _roots_from_paths([r["path"] for r in index])
    cache_ids = sorted({r["identity"] for r in index})
    if args.identities:
        wanted = set(read_identity_list(args.identities))
        names = [n for n in cache_ids if n in wanted]
        if not names:
            raise ValueError(f"{args.cache} holds none of the identities in {args.identities}")
    elif args.all_identities:
        names = cache_ids
    else:
        raise ValueError("pass --identities runs/<run>/split.json (held-out identities), or --all-identities")
    aligned = {os.path.normpath(r["path"]) for r in index}
    usable = _usable_images(roots, names, aligned)
    missing = [n for n in names if not identity_files(roots, n)]
    if missing:
        where = [str(r) for r in roots]
        raise FileNotFoundError(f"{len(missing)} identities (e.g. {missing[0]}) have no folder under {where}")
    rng = np.random.default_rng(args.seed)
    capacity = {n: len(v) * (len(v) - 1) // 2 for n, v in usable.items()}
    used: set[tuple[tuple[str, int], tuple[str, int]]] = set()
    fold_pairs = []
    disjoint = True
    for bucket in _assign_folds(capacity, args.folds, rng):
        made = _sample_pairs(usable, bucket, args.per_fold, used, rng)
        if made is None:
            disjoint = False
            break
        fold_pairs.append(made)
    if not disjoint:
        print(
            f"warning: {len(names)} identities cannot fill {args.folds} identity-disjoint folds of {args.per_fold} "
            "matched + mismatched pairs; identities repeat across folds (no pair repeats)",
            file=sys.stderr,
        )
        used.clear()
        fold_pairs = []
        for _ in range(args.folds):
            made = _sample_pairs(usable, names, args.per_fold, used, rng)
            if made is None:
                raise ValueError(
                    f"{len(names)} identities cannot supply {args.folds} x {args.per_fold} distinct pairs "
                    "of each kind: lower --per-fold or --folds"
                )
            fold_pairs.append(made)
    lines = [f"{args.folds} {args.per_fold}"]
    for matched, mismatched in fold_pairs:
        lines += [f"{n} {i} {j}" for n, i, j in matched] + [f"{a} {i} {b} {j}" for a, i, b, j in mismatched]
    out.write_text("\n".join(lines) + "\n")
    paths = {(n, k): f for n in names for k, f in usable[n]}
    fold_images = [
        {(n, k) for n, i, j in matched for k in (i, j)} | {img for a, i, b, j in mismatched for img in ((a, i), (b, j))}
        for matched, mismatched in fold_pairs
    ]
    used_images = sorted(set().union(*fold_images))
    images_file = out.with_name(f"{out.stem}_images.txt")
    images_file.write_text(
        "# name k path: image number k of identity name (1-based, see the README)\n"
        + "".join(f"{n} {k} {paths[(n, k)]}\n" for n, k in used_images)
    )
    readme = out.with_name(f"{out.stem}_README.txt")
    readme.write_text(
        f"{out.name}: LFW-format verification pairs made by `python -m training.evaluate make-pairs`.\n\n"
        f"cache: {args.cache}\nidentities: {args.identities or 'every identity of the cache'} ({len(names)} used)\n"
        f"folds: {args.folds}, {args.per_fold} matched + {args.per_fold} mismatched pairs each, seed {args.seed}\n"
        f"identity-disjoint folds: {'yes' if disjoint else 'NO (too few identities; pairs never repeat)'}\n"
        f"roots, in order: {', '.join(str(r) for r in roots)}\n\n"
        "Image number k of identity X is the k-th file (1-based) of X's folders under the roots above,\n"
        "listed root by root in that order and by file name within a folder, counting every image file\n"
        "(extensions: " + ", ".join(sorted(IMAGE_SUFFIXES)) + ") whether or not the aligner finds a face in it.\n"
        "Only images the aligner succeeded on during preparation (the cache's index.csv) were drawn.\n"
        f"{images_file.name} lists every image used as 'name k path'; `pairs` checks it when it sits next to\n"
        "the pairs file, so a changed tree is refused instead of silently renumbered. Evaluate with:\n\n"
        f"  python -m training.evaluate pairs {' '.join(f'--root {r}' for r in roots)} --pairs {out} "
        "--model runs/main/best.keras --out <dir>\n"
    )
    summary = {
        "pairs_file": str(out),
        "folds": args.folds,
        "per_fold": args.per_fold,
        "identities": len(names),
        "identity_disjoint": disjoint,
        "roots": [str(r) for r in roots],
        "images_used": len(used_images),
        "identities_per_fold": [len({n for n, _ in images}) for images in fold_images],
    }
    print(markdown_table(["item", "value"], [[k, str(v)] for k, v in summary.items()]))
    return summary


# --------------------------------------------------------------------------- curves


def read_history(path: Path) -> dict[str, np.ndarray]:
    """``history.csv`` as columns; a resumed run's repeated epochs keep their last row."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} has no epochs yet")
    by_epoch = {int(float(r["epoch"])): r for r in rows}
    epochs = sorted(by_epoch)
    columns = {k for r in rows for k in r if k != "epoch"}
    history = {"epoch": np.array(epochs) + 1}
    for column in sorted(columns):
        history[column] = np.array([float(by_epoch[e].get(column) or "nan") for e in epochs])
    return history


def run_curves(args: argparse.Namespace) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    history = read_history(args.history)
    metrics = [
        ("loss", "pair loss"),
        ("accuracy", "batch accuracy"),
        ("mean_pos", "mean positive distance"),
        ("mean_neg", "mean negative distance"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (metric, label) in zip(axes.flat, metrics, strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + metric in history:
                ax.plot(history["epoch"], history[prefix + metric], style, label="val" if prefix else "train")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(str(args.history))
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    best = int(np.nanargmin(history["val_loss"])) if "val_loss" in history else None
    summary: dict[str, Any] = {"history": str(args.history), "epochs": len(history["epoch"]), "plot": "curves.png"}
    if best is not None:
        summary["best"] = {k: (int(v[best]) if k == "epoch" else float(v[best])) for k, v in history.items()}
    last = {k: (int(v[-1]) if k == "epoch" else float(v[-1])) for k, v in history.items()}
    summary["last"] = last
    order = ("loss", "val_loss", "accuracy", "val_accuracy", "mean_pos", "val_mean_pos", "mean_neg", "val_mean_neg")
    shown = [m for m in order if m in history]
    rows = [
        [name, str(row["epoch"]), *(f"{row[m]:.4f}" for m in shown)]
        for name, row in (("best (val_loss)", summary.get("best")), ("last", last))
        if row
    ]
    print(markdown_table(["row", "epoch (1-based)", *shown], rows))
    (out / "curves.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_learning_curve(args: argparse.Namespace) -> dict[str, Any]:
    """Best validation figures of runs that differ only in how many identities they trained on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    for run in args.run:
        config = json.loads((run / "config.json").read_text())
        history = read_history(run / "history.csv")
        best = int(np.nanargmin(history["val_loss"]))
        points.append(
            {
                "run": str(run),
                "train_identities": int(config["train_identities"]),
                "train_images": int(config["train_images"]),
                "epochs": len(history["epoch"]),
                "best_epoch": int(history["epoch"][best]),
                "val_loss": float(history["val_loss"][best]),
                "val_accuracy": float(history["val_accuracy"][best]),
                "max_val_accuracy": float(np.nanmax(history["val_accuracy"])),
                "train_accuracy": float(history["accuracy"][best]),
            }
        )
    points.sort(key=lambda p: p["train_identities"])
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["train_identities"] for p in points]
    ax.plot(xs, [p["val_accuracy"] for p in points], "o-", label="val accuracy at best val loss")
    ax.plot(xs, [p["train_accuracy"] for p in points], "s--", label="train accuracy (augmented)")
    ax.set_xscale("log")
    ax.set_xlabel("training identities")
    ax.set_ylabel("pair-batch accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(args.title)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    plt.close(fig)
    rows = [
        [
            str(p["train_identities"]),
            str(p["train_images"]),
            str(p["best_epoch"]),
            f"{p['val_loss']:.4f}",
            _pct(p["val_accuracy"]),
            _pct(p["train_accuracy"]),
        ]
        for p in points
    ]
    print(markdown_table(["identities", "images", "best epoch", "val loss", "val accuracy", "train accuracy"], rows))
    summary = {"title": args.title, "points": points, "plot": "learning_curve.png"}
    (out / "learning_curve.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("protocol", help="the method's fused-vector protocol on held-out identities")
    p.add_argument("--cache", type=Path, action="append", required=True, help="crop cache (repeatable; each is reported separately)")
    p.add_argument("--model", type=Path, required=True, help=".keras or .tflite embedder")
    p.add_argument("--identities", type=Path, help="a run's split.json (its 'val' list) or one identity per line")
    p.add_argument(
        "--all-identities",
        action="store_true",
        help="use whole every cache holding none of --identities (or every cache, without --identities)",
    )
    p.add_argument("--n", type=int, nargs="+", default=list(DEFAULT_NS), help="images fused per vector")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_protocol)

    p = sub.add_parser("make-pairs", help="an LFW-format pairs.txt over held-out identities")
    p.add_argument("--cache", type=Path, required=True, help="crop cache whose index.csv lists the aligned images")
    p.add_argument("--identities", type=Path, help="a run's split.json (its 'val' list) or one identity per line")
    p.add_argument("--all-identities", action="store_true", help="every identity of the cache (a wholly held-out set)")
    p.add_argument(
        "--root",
        type=Path,
        action="append",
        default=[],
        help="raw image roots in order (repeatable); default: the roots of the cache's index paths",
    )
    p.add_argument("--out", type=Path, required=True, help="pairs file to write")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--per-fold", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_make_pairs)

    p = sub.add_parser("pairs", help="LFW-format verification on raw photos, 10-fold and TAR at FAR")
    p.add_argument("--root", type=Path, action="append", required=True, help="image root (repeatable, merged by name)")
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help=".keras or .tflite embedder")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_pairs)

    p = sub.add_parser("curves", help="training curves from a run's history.csv")
    p.add_argument("--history", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_curves)

    p = sub.add_parser("learning-curve", help="best validation figures of runs over training-set size")
    p.add_argument("--run", type=Path, action="append", required=True, help="a run directory (repeatable)")
    p.add_argument("--title", default="learning curve")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_learning_curve)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result: dict[str, Any] = args.func(args)
    return result


if __name__ == "__main__":
    main()
