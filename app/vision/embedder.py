"""Loading and verifying the shipped model package, and embedding aligned crops with LiteRT."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.vision.align import ALIGNMENT_VERSION
from app.vision.litert import LiteRTModel


def _lookup_far(table: dict[str, Any], far: float) -> float | None:
    for key, value in table.items():
        if value is not None and abs(float(key) - far) < 1e-12:
            return float(value)
    return None


class ModelPackageError(RuntimeError):
    """The model package is missing, corrupt or does not fit this service."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_package(store: Path, model_id: str | None = None) -> Path:
    """The package directory: ``store/<model_id>``, or the newest package in ``store``."""
    store = Path(store)
    if model_id:
        path = store / model_id
        if not (path / "manifest.json").exists():
            raise ModelPackageError(f"no model package {model_id!r} in {store}: set MODEL_ID to one of {list_packages(store)}")
        return path
    packages = list_packages(store)
    if not packages:
        raise ModelPackageError(f"no model package in {store}: train and export one (python -m training.export) or set MODEL_STORE")
    newest = max(packages, key=lambda p: json.loads((store / p / "manifest.json").read_text()).get("created", ""))
    return store / newest


def list_packages(store: Path) -> list[str]:
    if not Path(store).is_dir():
        return []
    return sorted(p.name for p in Path(store).iterdir() if (p / "manifest.json").exists())


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    manifest: dict[str, Any]

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def embedding_size(self) -> int:
        return int(self.manifest["embedding_size"])

    @property
    def input_size(self) -> int:
        return int(self.manifest["input"]["size"])

    @property
    def recommended_threshold(self) -> float | None:
        rec = self.manifest.get("recommended_threshold") or {}
        value = rec.get("threshold") if isinstance(rec, dict) else None
        return float(value) if value is not None else None

    def threshold_for_far(self, far: float) -> float | None:
        """The single-image (photo pair) threshold at this FAR: for reference, not for bursts."""
        return _lookup_far(self.manifest.get("thresholds_by_far") or {}, far)

    @property
    def burst_table(self) -> dict[str, Any] | None:
        table = self.manifest.get("burst_thresholds")
        return table if isinstance(table, dict) and table.get("by_frames") else None

    @property
    def template_frames(self) -> int:
        table = self.burst_table
        return int(table["template_frames"]) if table else 5

    @property
    def default_far(self) -> float | None:
        table = self.burst_table
        return float(table["default_far"]) if table else None

    def threshold_for_frames(self, frames: int, far: float | None = None) -> float | None:
        """The burst threshold for a query of ``frames`` fused frames at ``far`` (default: the package's).

        Bursts longer than the longest measured row use that row: fused distances settle as
        frames are added, and the longest row is the strictest.
        """
        table = self.burst_table
        if table is None:
            return None
        rows = table["by_frames"]
        longest = max(int(n) for n in rows)
        row = rows.get(str(min(max(int(frames), 1), longest))) or {}
        return _lookup_far(row, float(table["default_far"]) if far is None else far)

    @classmethod
    def open(cls, path: Path) -> ModelPackage:
        """Read the manifest and check every listed file's sha256 before anything runs."""
        path = Path(path)
        manifest_path = path / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError as exc:
            raise ModelPackageError(f"model package {path} has no manifest.json") from exc
        except json.JSONDecodeError as exc:
            raise ModelPackageError(f"model package manifest {manifest_path} is not valid JSON: {exc}") from exc
        for key in ("model_id", "files", "serving_file", "embedding_size", "input", "alignment_version"):
            if key not in manifest:
                raise ModelPackageError(f"manifest {manifest_path} lacks {key!r}: re-export the model")
        if manifest["alignment_version"] != ALIGNMENT_VERSION:
            raise ModelPackageError(
                f"model {manifest['model_id']} was trained on {manifest['alignment_version']} crops but this service "
                f"aligns with {ALIGNMENT_VERSION}: distances would not transfer; retrain or use a matching service"
            )
        for name, meta in manifest["files"].items():
            file = path / name
            if not file.exists():
                raise ModelPackageError(f"model file {file} listed in the manifest is missing")
            actual = sha256_file(file)
            if actual != meta["sha256"]:
                raise ModelPackageError(f"model file {file} is corrupt: sha256 {actual} != manifest {meta['sha256']}")
        if manifest["serving_file"] not in manifest["files"]:
            raise ModelPackageError(f"serving file {manifest['serving_file']} is not covered by the manifest checksums")
        return cls(path=path, manifest=manifest)


class Embedder:
    """Aligned RGB crops (the package's input size) -> L2-normalised embeddings, via the package's TFLite file."""

    def __init__(self, package: ModelPackage, num_threads: int = 1):
        self.package = package
        self.model_id = package.model_id
        self._model = LiteRTModel(package.path / package.manifest["serving_file"], num_threads=num_threads)
        expected_in = (package.input_size, package.input_size, 3)
        if self._model.input_shape != expected_in:
            raise ModelPackageError(f"serving model takes {self._model.input_shape}, manifest says {expected_in}")
        if self._model.output_shape != (package.embedding_size,):
            raise ModelPackageError(f"serving model emits {self._model.output_shape}, manifest says ({package.embedding_size},)")
        self.self_test()

    def self_test(self) -> None:
        """One grey crop through the model: finite, unit-length output, or refuse to serve."""
        probe = np.full((1, *self._model.input_shape), 128.0, dtype=np.float32)
        out = self._model(probe)
        norm = float(np.linalg.norm(out))
        if not np.isfinite(out).all() or abs(norm - 1.0) > 1e-3:
            raise ModelPackageError(f"model {self.model_id} self-test failed: output norm {norm}")

    def embed(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.package.embedding_size), dtype=np.float32)
        return self._model(np.asarray(crops, dtype=np.float32))
