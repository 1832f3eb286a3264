"""The method's protocol: fused vectors of n photos per person, nearest-neighbour accuracy, distance distributions and thresholds by FAR."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.matching.fusion import fuse
from training.eval.common import (
    ORIGIN_NAME,
    ORIGIN_TABLE,
    _json_default,
    _pct,
    _stats,
    _triple,
    degenerate_count,
    embed_images,
    load_model,
    markdown_table,
    read_identity_list,
    select_identities,
)
from training.eval.metrics import FARS, far_thresholds


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
    result["_hits"] = hits[is_query]  # per query, in the order of ``vectors``: for paired comparisons
    result["_neg_sample"] = np.concatenate(neg_sample) if neg_sample else np.empty(0)
    return result


def _far_cell(result: dict[str, Any], far: float) -> str:
    point = (result.get("far_thresholds") or {}).get(str(far)) or {}
    if point.get("threshold") is None:
        return "n/a"
    return f"{point['threshold']:.3f} / {_pct(point['tar'])}"


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
