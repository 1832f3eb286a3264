"""Writing an LFW-format pairs file from held-out identities (folds of people, matched and mismatched pairs)."""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets import IMAGE_SUFFIXES
from training.eval.common import markdown_table, read_identity_list
from training.eval.pairs import identity_files


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
