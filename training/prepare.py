"""Align a face dataset once and cache the aligned crops (112x112 by default) for training and evaluation.

    python -m training.prepare --tree ../shared/data/faces/celeba_aligned \\
        --tree ../shared/data/faces/celeba_wild --out var/crops/celeba

Every image goes through :class:`app.vision.align.FaceAligner`, the function the service
uses, so training crops and serving crops are made the same way. The cache is a directory:

- ``crops.npy``: uint8 array (N, size, size, 3), RGB;
- ``index.csv``: row, path, identity, source of every cached crop;
- ``failures.csv``: path, identity, source, reason of every image that produced no crop;
- ``summary.json``: counts by source and by failure reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from app.core.errors import DomainError
from app.vision.align import ALIGNMENT_VERSION, DEFAULT_CROP_SIZE, FaceAligner
from app.vision.decode import read_image_file
from training.datasets import ImageRecord, read_folder_tree, read_identity_list, read_image_folder

_worker_aligner: FaceAligner | None = None


@dataclass(frozen=True)
class CropCache:
    """A prepared dataset: crops in a (memory-mapped) array plus whose face each one is."""

    crops: np.ndarray
    identities: np.ndarray  # str identity per row
    sources: np.ndarray  # str source per row
    paths: list[str]

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> CropCache:
        directory = Path(directory)
        if not (directory / "crops.npy").exists():
            raise FileNotFoundError(f"no crop cache in {directory}: run `python -m training.prepare` first")
        crops = np.load(directory / "crops.npy", mmap_mode="r" if mmap else None)
        with (directory / "index.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return cls(
            crops=crops,
            identities=np.array([r["identity"] for r in rows]),
            sources=np.array([r["source"] for r in rows]),
            paths=[r["path"] for r in rows],
        )

    @classmethod
    def load_many(cls, directories: Sequence[Path]) -> CropCache:
        """Several caches as one, rows in the order given (a fetched dataset prepared apart from ../shared's)."""
        caches = [cls.load(d) for d in directories]
        if len(caches) == 1:
            return caches[0]
        sizes = {c.crops.shape[1:] for c in caches}
        if len(sizes) != 1:
            raise ValueError(f"crop caches {[str(d) for d in directories]} hold crops of different sizes: {sorted(sizes)}")
        return cls(
            crops=np.concatenate([np.asarray(c.crops) for c in caches]),
            identities=np.concatenate([c.identities for c in caches]),
            sources=np.concatenate([c.sources for c in caches]),
            paths=[p for c in caches for p in c.paths],
        )


def _init_worker(size: int) -> None:
    global _worker_aligner
    # One TF/MediaPipe thread per worker: the pool already uses every core.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    _worker_aligner = FaceAligner(size=size)


def _align_one(path: str) -> tuple[str, np.ndarray | None, str | None]:
    assert _worker_aligner is not None
    try:
        image = read_image_file(path)
    except DomainError as exc:
        return path, None, exc.code
    result = _worker_aligner.align(image, pick_largest=True)
    if result.face is None:
        return path, None, "no_face"
    return path, result.face.crop, None


def prepare(records: Sequence[ImageRecord], out: Path, size: int = DEFAULT_CROP_SIZE, workers: int | None = None) -> dict:
    """Align every record into ``out``; returns the summary also written to summary.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    crops = np.lib.format.open_memmap(out / "crops.partial.npy", mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3))
    kept: list[ImageRecord] = []
    failures: list[tuple[ImageRecord, str]] = []
    by_path = {str(r.path): r for r in records}
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(size,)) as pool:
        results = pool.imap(_align_one, [str(r.path) for r in records], chunksize=16)
        for path, crop, reason in tqdm(results, total=len(records), desc="aligning", unit="img"):
            record = by_path[path]
            if crop is None:
                failures.append((record, reason or "unknown"))
                continue
            crops[len(kept)] = crop
            kept.append(record)
    crops.flush()
    final = np.lib.format.open_memmap(out / "crops.npy", mode="w+", dtype=np.uint8, shape=(len(kept), size, size, 3))
    final[:] = crops[: len(kept)]
    final.flush()
    del crops, final
    (out / "crops.partial.npy").unlink()
    with (out / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "identity", "source"])
        for row, r in enumerate(kept):
            writer.writerow([row, str(r.path), r.identity, r.source])
    with (out / "failures.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "source", "reason"])
        for r, reason in failures:
            writer.writerow([str(r.path), r.identity, r.source, reason])
    total_by_source = Counter(r.source for r in records)
    kept_by_source = Counter(r.source for r in kept)
    summary = {
        "alignment_version": ALIGNMENT_VERSION,
        "crop_size": size,
        "images": len(records),
        "aligned": len(kept),
        "failed": len(failures),
        "identities": len({r.identity for r in kept}),
        "failures_by_reason": dict(Counter(reason for _, reason in failures)),
        "by_source": {
            s: {"images": n, "aligned": kept_by_source.get(s, 0), "identities": len({r.identity for r in kept if r.source == s})}
            for s, n in sorted(total_by_source.items())
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", default=[], help="a folder-per-identity root (repeatable)")
    parser.add_argument(
        "--list",
        nargs=2,
        action="append",
        default=[],
        metavar=("LIST_FILE", "IMAGES_DIR"),
        help="a CelebA-style '<file> <identity>' list and the folder its files are in (repeatable)",
    )
    parser.add_argument(
        "--images", type=Path, action="append", default=[], help="a folder of unlabeled photos, for distillation (repeatable)"
    )
    parser.add_argument("--out", type=Path, required=True, help="cache directory to write")
    parser.add_argument("--size", type=int, default=DEFAULT_CROP_SIZE)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (smoke runs)")
    args = parser.parse_args(argv)
    records: list[ImageRecord] = []
    for tree in args.tree:
        records.extend(read_folder_tree(tree))
    for folder in args.images:
        records.extend(read_image_folder(folder))
    for list_file, images_dir in args.list:
        records.extend(read_identity_list(Path(list_file), Path(images_dir)))
    if not records:
        parser.error("no images: give at least one --tree, --images or --list")
    if args.limit:
        records = records[: args.limit]
    summary = prepare(records, args.out, size=args.size, workers=args.workers)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
