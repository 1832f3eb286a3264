"""facegate against `face_recognition` (dlib's ResNet descriptor), side by side in one run:
the cost of one frame each, on the same 640x480 door-camera frames, and the accuracy of each
on the same held-out LFW-format pairs (so speed is never bought with accuracy unseen).

    .venv/bin/pip install -e '.[compare]'           # dlib-bin + face-recognition-models (CC0 weights)
    python -m bench.versus_dlib                     # 60 frames, 600 pairs
    python -m bench.versus_dlib --frames 100 --pairs 6000

Per frame, each pipeline does what it needs to compare a face: facegate decodes, aligns with
Face Mesh and embeds with its LiteRT MobileNetV2 (one thread of each, as the service runs a
frame, and again with the service's 2 threads); dlib (what `face_recognition` calls) decodes,
finds the face with its HOG detector, places 5 landmarks and computes the 128-d descriptor.
Accuracy: the repository's held-out pairs (docs/eval/pairs/celeba_holdout_pairs.txt, people
the shipped model never saw), 10-fold as LFW, on the pairs where both found both faces; each
method's own distance (facegate: 1 - cosine; dlib: Euclidean).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.camera import face_photos, frame_from_photo
from bench.paths import QUIET_ENV, REPO_ROOT, SHARED

for _key, _value in QUIET_ENV.items():
    os.environ.setdefault(_key, _value)

PAIRS = REPO_ROOT / "docs" / "eval" / "pairs" / "celeba_holdout_pairs.txt"
ROOTS = [SHARED / "data" / "faces" / "celeba_aligned", SHARED / "data" / "faces" / "celeba_wild"]


class Dlib:
    """What face_recognition.face_encodings does, called directly on dlib."""

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models as models
        except ImportError as exc:
            raise SystemExit("dlib is not installed: .venv/bin/pip install -e '.[compare]'") from exc
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def embed(self, rgb: np.ndarray, upsample: int = 1) -> np.ndarray | None:
        boxes = self.detector(rgb, upsample)
        if not boxes:
            return None
        box = max(boxes, key=lambda b: b.width() * b.height())
        return np.array(self.encoder.compute_face_descriptor(rgb, self.shape(rgb, box), 0))


class Facegate:
    """The service's own per-frame path: decode, Face Mesh alignment, LiteRT embedding."""

    def __init__(self, threads: int) -> None:
        from app.vision.align import FaceAligner
        from app.vision.embedder import Embedder, ModelPackage, find_package

        package = ModelPackage.open(find_package(REPO_ROOT / "model_store"))
        self.aligner = FaceAligner(size=package.input_size)
        self.embedder = Embedder(package, num_threads=threads)

    def embed(self, rgb: np.ndarray) -> np.ndarray | None:
        face = self.aligner.align(rgb).face
        return None if face is None else self.embedder.embed(face.crop[None].astype(np.float32))[0]


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def per_frame_ms(embed: Any, frames: list[bytes]) -> dict[str, float]:
    for data in frames[:3]:
        embed(decode(data))
    samples, found = [], 0
    for data in frames:
        start = time.perf_counter()
        vector = embed(decode(data))
        samples.append((time.perf_counter() - start) * 1000)
        found += vector is not None
    return {
        "p50_ms": round(float(np.percentile(samples, 50)), 2),
        "p95_ms": round(float(np.percentile(samples, 95)), 2),
        "faces_found": found,
    }


