"""A compact shard of prepared crops and teacher labels, for training where ``../shared`` is not.

    python -m training.shard --cache var/crops/train --labels var/teacher/labels --root ../shared/data \\
        --out .shard/part0 --parts 2 --part 0 --max-mib 36

A lent GPU machine receives the working tree and at most 64 MiB in all; ``../shared``, the crop
caches and the label caches do not travel. A shard carries what ``training.distill_torch``
needs and nothing else:

- the training pool of ``training.distill --loss distill`` (the training people's crops with a
  teacher label, then the unlabeled photos with one), identities split exactly as that trainer
  splits them, in a seeded order cut into ``--parts`` parts: this shard holds part ``--part``,
  as many of its crops as fit in ``--max-mib`` (successive GPU runs take successive parts);
- the dev crops of ``training.distill`` (``DevSet.rows``: the same photos, so the dev figures of
  both trainers compare), with their owners;
- every crop as WebP: training crops at ``--quality`` (80: ~1.5 kB a 112 px crop, 24x less than
  raw, within 2.3 grey levels of the original on average), dev crops at ``--dev-quality`` (95:
  ~3.6 kB). Measured on the 718 dev crops with the shipped model: raw, distance to the teacher
  0.1818 and dev accuracy 93.74%; WebP 95, 0.1829 and 93.61%; WebP 80, 0.1901 and 93.38%. The
  dev figures stay comparable with ``training.distill``'s; training on WebP 80 crops against the
  clean photos' vectors works as one more augmentation (door cameras compress too);
- the teacher's vectors as int8 with one scale a row (cosine to the float vector above 0.9998);
- ``split.json`` (the held-out people, for the evaluation back here) and ``meta.json`` (the data
  settings, counts and sizes; ``training.distill_torch`` writes them into its run's
  ``config.json`` so ``training.export`` packages a GPU run like any other).

Reading a shard (:meth:`Shard.load`) needs NumPy and OpenCV only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FORMAT = 1
ARRAYS = "shard.npz"
# Bytes a row costs besides its image: int8 vector, its scale, offset, cache row, owner.
ROW_OVERHEAD = 4 + 8 + 8 + 8


def quantise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors as int8 codes and one float32 scale a row (the row's largest component maps to 127)."""
    vectors = np.asarray(vectors, np.float32)
    scale = np.maximum(np.abs(vectors).max(axis=1), 1e-12) / 127.0
    return np.round(vectors / scale[:, None]).astype(np.int8), scale.astype(np.float32)


