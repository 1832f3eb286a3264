"""Align the attribute datasets once with the service's aligner (112x112 RGB crops).

    python -m training.attributes.prepare fer --source /path/to/fer2013-jpeg --out var/attr/fer
    python -m training.attributes.prepare utkface --out var/attr/utkface

``--source`` for FER2013 is either a folder holding ``train/ validation/ test/`` (by class) or
the bare git directory that ``fetch github:RecepTahirGunlu/Duygu-Tanima`` brings; from a git
directory the three folders are extracted (``git archive``) into ``<out>/source`` first.

Every photo goes through the service's aligner. These datasets are tight face crops (FER2013
48x48, UTKFace chips), which Face Mesh's detector misses more often than camera frames (18% of
a 150-photo FER2013 sample as is); a missed photo is tried again inside a grey border of a
quarter of its side, and a photo still missed (6.7% of FER2013, 16 of UTKFace's 21,161) is
warped with the dataset's median five points (the photos of one dataset share their framing)
and flagged ``detected=0``, so the test sets stay whole.

The cache: ``crops.npy`` (N, 112, 112, 3) uint8 RGB; ``index.csv`` row, path, label (the
expression, or the UTKFace file name that keys ``labels.csv``), split, detected;
``summary.json`` counts by split.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from app.core.config import SHARED_DIR
from app.core.errors import DomainError
from app.vision.align import ALIGNMENT_VERSION, DEFAULT_CROP_SIZE, FaceAligner, face_area, five_points, warp_to_template
from app.vision.decode import read_image_file
from training.attributes.data import fer_records, utk_records
from training.datasets import ImageRecord

UTK_DIR = SHARED_DIR / "data" / "unlabeled" / "utkface"


def fer_source(source: Path, out: Path) -> Path:
    """A folder of FER2013 JPEGs by split and class, extracted from a bare git snapshot if need be."""
    source = Path(source)
    if (source / "HEAD").is_file() and (source / "objects").is_dir():
        target = Path(out) / "source"
        if not (target / ".complete").exists():
            target.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(
                ["git", f"--git-dir={source}", "archive", "HEAD", "train", "validation", "test"], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
            (target / ".complete").touch()
        return target
    return source


RETRY_BORDER = 0.25
BORDER_GREY = 128
_aligner: FaceAligner | None = None


def _init_worker() -> None:
    global _aligner
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    _aligner = FaceAligner()


def find_points(aligner: FaceAligner, image: np.ndarray) -> np.ndarray | None:
    """The largest face's five template points in ``image`` pixels, retried inside a grey border."""
    faces = aligner.landmarks(image)
    if faces:
        return five_points(max(faces, key=face_area))
    pad = max(1, round(RETRY_BORDER * max(image.shape[:2])))
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(BORDER_GREY,) * 3)
    faces = aligner.landmarks(padded)
    if faces:
        return five_points(max(faces, key=face_area)) - pad
    return None


def _points_one(path: str) -> tuple[str, tuple[int, int] | None, np.ndarray | None, str | None]:
    assert _aligner is not None
    try:
        image = read_image_file(path)
    except DomainError as exc:
        return path, None, None, exc.code
    height, width = image.shape[:2]
    return path, (height, width), find_points(_aligner, image), None


def prepare_attributes(records: Sequence[ImageRecord], out: Path, size: int = DEFAULT_CROP_SIZE, workers: int | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    points: dict[str, np.ndarray | None] = {}
    shapes: dict[str, tuple[int, int]] = {}
    unreadable: dict[str, str] = {}
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        results = pool.imap(_points_one, [str(r.path) for r in records], chunksize=32)
        for path, shape, found, error in tqdm(results, total=len(records), desc="landmarks", unit="img"):
            if error is not None or shape is None:
                unreadable[path] = error or "unreadable"
                continue
            shapes[path] = shape
            points[path] = found
    # The dataset's typical five points, relative to the photo's size, for the photos Face Mesh missed.
    relative = [p / np.array([shapes[k][1], shapes[k][0]]) for k, p in points.items() if p is not None]
    if not relative:
        raise RuntimeError("Face Mesh found no face in any photo: nothing to align")
    median = np.median(np.stack(relative), axis=0)
    kept = [r for r in records if str(r.path) in shapes]
    crops = np.lib.format.open_memmap(out / "crops.npy", mode="w+", dtype=np.uint8, shape=(len(kept), size, size, 3))
    detected = np.zeros(len(kept), dtype=bool)
    for row, record in enumerate(tqdm(kept, desc="warping", unit="img")):
        key = str(record.path)
        found = points[key]
        detected[row] = found is not None
        if found is None:
            h, w = shapes[key]
            found = median * np.array([w, h])
        crops[row], _ = warp_to_template(read_image_file(record.path), found, size)
    crops.flush()
    del crops
    with (out / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "label", "split", "detected"])
        for row, r in enumerate(kept):
            writer.writerow([row, str(r.path), r.identity, r.source, int(detected[row])])
    by_split: dict[str, dict[str, int]] = {}
    for r, d in zip(kept, detected, strict=True):
        entry = by_split.setdefault(r.source, {"photos": 0, "detected": 0})
        entry["photos"] += 1
        entry["detected"] += int(d)
    summary = {
        "alignment_version": ALIGNMENT_VERSION,
        "crop_size": size,
        "photos": len(records),
        "cached": len(kept),
        "detected": int(detected.sum()),
        "median_points_used": int((~detected).sum()),
        "unreadable": dict(Counter(unreadable.values())),
        "by_split": by_split,
        "labels": dict(sorted(Counter(r.identity for r in kept if r.source in ("Training", "train")).items()))
        if len({r.identity for r in kept}) < 50
        else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=("fer", "utkface"))
    parser.add_argument("--source", type=Path, default=None, help="FER2013 folder or git snapshot; UTKFace folder (default ../shared)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (smoke runs)")
    args = parser.parse_args(argv)
    if args.dataset == "fer":
        if args.source is None:
            parser.error("fer needs --source: the FER2013 JPEG folder or its fetched git snapshot")
        records = list(fer_records(fer_source(args.source, args.out)))
    else:
        records = list(utk_records(args.source or UTK_DIR))
    if args.limit:
        records = records[: args.limit]
    summary = prepare_attributes(records, args.out, workers=args.workers)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
