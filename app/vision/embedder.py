"""Loading and verifying the shipped model package, and embedding aligned crops with LiteRT."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.vision import manifest as contract
from app.vision.align import ALIGNMENT_VERSION
from app.vision.litert import LiteRTModel
from app.vision.manifest import Manifest, ManifestError


class ModelPackageError(RuntimeError):
    """The model package is missing, corrupt or does not fit this service."""


def find_package(store: Path, model_id: str | None = None) -> Path:
    """The package directory: ``store/<model_id>``, or the newest package in ``store``."""
    store = Path(store)
    if model_id:
        path = store / model_id
        if not (path / contract.MANIFEST).exists():
            raise ModelPackageError(f"no model package {model_id!r} in {store}: set MODEL_ID to one of {list_packages(store)}")
        return path
    packages = list_packages(store)
    if not packages:
        raise ModelPackageError(f"no model package in {store}: train and export one (python -m training.export) or set MODEL_STORE")
    try:
        newest = max(packages, key=lambda p: contract.read(store / p).created)
    except ManifestError as exc:
        raise ModelPackageError(str(exc)) from exc
    return store / newest


def list_packages(store: Path, kind: str = "embedder") -> list[str]:
    """The packages of ``kind`` in ``store`` (embedders by default; attribute packages sit beside them)."""
    if not Path(store).is_dir():
        return []
    return sorted(p.name for p in Path(store).iterdir() if (p / contract.MANIFEST).exists() and contract.kind_of(p) == kind)


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    manifest: Manifest

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def embedding_size(self) -> int:
        return self.manifest.embedding_size

    @property
    def input_size(self) -> int:
        return self.manifest.input.size

    @property
    def burst_table(self) -> dict[str, Any] | None:
        """The thresholds by frames fused, as ``app.matching.threshold.ThresholdTable`` reads them."""
        table = self.manifest.burst_thresholds
        return table.model_dump() if table is not None else None

    @classmethod
    def open(cls, path: Path) -> ModelPackage:
        """Read the manifest and check every listed file's sha256 before anything runs."""
        path = Path(path)
        try:
            manifest = contract.open_verified(path, Manifest, ALIGNMENT_VERSION)
        except ManifestError as exc:
            raise ModelPackageError(str(exc)) from exc
        return cls(path=path, manifest=manifest)


class Embedder:
    """Aligned RGB crops (the package's input size) -> L2-normalised embeddings, via the package's TFLite file."""

    def __init__(self, package: ModelPackage, num_threads: int = 1):
        self.package = package
        self.model_id = package.model_id
        self._model = LiteRTModel(package.path / package.manifest.serving_file, num_threads=num_threads)
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