def dequantise(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The unit vectors back from :func:`quantise` (re-normalised)."""
    vectors = codes.astype(np.float32) * scale[:, None]
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def encode(crop: np.ndarray, quality: int) -> bytes:
    """An RGB crop as WebP bytes."""
    ok, buffer = cv2.imencode(".webp", np.ascontiguousarray(crop[..., ::-1]), [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode a crop as WebP")
    return buffer.tobytes()


def decode(data: bytes) -> np.ndarray:
    """RGB pixels of :func:`encode`'s bytes."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("a shard image does not decode: the shard is damaged")
    return image[..., ::-1]


@dataclass
class Shard:
    """A loaded shard: decoded crops, teacher vectors, which rows are dev crops and whose."""

    crops: np.ndarray  # (N, s, s, 3) uint8 RGB
    teacher: np.ndarray  # (N, d) float32, unit
    dev: np.ndarray  # (N,) bool: a dev crop (never trained on)
    owners: np.ndarray  # (N,) int64: the dev person of a dev crop, -1 for training crops
    rows: np.ndarray  # (N,) int64: the crop's row in the crop caches it was cut from
    meta: dict[str, Any]
    directory: Path

    @classmethod
    def load(cls, directory: Path, threads: int = 8) -> Shard:
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory} is shard format {meta.get('format')}, this code reads {FORMAT}")
        with np.load(directory / ARRAYS) as arrays:
            blob, offsets = arrays["blob"], arrays["offsets"]
            images = [blob[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
            fields = {k: arrays[k] for k in ("codes", "scale", "dev", "owners", "rows")}
        with ThreadPoolExecutor(max(1, threads)) as pool:  # OpenCV releases the GIL while decoding
            crops = np.stack(list(pool.map(decode, images, chunksize=256)))
        return cls(
            crops=crops,
            teacher=dequantise(fields["codes"], fields["scale"]),
            dev=fields["dev"].astype(bool),
            owners=fields["owners"].astype(np.int64),
            rows=fields["rows"].astype(np.int64),
            meta=meta,
            directory=directory,
        )

    @property
    def train_index(self) -> np.ndarray:
        return np.flatnonzero(~self.dev)

    @property
    def dev_index(self) -> np.ndarray:
        return np.flatnonzero(self.dev)


def part_of(pool: np.ndarray, parts: int, part: int, seed: int) -> np.ndarray:
    """Part ``part`` of ``parts`` of ``pool`` in a seeded order (the parts are disjoint and cover the pool)."""
    if not 0 <= part < parts:
        raise ValueError(f"--part must lie in 0..{parts - 1}, got {part}")
    order = np.asarray(pool)[np.random.default_rng(seed).permutation(len(pool))]
    return np.array_split(order, parts)[part]


def build(args: argparse.Namespace) -> dict[str, Any]:
    from training.distill import DevSet, load_data  # TensorFlow: only where a shard is built

    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args, out)  # writes split.json, exactly as training.distill writes its run's
    dim = data.teacher.shape[1]
    dev_rows, dev_owners = DevSet.rows(data, args.dev_images, args.seed)
    candidates = part_of(data.distill_rows, args.parts, args.part, args.order_seed)
    budget = int(args.max_mib * 2**20)

    def encoded(rows: np.ndarray) -> list[bytes]:
        with ThreadPoolExecutor(args.threads) as pool:
            return list(pool.map(lambda r: encode(np.asarray(data.crops[r]), args.quality), rows, chunksize=64))

    with ThreadPoolExecutor(args.threads) as pool:
        images = list(pool.map(lambda r: encode(np.asarray(data.crops[r]), args.dev_quality), dev_rows, chunksize=64))
    used = sum(map(len, images)) + len(images) * (dim + ROW_OVERHEAD)
    kept: list[int] = []
    # Encode in chunks and stop at the budget: a shard never holds more than --max-mib of arrays.
    for start in range(0, len(candidates), 2048):
        chunk = candidates[start : start + 2048]
        for row, image in zip(chunk, encoded(chunk), strict=True):
            cost = len(image) + dim + ROW_OVERHEAD
            if used + cost > budget:
                break
            images.append(image)
            kept.append(int(row))
            used += cost
        else:
            continue
        break
    if not kept:
        raise ValueError(f"--max-mib {args.max_mib} holds the dev crops and no training crop")
    rows = np.concatenate([dev_rows, np.array(kept, np.int64)])
    codes, scale = quantise(data.teacher[rows])
    offsets = np.zeros(len(images) + 1, np.int64)
    offsets[1:] = np.cumsum([len(i) for i in images])
    np.savez(
        out / ARRAYS,
        blob=np.frombuffer(b"".join(images), np.uint8),
        offsets=offsets,
        codes=codes,
        scale=scale,
        dev=np.concatenate([np.ones(len(dev_rows), bool), np.zeros(len(kept), bool)]),
        owners=np.concatenate([dev_owners, np.full(len(kept), -1, np.int64)]),
        rows=rows,
    )
    sources = data.sources[np.array(kept)]
    meta = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "crop_size": int(data.crops.shape[1]),
        "quality": args.quality,
        "dev_quality": args.dev_quality,
        "part": args.part,
        "parts": args.parts,
        "order_seed": args.order_seed,
        "pool_crops": len(data.distill_rows),
        "part_crops": len(candidates),
        "train_crops": len(kept),
        "train_crops_by_source": {str(s): int(n) for s, n in zip(*np.unique(sources, return_counts=True), strict=True)},
        "dev_crops": len(dev_rows),
        "dev_identities": len(set(dev_owners.tolist())),
        "bytes": int((out / ARRAYS).stat().st_size),
        "settings": {
            "cache": [str(c) for c in args.cache],
            "labels": [str(lbl) for lbl in args.labels],
            "root": [str(r) for r in args.root],
            **{k: getattr(args, k) for k in ("val_fraction", "split_seed", "dev_fraction", "unlabeled_fraction", "max_train_identities")},
            "dev_images": args.dev_images,
            "seed": args.seed,
        },
        "counts": {
            "train_identities": len(data.train_ids),
            "train_images": len(data.train_rows),
            "unlabeled_images": len(data.unlabeled_rows),
            "dev_identities": len(data.dev_ids),
            "heldout_identities": len(data.heldout),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, action="append", required=True, help="crop cache (repeatable, as training.distill)")
    p.add_argument("--labels", type=Path, action="append", required=True, help="label cache (repeatable, each with its --root)")
    p.add_argument("--root", type=Path, action="append", required=True, help="the root each --labels was keyed against")
    p.add_argument("--out", type=Path, required=True, help="shard directory")
    p.add_argument("--parts", type=int, default=1, help="cut the training pool into this many disjoint parts")
    p.add_argument("--part", type=int, default=0, help="the part this shard holds (0-based)")
    p.add_argument("--order-seed", type=int, default=0, help="seed of the pool's order before it is cut")
    p.add_argument("--max-mib", type=float, default=36.0, help="size limit of the shard's arrays")
    p.add_argument("--quality", type=int, default=80, help="WebP quality of the training crops (1-100)")
    p.add_argument("--dev-quality", type=int, default=95, help="WebP quality of the dev crops (1-100)")
    p.add_argument("--threads", type=int, default=2)
    # The data settings of training.distill, with its defaults: the same people train, dev and stay held out.
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=20221)
    p.add_argument("--dev-fraction", type=float, default=0.04)
    p.add_argument("--unlabeled-fraction", type=float, default=1.0)
    p.add_argument("--max-train-identities", type=int, default=0)
    p.add_argument("--dev-images", type=int, default=800)
    p.add_argument("--seed", type=int, default=0, help="training.distill's --seed (it picks the dev crops)")
    args = p.parse_args(argv)
    if not (1 <= args.quality <= 100 and 1 <= args.dev_quality <= 100):
        p.error("--quality and --dev-quality lie in 1..100")
    if args.parts < 1 or not 0 <= args.part < args.parts:
        p.error("--part must lie in 0..parts-1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    meta = build(parse_args(argv))
    print(json.dumps({k: meta[k] for k in ("train_crops", "part_crops", "pool_crops", "dev_crops", "bytes", "seconds")}))


if __name__ == "__main__":
    main()
