"""Face analysis: attributes of the faces in a burst (expression; gender and age when turned on).

frames -> burst (decode, align, quality; no embedding) -> attribute models -> per-frame records.
Nothing here reads or writes the identity store, and nothing here takes part in a decision:
identify asks for attributes only after it has decided. Attributes are written to the audit
event only when AUDIT_ATTRIBUTES is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.errors import Forbidden, InvalidInput, Unavailable
from app.core.metrics import STAGE_SECONDS
from app.services import audit
from app.services.audit import Actor
from app.services.runtime import Runtime
from app.vision.attributes import TASKS
from app.vision.pipeline import Burst, process_burst

SETTING_OF = {"expression": "EXPRESSION_ENABLED", "gender_age": "GENDER_AGE_ENABLED"}


@dataclass(frozen=True)
class Analysis:
    burst: Burst
    attributes: dict[int, dict[str, Any]]  # frame index -> its attributes (usable frames only)
    models: dict[str, str]  # task -> model id used


def resolve_tasks(runtime: Runtime, requested: str | None) -> tuple[str, ...]:
    """The tasks a request asks for (``expression``, ``gender_age``, comma-separated), each
    available here; with none named, every task this service has loaded."""
    models = runtime.attributes
    if requested is None or not requested.strip():
        if not models.loaded:
            raise Unavailable(
                "attribute_unavailable", "no attribute model is available on this server", {"unavailable": models.unavailable}
            )
        return tuple(t for t in TASKS if t in models.loaded)
    tasks = tuple(dict.fromkeys(part.strip() for part in requested.split(",") if part.strip()))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise InvalidInput("unknown_attribute", f"unknown attributes {unknown}; choose from {list(TASKS)}", {"supported": list(TASKS)})
    for task in tasks:
        if task in models.loaded:
            continue
        if not getattr(runtime.settings, SETTING_OF[task]):
            raise Forbidden("attribute_disabled", f"{task} is switched off on this server ({SETTING_OF[task]}=false)", {"attribute": task})
        raise Unavailable("attribute_unavailable", f"{task} is not available: {models.unavailable.get(task)}", {"attribute": task})
    return tasks


def attributes_of(runtime: Runtime, burst: Burst, tasks: tuple[str, ...]) -> dict[int, dict[str, Any]]:
    """Attributes of every usable frame's aligned crop, by frame index."""
    if not tasks or burst.crops is None:
        return {}
    with STAGE_SECONDS.labels(stage="attributes").time():
        records = runtime.attributes.predict(burst.crops, tasks)
    return dict(zip(burst.used_indices, records, strict=True))


def audit_fields(runtime: Runtime, attributes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """What an audit event may hold of the attributes: nothing unless AUDIT_ATTRIBUTES is on."""
    if not runtime.settings.AUDIT_ATTRIBUTES or not attributes:
        return {}
    return {"attributes": [{"frame": index, **record} for index, record in sorted(attributes.items())]}


def analyze(runtime: Runtime, session: Session, frames: Sequence[bytes], *, actor: Actor, tasks: tuple[str, ...]) -> Analysis:
    """``tasks`` as :func:`resolve_tasks` answered them (checked before the frames are read)."""
    burst = process_burst(frames, runtime.aligners, None, runtime.limits)
    for stage, seconds in burst.timings.items():
        STAGE_SECONDS.labels(stage=stage).observe(seconds)
    attributes = attributes_of(runtime, burst, tasks)
    models = {t: runtime.attributes.loaded[t].model_id for t in tasks}
    audit.record(
        session,
        actor,
        "analyze",
        model_id=",".join(models.values())[:120],
        frames_used=burst.used,
        frames_rejected=burst.rejected(),
        **audit_fields(runtime, attributes),
    )
    return Analysis(burst, attributes, models)
