"""Two embedders on the same queries: which single photos each one identifies, and whether the difference is chance.

The protocol's n=1 cell (the nearest other photo is the same person's) is counted per query
for both models, and the queries where only one of them is right are tested with McNemar's
exact test (a two-sided binomial test on those discordant queries). Pairing the queries is
what makes a gain of a point or two on ~1,800 photos testable: most queries are right (or
wrong) with both models and carry no evidence either way.

``compare-pairs`` does the same for two ``pairs`` evaluations of one pairs file: a pair is
right when its distance falls on the correct side of its fold's threshold (each model at its
own 10-fold thresholds, the figures its accuracy is the mean of), and the pairs only one model
gets right are tested the same way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from training.eval.common import _json_default, embed_images, load_model, markdown_table, read_identity_list, select_identities
from training.eval.protocol import fused_protocol, group_vectors


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Counts of the discordant queries and McNemar's exact two-sided p-value."""
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    p = float(binomtest(only_b, only_a + only_b).pvalue) if only_a + only_b else 1.0
    accuracy = {"accuracy_a": float(a.mean()), "accuracy_b": float(b.mean())}
    return {"queries": len(a), **accuracy, "only_a": only_a, "only_b": only_b, "p_value": p}


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    from training.prepare import CropCache

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    models = [load_model(args.model_a), load_model(args.model_b)]
    wanted = read_identity_list(args.identities) if args.identities else None
    report: dict[str, Any] = {
        "model_a": models[0].path,
        "model_a_sha256": models[0].sha256,
        "model_b": models[1].path,
        "model_b_sha256": models[1].sha256,
        "caches": [],
    }
    rows_out = []
    for cache_dir in args.cache:
        cache = CropCache.load(cache_dir)
        rows = select_identities(cache.identities, wanted, args.all_identities, cache_dir)
        right = []
        for m in models:
            embeddings = embed_images(m.embed, cache.crops, rows, desc=f"embedding {Path(cache_dir).name}")
            # The protocol's own n=1 cell, query by query: the same queries, distances and ties.
            vectors, owners = group_vectors(embeddings, cache.identities[rows], 1, args.seed)
            right.append(fused_protocol(vectors, owners, np.random.default_rng(args.seed)).get("_hits", np.zeros(0, bool)))
        result = {"cache": str(cache_dir), "name": Path(cache_dir).name, **mcnemar(*right)}
        report["caches"].append(result)
        rows_out.append(
            [
                result["name"],
                str(result["queries"]),
                f"{result['accuracy_a']:.2%}",
                f"{result['accuracy_b']:.2%}",
                str(result["only_a"]),
                str(result["only_b"]),
                f"{result['p_value']:.3g}",
            ]
        )
    header = ["set", "queries", "A: n=1 accuracy", "B: n=1 accuracy", "right only with A", "right only with B", "McNemar exact p"]
    table = f"A = {models[0].path}\nB = {models[1].path}\n\n" + markdown_table(header, rows_out)
    print(table)
    (out / "compare.md").write_text(table + "\n")
    (out / "compare.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return report


def pair_decisions(report: dict[str, Any]) -> np.ndarray:
    """Whether each pair of a ``pairs`` evaluation is classified right at its own fold's threshold (the 10-fold accuracy, pair by pair)."""
    thresholds = {f["fold"]: f["threshold"] for f in report["accuracy"]["folds"]}
    return np.array([(distance <= thresholds[fold]) == bool(same) for fold, same, distance in report["distances"]], dtype=bool)


def run_compare_pairs(args: argparse.Namespace) -> dict[str, Any]:
    reports = [json.loads(Path(p).read_text()) for p in (args.pairs_a, args.pairs_b)]
    if len({r["pairs_file"] for r in reports}) != 1 or len({len(r["distances"]) for r in reports}) != 1:
        raise ValueError("the two evaluations are of different pairs: run both on the same --pairs file")
    if [(f, s) for f, s, _ in reports[0]["distances"]] != [(f, s) for f, s, _ in reports[1]["distances"]]:
        raise ValueError("the two evaluations list their pairs in different orders or folds")
    result = {
        "pairs_file": reports[0]["pairs_file"],
        "model_a": reports[0]["model"],
        "model_a_sha256": reports[0]["model_sha256"],
        "model_b": reports[1]["model"],
        "model_b_sha256": reports[1]["model_sha256"],
        **mcnemar(*(pair_decisions(r) for r in reports)),
    }
    header = ["pairs", "A: accuracy", "B: accuracy", "right only with A", "right only with B", "McNemar exact p"]
    row = [
        str(result["queries"]),
        f"{result['accuracy_a']:.2%}",
        f"{result['accuracy_b']:.2%}",
        str(result["only_a"]),
        str(result["only_b"]),
        f"{result['p_value']:.3g}",
    ]
    table = f"A = {result['model_a']}\nB = {result['model_b']}\npairs = {result['pairs_file']}\n\n" + markdown_table(header, [row])
    print(table)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_pairs.md").write_text(table + "\n")
    (out / "compare_pairs.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    return result
