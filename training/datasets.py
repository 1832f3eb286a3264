"""Reading face-identity datasets: folder-per-identity trees and CelebA-style lists.

Every reader yields :class:`ImageRecord` rows: where the image is, whose face it is, and
which source it came from. Identities with the same name across several roots are the same
person (CelebA's aligned and in-the-wild subsets share identity numbers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm"}


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    identity: str
    source: str


def read_folder_tree(root: Path, source: str | None = None) -> Iterator[ImageRecord]:
    """``root/<identity>/<image>`` files, sorted so every run sees the same order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    name = source or root.name
    for identity_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(identity_dir.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                yield ImageRecord(image, identity_dir.name, name)


def read_identity_list(list_file: Path, images_dir: Path, source: str | None = None) -> Iterator[ImageRecord]:
    """CelebA's ``identity_CelebA.txt`` format: one ``<file> <identity>`` per line."""
    list_file, images_dir = Path(list_file), Path(images_dir)
    name = source or images_dir.name
    with list_file.open() as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{list_file}:{line_no}: expected '<file> <identity>', got {line.strip()!r}")
            yield ImageRecord(images_dir / parts[0], parts[1], name)


UNLABELED = ""  # the identity of a photo whose person is unknown (distillation data)


def read_image_folder(root: Path, source: str | None = None) -> Iterator[ImageRecord]:
    """Every image under ``root`` (recursively), with no identity: photos for distillation only."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} is not a directory")
    name = source or (root.parent.name if root.name == "images" else root.name)
    for image in sorted(root.rglob("*")):
        if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
            yield ImageRecord(image, UNLABELED, name)
