"""The model package contract, in one module: what ``manifest.json`` holds, and how it is
written (``training.export``), read and verified (the service, the benchmarks, the tests).

A package is a directory: ``manifest.json`` and the files it lists with their sha256. Two kinds
share the contract (``kind``): the ``embedder`` (the default, for manifests written before
attributes existed) and ``attributes`` (expression; gender and age), which take the same aligned
crop. The fields the service relies on are typed here; the training and evaluation records
(``architecture``, ``training``, ``evaluation``, ...) are kept as written, for people to read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT_VERSION = 1
M = TypeVar("M", bound="Manifest | AttributeManifest")
MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, of an unknown format, or does not match its files."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(gt=0)
    channels: Literal[3]
    color: Literal["RGB"]
    dtype: Literal["float32"]
    range: tuple[float, float]


class BurstThresholds(BaseModel):
    """Threshold by (frames fused in the query, target FAR), measured against templates of
    ``template_frames`` frames; ``app.matching.threshold.ThresholdTable`` reads it."""

    model_config = ConfigDict(extra="allow")
    template_frames: int = Field(gt=0)
    default_far: float = Field(gt=0, lt=1)
    by_frames: dict[str, dict[str, float | None]]
    source: str | None = None
    tar: dict[str, dict[str, float | None]] | None = None
    histograms: dict[str, Any] | None = Field(default=None, description="bins and genuine/impostor counts by frames fused")


PackageKind = Literal["embedder", "attributes"]
AttributeTask = Literal["expression", "gender_age"]


class PackageManifest(BaseModel):
    """What every package has: its files and checksums, the served file and the crop it takes."""

    model_config = ConfigDict(extra="allow")

    format_version: Literal[1]
    model_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    created: str
    files: dict[str, FileEntry]
    serving_file: str
    input: InputSpec
    preprocessing: str | None = None
    alignment_version: str

    @model_validator(mode="after")
    def _serving_file_is_checked(self) -> PackageManifest:
        if self.serving_file not in self.files:
            raise ValueError(f"serving file {self.serving_file} is not covered by the manifest checksums")
        return self

    def extra(self, name: str) -> Any:
        """A record kept as written (``training``, ``evaluation``, ...), or None."""
        return (self.model_extra or {}).get(name)


class Manifest(PackageManifest):
    """The embedder's package: unit vectors of ``embedding_size`` and its thresholds by frames fused."""

    kind: Literal["embedder"] = "embedder"
    embedding_size: int = Field(gt=0)
    distance: str | None = None
    burst_thresholds: BurstThresholds | None = None


class AttributeManifest(PackageManifest):
    """An attribute package: the served file's output vector, one named column per entry of ``outputs``
    (the expression probabilities in label order; ``female_probability`` and ``age_years``)."""

    kind: Literal["attributes"]
    task: AttributeTask
    outputs: list[str] = Field(min_length=1)


def kind_of(package: Path) -> str:
    """The package's kind as its manifest states it (``embedder`` when unstated), without validating it."""
    try:
        raw = json.loads((Path(package) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return "embedder"
    kind = raw.get("kind", "embedder") if isinstance(raw, dict) else "embedder"
    return kind if isinstance(kind, str) else "embedder"


def read(package: Path) -> Manifest:
    """The embedder package's manifest, validated; refuses an unknown ``format_version`` by name."""
    return _read(package, Manifest)


def read_attributes(package: Path) -> AttributeManifest:
    """An attribute package's manifest, validated."""
    return _read(package, AttributeManifest)


def _read(package: Path, schema: type[M]) -> M:
    path = Path(package) / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"model package {package} has no {MANIFEST}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path} is not a JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format_version {raw.get('format_version')!r}; this code reads version {FORMAT_VERSION}: "
            "use the facegate release that exported it, or re-export the model"
        )
    wanted = "embedder" if schema is Manifest else "attributes"
    if raw.get("kind", "embedder") != wanted:
        raise ManifestError(f"{path} is a {raw.get('kind', 'embedder')!r} package, not an {wanted!r} one")
    try:
        return schema.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ManifestError(f"{path} does not fit the package contract ({problems}): re-export the model") from exc


def open_verified(package: Path, schema: type[M], alignment_version: str) -> M:
    """The package's manifest of ``schema``'s kind, every listed file's sha256 checked, and its
    crops the ones this code aligns (``alignment_version``): what the service does before
    anything of a package runs. Raises :class:`ManifestError` saying which check failed."""
    manifest = _read(package, schema)
    verify(package, manifest)
    if manifest.alignment_version != alignment_version:
        raise ManifestError(
            f"model {manifest.model_id} was trained on {manifest.alignment_version} crops but this service "
            f"aligns with {alignment_version}: what it learned would not transfer; retrain or use a matching service"
        )
    return manifest


def write(package: Path, manifest: M | dict[str, Any]) -> PackageManifest:
    """Validate and write ``manifest.json`` (the files it lists must already be in place)."""
    if isinstance(manifest, PackageManifest):
        checked: PackageManifest = manifest
    else:
        schema: type[PackageManifest] = AttributeManifest if manifest.get("kind") == "attributes" else Manifest
        checked = schema.model_validate(manifest)
    (Path(package) / MANIFEST).write_text(json.dumps(checked.model_dump(mode="json", exclude_none=False), indent=2) + "\n")
    return checked


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=Path(path).stat().st_size)


def verify(package: Path, manifest: PackageManifest) -> None:
    """Every listed file is there with its sha256, before anything runs."""
    for name, entry in manifest.files.items():
        file = Path(package) / name
        if not file.is_file():
            raise ManifestError(f"model file {file} listed in the manifest is missing")
        actual = sha256_file(file)
        if actual != entry.sha256:
            raise ManifestError(f"model file {file} is corrupt: sha256 {actual} != manifest {entry.sha256}")
