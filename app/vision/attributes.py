"""Face attributes (expression; opt-in gender and age) from the aligned face crop, with LiteRT.

A second model family beside the embedder, under the same package contract
(:class:`app.vision.manifest.AttributeManifest`): the served file takes the service's aligned
112x112 RGB crop and emits one vector whose columns the manifest names. Attributes describe
a face; they never take part in deciding who opens a door.

The service starts without them: a task whose package is absent, corrupt or switched off is
*unavailable*, with the reason, and the rest of the service is unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.vision import manifest as contract
from app.vision.align import ALIGNMENT_VERSION
from app.vision.embedder import list_packages
from app.vision.litert import LiteRTModel
from app.vision.manifest import AttributeManifest, ManifestError

# FER2013's own class order (its ``emotion`` column 0..6).
EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
TASKS = ("expression", "gender_age")
GENDER_AGE_OUTPUTS = ["female_probability", "age_years"]


class AttributeModelError(RuntimeError):
    """An attribute package that is missing, corrupt or does not fit this service."""


def find_attribute_package(store: Path, task: str, model_id: str | None = None) -> Path:
    """``store/<model_id>``, or the newest attribute package of ``task`` in ``store``."""
    store = Path(store)
    candidates = []
    for name in list_packages(store, "attributes"):
        try:
            manifest = contract.read_attributes(store / name)
        except ManifestError as exc:
            if model_id == name:
                raise AttributeModelError(str(exc)) from exc
            continue
        if manifest.task == task and (model_id is None or model_id == name):
            candidates.append((manifest.created, store / name))
    if not candidates:
        wanted = f"package {model_id!r}" if model_id else "package"
        raise AttributeModelError(f"no {task} {wanted} in {store} (train and export one: python -m training.attributes.export)")
    return max(candidates)[1]


@dataclass(frozen=True)
class AttributeModel:
    """One verified attribute package, loaded for LiteRT."""

    path: Path
    manifest: AttributeManifest
    runner: LiteRTModel

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def task(self) -> str:
        return self.manifest.task

    @classmethod
    def open(cls, path: Path, num_threads: int = 1) -> AttributeModel:
        """Check every file's sha256, the alignment and the output columns, then one probe crop."""
        path = Path(path)
        try:
            manifest = contract.open_verified(path, AttributeManifest, ALIGNMENT_VERSION)
        except ManifestError as exc:
            raise AttributeModelError(str(exc)) from exc
        expected = list(EXPRESSIONS) if manifest.task == "expression" else GENDER_AGE_OUTPUTS
        if manifest.outputs != expected:
            raise AttributeModelError(f"{manifest.model_id}: outputs {manifest.outputs} are not the {manifest.task} columns {expected}")
        runner = LiteRTModel(path / manifest.serving_file, num_threads=num_threads)
        size = manifest.input.size
        if runner.input_shape != (size, size, 3) or runner.output_shape != (len(expected),):
            raise AttributeModelError(
                f"{manifest.model_id}: the served file maps {runner.input_shape} -> {runner.output_shape}, "
                f"the manifest says ({size}, {size}, 3) -> ({len(expected)},)"
            )
        model = cls(path=path, manifest=manifest, runner=runner)
        probe = model.runner(np.full((1, size, size, 3), 128.0, dtype=np.float32))
        if not np.isfinite(probe).all():
            raise AttributeModelError(f"{manifest.model_id}: self-test produced non-finite outputs")
        return model

    def predict(self, crops: np.ndarray) -> list[dict[str, Any]]:
        """One record per crop: ``expression`` (top class and probabilities) or ``gender`` and ``age``."""
        if len(crops) == 0:
            return []
        out = self.runner(np.asarray(crops, dtype=np.float32))
        if self.task == "expression":
            return [expression_record(row) for row in out]
        return [
            {
                "gender": {"female_probability": round(float(np.clip(row[0], 0.0, 1.0)), 4)},
                "age": {"years": round(max(0.0, float(row[1])), 1)},
            }
            for row in out
        ]


def expression_record(probabilities: np.ndarray) -> dict[str, Any]:
    p = np.asarray(probabilities, dtype=np.float64)
    p = p / p.sum() if p.sum() > 0 else p
    return {
        "expression": {
            "top": EXPRESSIONS[int(np.argmax(p))],
            "probabilities": {name: round(float(v), 4) for name, v in zip(EXPRESSIONS, p, strict=True)},
        }
    }


@dataclass
class AttributeModels:
    """The attribute models a process serves, and why any task is unavailable."""

    loaded: dict[str, AttributeModel]
    unavailable: dict[str, str]

    @classmethod
    def load(cls, store: Path, enabled: dict[str, bool], model_ids: dict[str, str | None], num_threads: int = 1) -> AttributeModels:
        loaded: dict[str, AttributeModel] = {}
        unavailable: dict[str, str] = {}
        for task in TASKS:
            if not enabled.get(task, False):
                unavailable[task] = "switched off by configuration"
                continue
            try:
                loaded[task] = AttributeModel.open(find_attribute_package(store, task, model_ids.get(task)), num_threads)
            except (AttributeModelError, ValueError, OSError) as exc:
                unavailable[task] = str(exc)
        return cls(loaded, unavailable)

    def predict(self, crops: np.ndarray, tasks: tuple[str, ...] = TASKS) -> list[dict[str, Any]]:
        """Every requested, loaded task's record for each crop, merged per crop."""
        records: list[dict[str, Any]] = [{} for _ in range(len(crops))]
        for task in tasks:
            model = self.loaded.get(task)
            if model is None or len(crops) == 0:
                continue
            for record, part in zip(records, model.predict(crops), strict=True):
                record.update(part)
        return records

    def model_ids(self) -> dict[str, str]:
        return {task: model.model_id for task, model in self.loaded.items()}