def pair_accuracy(limit: int, facegate: Facegate, dlib_model: Dlib) -> dict[str, Any]:
    from training.eval.metrics import k_fold_accuracy
    from training.eval.pairs import ImageResolver, parse_pairs, read_rgb

    pairs, _ = parse_pairs(PAIRS)
    # An even share of every fold, matched and mismatched alike.
    by_fold: dict[int, list[Any]] = {}
    for pair in pairs:
        by_fold.setdefault(pair.fold, []).append(pair)
    share = max(1, limit // max(1, len(by_fold)))
    chosen = []
    for fold_pairs in by_fold.values():
        matched = [p for p in fold_pairs if p.same][: share // 2]
        mismatched = [p for p in fold_pairs if not p.same][: share - share // 2]
        chosen.extend(matched + mismatched)
    resolve = ImageResolver(ROOTS)
    cache: dict[tuple[str, int], tuple[np.ndarray | None, np.ndarray | None]] = {}

    def vectors(name: str, k: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if (name, k) not in cache:
            rgb = read_rgb(resolve(name, k))
            # Small photos (CelebA's 89x109 crops): dlib's detector needs them upsampled twice.
            cache[(name, k)] = (None, None) if rgb is None else (facegate.embed(rgb), dlib_model.embed(rgb, upsample=2))
        return cache[(name, k)]

    rows = []
    for pair in chosen:
        (fa, da), (fb, db) = vectors(pair.name_a, pair.index_a), vectors(pair.name_b, pair.index_b)
        rows.append((pair, fa, fb, da, db))
    both = [(p, fa, fb, da, db) for p, fa, fb, da, db in rows if fa is not None and fb is not None and da is not None and db is not None]
    same = np.array([p.same for p, *_ in both])
    folds = np.array([p.fold for p, *_ in both])
    ours = np.array([1.0 - float(np.dot(fa, fb)) for _, fa, fb, _, _ in both])
    theirs = np.array([float(np.linalg.norm(da - db)) for *_, da, db in both])
    images = len(cache)
    return {
        "pairs_asked": len(chosen),
        "pairs_scored": len(both),
        "images": images,
        "facegate_faces_found": sum(v[0] is not None for v in cache.values()),
        "dlib_faces_found": sum(v[1] is not None for v in cache.values()),
        "facegate": k_fold_accuracy(ours, same, folds),
        "dlib": k_fold_accuracy(theirs, same, folds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=600, help="held-out pairs to score (6,000 in the file)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/versus_dlib.json"))
    args = parser.parse_args()
    people = face_photos()
    rng = np.random.default_rng(0)
    photos = [p for paths in people.values() for p in paths[:1]][: args.frames]
    frames = [frame_from_photo(p, rng) for p in photos]
    dlib_model = Dlib()
    rows = {}
    for threads in (1, 2):
        rows[f"facegate ({threads} thread{'s' if threads > 1 else ''})"] = per_frame_ms(Facegate(threads).embed, frames)
    rows["dlib / face_recognition (HOG + ResNet)"] = per_frame_ms(dlib_model.embed, frames)
    print(f"per 640x480 frame, {len(frames)} frames (decode + find + align + embed):")
    print("| pipeline | p50 ms | p95 ms | faces found |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['p50_ms']} | {r['p95_ms']} | {r['faces_found']}/{len(frames)} |")
    dlib_ms = rows["dlib / face_recognition (HOG + ResNet)"]["p50_ms"]
    for name, r in rows.items():
        if name.startswith("facegate"):
            print(f"dlib / {name}: {dlib_ms / r['p50_ms']:.1f}x (goal >= 10x)")
    accuracy = pair_accuracy(args.pairs, Facegate(2), dlib_model)
    ours, theirs = accuracy["facegate"], accuracy["dlib"]
    print(
        f"\nheld-out pairs scored by both: {accuracy['pairs_scored']} of {accuracy['pairs_asked']} "
        f"(faces found in {accuracy['images']} photos: facegate {accuracy['facegate_faces_found']}, dlib {accuracy['dlib_faces_found']})"
    )
    print("| pipeline | 10-fold accuracy |\n|---|---|")
    print(f"| facegate | {ours['mean_accuracy']:.2%} +- {ours['std_accuracy']:.2%} |")
    print(f"| dlib | {theirs['mean_accuracy']:.2%} +- {theirs['std_accuracy']:.2%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"frames": len(frames), "speed": rows, "accuracy": accuracy}, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
