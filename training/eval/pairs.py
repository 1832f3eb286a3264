"""LFW-format pairs: parsing, resolving photos, embedding through the service's aligner, k-fold accuracy, TAR at FAR, ROC."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.matching.fusion import l2_normalise
from training.datasets import IMAGE_SUFFIXES
from training.eval.common import (
    FAILED_PAIR_DISTANCE,
    REPORTED_FARS,
    _json_default,
    degenerate_count,
    embed_images,
    load_model,
    markdown_table,
)
from training.eval.metrics import k_fold_accuracy, roc_points, threshold_at_far


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
