"""What every evaluation shares: loading a model (Keras or the shipped TFLite), embedding in
batches, the origin's published figures, small report helpers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.vision.manifest import sha256_file
from training.teacher import TEACHER_SHA256

DEFAULT_NS = (1, 2, 3, 5, 7)


EMBED_BATCH = 64


FAILED_PAIR_DISTANCE = 2.0  # the largest distance between unit vectors: a certain non-match


REPORTED_FARS = (0.01, 0.001)


ORIGIN_NAME = "2022 thesis, external set of 523 identities / 19,992 images"


ORIGIN_TABLE: dict[int, dict[str, Any]] = {
    1: {"accuracy": 0.8596, "top5": 0.9329, "safe": 0.2080, "pos": (0.001, 0.364, 0.819), "neg": (0.098, 0.600, 0.964)},
    2: {"accuracy": 0.9527, "top5": 0.9872, "safe": 0.4190, "pos": (0.015, 0.224, 0.691), "neg": (0.103, 0.539, 0.921)},
    3: {"accuracy": 0.9832, "top5": 0.9972, "safe": 0.5540, "pos": (0.007, 0.161, 0.729), "neg": (0.099, 0.510, 0.911)},
    5: {"accuracy": 0.9955, "top5": 0.9989, "safe": 0.7100, "pos": (0.008, 0.103, 0.448), "neg": (0.084, 0.482, 0.886)},
    7: {"accuracy": 0.9992, "top5": 1.0000, "safe": 0.8160, "pos": (0.008, 0.073, 0.237), "neg": (0.090, 0.468, 0.859)},
}


Embed = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LoadedModel:
    """A model as the evaluation sees it: a batch function plus what identifies the file."""

    embed: Embed
    input_size: int
    path: str
    sha256: str


def load_model(path: Path) -> LoadedModel:
    """A ``.keras`` or ``.tflite`` embedder as one ``(n, s, s, 3) float32 -> (n, d)`` function.

    The file's sha256 travels with every result, so the export can tell whether an evaluation
    measured the very model it ships.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} not found: train one with `python -m training.train` first")
    digest = sha256_file(path)
    if path.suffix == ".tflite" and digest == TEACHER_SHA256:
        # The distillation teacher, measured on the same harness as the student it teaches.
        from training.teacher import Teacher

        teacher = Teacher(path, num_threads=min(2, os.cpu_count() or 1))
        return LoadedModel(teacher.embed, 112, str(path), digest)
    if path.suffix == ".tflite":
        from app.vision.litert import LiteRTModel

        runner = LiteRTModel(path, num_threads=min(2, os.cpu_count() or 1))
        return LoadedModel(runner, int(runner.input_shape[0]), str(path), digest)
    if path.suffix != ".keras":
        raise ValueError(f"model {path}: expected a .keras or .tflite file")
    import keras
    import tensorflow as tf

    import training.losses  # noqa: F401 - registers the custom objects a saved model may name

    model = keras.models.load_model(path, compile=False)
    size = int(model.input_shape[1])
    # One trace for every batch size: eager per-image calls are ~50x slower on a CPU.
    forward = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
        reduce_retracing=True,
    )

    def embed(batch: np.ndarray) -> np.ndarray:
        return np.asarray(forward(tf.convert_to_tensor(np.asarray(batch, dtype=np.float32))))

    return LoadedModel(embed, size, str(path), digest)


def degenerate_count(embeddings: np.ndarray) -> int:
    """Embeddings that are not unit vectors: a dead ReLU head emits all zeros, and for those
    ``1 - a.b`` (used for speed) and ``sum((a-b)^2)/2`` disagree, so the figures mean little."""
    if embeddings.size == 0:
        return 0
    return int((np.abs(np.linalg.norm(embeddings, axis=1) - 1.0) > 1e-3).sum())


def embed_images(embed: Embed, images: np.ndarray, rows: Sequence[int] | np.ndarray | None = None, desc: str = "embedding") -> np.ndarray:
    """Embed ``images[rows]`` in batches (memory-mapped caches are read one batch at a time)."""
    from tqdm import tqdm

    index = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    chunks = []
    for start in tqdm(range(0, len(index), EMBED_BATCH), desc=desc, unit="batch", disable=len(index) <= EMBED_BATCH):
        batch = np.asarray(images[index[start : start + EMBED_BATCH]], dtype=np.float32)
        chunks.append(np.asarray(embed(batch), dtype=np.float32))
    if not chunks:
        return np.empty((0, 0), dtype=np.float32)
    return np.concatenate(chunks)


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {
        "min": float(values.min()),
        "avg": float(values.mean()),
        "max": float(values.max()),
        "count": int(values.size),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _triple(stats: dict[str, float] | tuple[float, float, float] | None) -> str:
    if stats is None:
        return "n/a"
    values = (stats["min"], stats["avg"], stats["max"]) if isinstance(stats, dict) else stats
    return "/".join(f"{v:.3f}".replace("0.", ".", 1) for v in values)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def read_identity_list(path: Path) -> list[str]:
    """Held-out identities from a run's ``split.json`` ("val") or a plain one-per-line list."""
    path = Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if "val" not in data:
            raise ValueError(f"{path} has no 'val' list: pass a run's split.json")
        return [str(i) for i in data["val"]]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def select_identities(cache_identities: np.ndarray, wanted: list[str] | None, all_identities: bool, cache: Path) -> np.ndarray:
    """Rows of ``cache`` to evaluate: the held-out identities it holds, or all of it.

    ``--identities`` applies to every cache that holds any of them; a cache that holds none
    (Yale B against a CelebA split) is used whole only under ``--all-identities``, so a
    training set is never evaluated whole by accident.
    """
    if wanted is None:
        if not all_identities:
            raise ValueError(f"{cache}: pass --identities runs/<run>/split.json, or --all-identities for held-out sets")
        return np.arange(len(cache_identities))
    rows = np.flatnonzero(np.isin(cache_identities, np.array(wanted)))
    if rows.size:
        return rows
    if all_identities:
        return np.arange(len(cache_identities))
    raise ValueError(f"{cache} holds none of the --identities; add --all-identities to use it whole (e.g. Yale B)")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
