"""Thresholds by frames fused: how far a burst of n frames lies from a 5-frame template.

    python -m training.bursts --cache var/crops/train --identities runs/distill-main/split.json \\
        --model model_store/<id>/model.tflite --out var/eval/bursts
    python -m training.bursts --cache var/crops/yale_b --all-identities --model ... --out var/eval/bursts_yale

The service enrols a person from a burst (a template fused from ``--template-frames`` frames)
and identifies from a burst of 1..16 frames, fused the same way. Fused distances shrink as
frames are added, for the right person and for strangers alike, so one threshold cannot
hold one false-accept rate at every burst size: this measures the threshold for each size.

Each held-out person's photos are split into template photos and query photos; a frame is
one photo under a random door-camera change (``training.data.door_augmentation``), so a
burst of 16 frames from 3 photos looks like 16 video frames of one visit. For each n and
each repetition every person gets a template and a query burst; every query is compared
with every template: the diagonal gives the genuine distances, the rest the impostor ones
(a stranger's burst against someone else's template). Two rates per threshold:

- ``far``: share of impostor comparisons within the threshold (per comparison);
- ``stranger_grant_rate``: share of impostor bursts whose nearest *other* template is within
  it: how often a never-enrolled person would be let in, with this many people enrolled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.matching.fusion import l2_normalise
from training.data import door_augmentation

FRAMES = tuple(range(1, 17))
# Histogram bins of the distances (the whole 0..2 scale, 0.02 wide) kept for the threshold page.
HISTOGRAM_BINS = np.round(np.linspace(0.0, 2.0, 101), 4)
FARS = (0.01, 0.001, 0.0001, 0.00001)
TEMPLATE_FRAMES = 5


def threshold_table(genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float] = FARS) -> dict[str, dict[str, Any]]:
    from training.eval.metrics import threshold_at_far

    same = np.concatenate([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)])
    distances = np.concatenate([genuine, impostor])
    table = {}
    for far in fars:
        if far * len(impostor) < 1:
            continue  # not resolved by this many impostor comparisons
        point = threshold_at_far(distances, same, far)
        table[str(far)] = {k: point[k] for k in ("threshold", "far", "tar", "negatives", "positives")}
    return table


def histogram(distances: np.ndarray) -> list[int]:
    """Counts of distances in HISTOGRAM_BINS (the last bin holds 2.0 itself)."""
    return [int(c) for c in np.histogram(np.clip(distances, 0.0, 2.0), bins=HISTOGRAM_BINS)[0]]


def split_photos(rows: np.ndarray, seed: int, identity: str) -> tuple[np.ndarray, np.ndarray]:
    """Template photos and query photos of one person (half each; the template gets the odd one)."""
    key = int.from_bytes(hashlib.sha256(f"{seed}:{identity}".encode()).digest()[:8], "big")
    order = np.random.default_rng(key).permutation(rows)
    cut = (len(order) + 1) // 2
    return order[:cut], order[cut:]


def burst_distances(
    vectors: np.ndarray, templates: list[np.ndarray], queries: list[np.ndarray], n: int, template_frames: int, rng: np.random.Generator
) -> np.ndarray:
    """(person x person) distances of one repetition: query bursts of n frames against templates.

    ``vectors`` is (variants, photos, d); a frame is a random (variant, photo) of the person's own photos.
    """
    variants = vectors.shape[0]

    def fused(photos: np.ndarray, frames: int) -> np.ndarray:
        picks = rng.choice(photos, size=frames, replace=True)
        return vectors[rng.integers(0, variants, size=frames), picks].sum(axis=0)

    t = l2_normalise(np.stack([fused(p, template_frames) for p in templates]))
    q = l2_normalise(np.stack([fused(p, n) for p in queries]))
    return np.maximum(1.0 - q @ t.T, 0.0)


def evaluate_bursts(
    vectors: np.ndarray,
    owners: np.ndarray,
    frames: Sequence[int] = FRAMES,
    repetitions: int = 3,
    template_frames: int = TEMPLATE_FRAMES,
    seed: int = 0,
) -> dict[str, Any]:
    """Genuine and impostor distances by burst size, thresholds at each FAR, and stranger grant rates."""
    people = [p for p in np.unique(owners) if (owners == p).sum() >= 2]
    if len(people) < 3:
        raise ValueError(f"bursts need at least 3 people with 2 or more photos, got {len(people)}")
    splits = [split_photos(np.flatnonzero(owners == p), seed, str(p)) for p in people]
    templates, queries = [s[0] for s in splits], [s[1] for s in splits]
    rng = np.random.default_rng(seed)
    per_n: dict[str, Any] = {}
    off_diagonal = ~np.eye(len(people), dtype=bool)
    for n in frames:
        genuine, impostor, nearest_other = [], [], []
        for _ in range(repetitions):
            d = burst_distances(vectors, templates, queries, n, template_frames, rng)
            genuine.append(np.diag(d))
            impostor.append(d[off_diagonal])
            nearest_other.append(np.where(off_diagonal, d, np.inf).min(axis=1))
        g, i, nearest = np.concatenate(genuine), np.concatenate(impostor), np.concatenate(nearest_other)
        table = threshold_table(g, i)
        for point in table.values():
            point["stranger_grant_rate"] = float((nearest <= point["threshold"]).mean())
        per_n[str(n)] = {
            "genuine": {"count": int(g.size), "mean": float(g.mean()), "p95": float(np.percentile(g, 95))},
            "impostor": {"count": int(i.size), "mean": float(i.mean()), "min": float(i.min()), "p01": float(np.percentile(i, 1))},
            "by_far": table,
            "histogram": {"genuine": histogram(g), "impostor": histogram(i)},
        }
    return {
        "histogram_bins": HISTOGRAM_BINS.tolist(),
        "people": len(people),
        "enrolled_per_stranger": len(people) - 1,
        "template_frames": template_frames,
        "repetitions": repetitions,
        "variants": int(vectors.shape[0]),
        "per_n": per_n,
    }


def embed_variants(embed: Any, crops: np.ndarray, variants: int, seed: int) -> np.ndarray:
    """(variants, photos, d): variant 0 is the photo as aligned, the others door-camera changes of it."""
    from training.eval.common import embed_images

    aug = door_augmentation(seed)
    out = [embed_images(embed, crops, desc="embedding")]
    for v in range(1, variants):
        changed = np.stack([aug(image=np.asarray(c))["image"] for c in crops])
        out.append(embed_images(embed, changed, desc=f"variant {v}"))
    return l2_normalise(np.stack(out))


def table_markdown(report: dict[str, Any], far: float = 0.001) -> str:
    lines = [
        f"Bursts of n frames against {report['template_frames']}-frame templates, {report['people']} people "
        f"({report['enrolled_per_stranger']} enrolled per stranger), FAR {far:g} per comparison:",
        "",
        "| n | threshold | TAR | FAR | strangers granted | genuine mean | impostor mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, row in report["per_n"].items():
        point = row["by_far"].get(str(far))
        if point is None:
            continue
        lines.append(
            f"| {n} | {point['threshold']:.4f} | {100 * point['tar']:.2f}% | {100 * point['far']:.3f}% | "
            f"{100 * point['stranger_grant_rate']:.2f}% | {row['genuine']['mean']:.3f} | {row['impostor']['mean']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from training.eval.common import _json_default, load_model, read_identity_list, select_identities
    from training.prepare import CropCache

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--identities", type=Path, help="split.json (its held-out 'val') or a file of identities, one a line")
    parser.add_argument("--all-identities", action="store_true", help="every identity of the cache (a set never trained on)")
    parser.add_argument("--model", type=Path, required=True, help=".keras or .tflite embedder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", type=int, default=4, help="changed copies per photo, the original included")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--template-frames", type=int, default=TEMPLATE_FRAMES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.identities and not args.all_identities:
        parser.error("give --identities or --all-identities")
    cache = CropCache.load(args.cache)
    wanted = read_identity_list(args.identities) if args.identities else None
    rows = select_identities(cache.identities, wanted, args.all_identities, args.cache)
    model = load_model(args.model)
    vectors = embed_variants(model.embed, np.asarray(cache.crops[rows]), args.variants, args.seed)
    report = evaluate_bursts(
        vectors, cache.identities[rows], repetitions=args.repetitions, template_frames=args.template_frames, seed=args.seed
    )
    report.update(model=str(args.model), model_sha256=model.sha256, cache=str(args.cache), cache_name=Path(args.cache).name)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bursts.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    text = table_markdown(report)
    (args.out / "bursts.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
