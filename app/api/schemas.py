"""Request and response schemas, in Create / Update / Public families."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.core.validation import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, Metadata, NameCheck, TextCheck

# A person's or a key's name: surrounding white space stripped, something visible left, no
# control characters (422 invalid_request / invalid_text).
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), NameCheck]


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class ExpressionPublic(BaseModel):
    top: Literal["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    probabilities: dict[str, float] = Field(description="the seven FER2013 classes; they sum to 1")


class GenderPublic(BaseModel):
    female_probability: float = Field(
        ge=0, le=1, description="the model's probability that the face is a woman's (binary labels of UTKFace)"
    )


class AgePublic(BaseModel):
    years: float = Field(description="estimated age; mean absolute error on held-out faces is in the README, by age band")


class FrameAttributes(BaseModel):
    expression: ExpressionPublic | None = None
    gender: GenderPublic | None = None
    age: AgePublic | None = None


class FramePublic(BaseModel):
    index: int = Field(description="position of the frame in the upload, from 0")
    used: bool = Field(description="whether the frame went into the fused vector")
    reason: str | None = Field(
        default=None,
        description="why it was not used: no_face, multiple_faces, face_too_small, too_blurry, too_dark, too_bright",
    )
    faces: int = Field(default=0, description="faces found in the frame; with several, the one clearly largest is used")
    face_box: list[float] | None = Field(
        default=None, description="the face used (or judged): its landmark box [x0, y0, x1, y1] in frame pixels"
    )
    attributes: FrameAttributes | None = Field(
        default=None, description="face attributes of a usable frame, when asked for (`attributes=expression`); never part of the decision"
    )


class PersonRef(BaseModel):
    id: int
    name: str


class FramesCheckPublic(BaseModel):
    usable: int = Field(description="frames that would be used")
    enough_to_enrol: bool = Field(description="at least MIN_ENROL_FRAMES usable frames")
    frames: list[FramePublic]


class AnalyzePublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "models": {"expression": "facegate-expression-mnv2-64-..."},
                    "unavailable": {"gender_age": "switched off by configuration"},
                    "frames_with_face": 1,
                    "frames_analysed": 1,
                    "frames": [
                        {
                            "index": 0,
                            "used": True,
                            "reason": None,
                            "faces": 1,
                            "attributes": {"expression": {"top": "happy", "probabilities": {"happy": 0.91, "neutral": 0.05}}},
                        }
                    ],
                }
            ]
        }
    )

    models: dict[str, str] = Field(description="the attribute model used for each task")
    unavailable: dict[str, str] = Field(description="tasks this server does not serve, and why")
    frames_with_face: int = Field(description="frames in which Face Mesh found at least one face")
    frames_analysed: int = Field(description="frames whose face passed the quality checks and was analysed")
    frames: list[FramePublic]


class IdentifyPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "decision": "granted",
                    "reason": "match",
                    "person": {"id": 7, "name": "Ada Lovelace"},
                    "distance": 0.081,
                    "threshold": 0.25,
                    "margin": 0.29,
                    "model_id": "facegate-mnv2-...",
                    "frames_used": 5,
                    "frames": [{"index": 0, "used": True, "reason": None}],
                    "door_id": "front-door",
                }
            ]
        }
    )

    decision: Literal["granted", "denied"]
    reason: str = Field(description="match, no_match (unknown face), no_usable_frames or no_templates")
    person: PersonRef | None = Field(description="the matched person; null when denied")
    distance: float | None = Field(description="distance of the fused vector to the nearest template (0..1)")
    threshold: float
    margin: float | None = Field(description="second-nearest person's distance minus the nearest's")
    model_id: str
    frames_used: int
    frames: list[FramePublic]
    door_id: str | None = None


class VerifyPublic(BaseModel):
    decision: Literal["granted", "denied"]
    reason: str
    person: PersonRef
    distance: float | None
    threshold: float
    model_id: str
    frames_used: int
    frames: list[FramePublic]


class PersonPublic(BaseModel):
    id: int
    name: str
    metadata: dict[str, Any]
    frame_count: int = Field(description="frames fused into this person's template for the serving model")
    has_template: bool
    search_count: int
    last_matched_at: datetime | None
    created_at: datetime
    updated_at: datetime


class PersonWithFrames(PersonPublic):
    """A person and what became of each frame of the burst (enrol and add-frames answer this)."""

    frames: list[FramePublic]


class PersonsPublic(BaseModel):
    data: list[PersonPublic]
    count: int


class PersonUpdate(BaseModel):
    """Only the fields sent change; `metadata` replaces the stored object whole (no merge)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Ada King", "metadata": {"badge": "A-17"}}]})

    name: Name | None = Field(default=None, description="the new name; surrounding white space is stripped")
    metadata: Metadata | None = Field(
        default=None,
        description=(
            "replaces the stored metadata as a whole: keys left out are removed, nothing is merged; "
            f"`{{}}` clears it. A JSON object of at most {MAX_METADATA_BYTES // 1024} KiB (compact JSON), "
            f"nested at most {MAX_METADATA_DEPTH} levels, without control characters"
        ),
    )


class DeletionRequestPublic(BaseModel):
    person: PersonRef
    distance: float
    token: str = Field(description="one-time confirmation token; POST it to /v1/deletion-requests/confirm")
    expires_at: datetime


class DeletionConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, StringConstraints(min_length=1, max_length=200), TextCheck]


class DeletionDone(BaseModel):
    deleted: PersonRef


class FarRow(BaseModel):
    far: float = Field(description="target false-accept rate per comparison")
    by_frames: dict[int, float] = Field(description="the model's threshold for each number of usable frames fused")


class ThresholdPublic(BaseModel):
    threshold: float = Field(description="in force for a burst of `template_frames` frames")
    source: Literal["default", "target_far", "distance", "configured"] = Field(
        description="default: the model's table at its default FAR; target_far: an admin chose another FAR of the table; "
        "distance: an admin's raw distance, used for every burst size; configured: DEFAULT_THRESHOLD"
    )
    target_far: float | None = Field(description="the FAR whose row of the table applies (null for a raw distance)")
    by_frames: dict[int, float] = Field(description="the threshold in force for each number of usable frames fused")
    default: float | None = Field(description="the model's threshold for a burst of `template_frames` frames at its default FAR")
    default_far: float | None = Field(description="the false-accept rate the model's default thresholds are set at")
    default_by_frames: dict[int, float] | None = Field(description="the model's default threshold for each number of usable frames")
    far_table: list[FarRow] = Field(description="the model's whole table: one row per target FAR it was measured at")
    model_id: str
    template_frames: int = Field(description="frames fused into a template at enrolment")


class ThresholdUpdate(BaseModel):
    """Exactly one of the two."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"target_far": 0.0001}, {"threshold": 0.25}]})
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0, description="a raw distance for every burst size, 0 < t < 1")
    target_far: float | None = Field(default=None, gt=0.0, lt=1.0, description="a FAR of the model's table (a security level)")

    @model_validator(mode="after")
    def _one(self) -> ThresholdUpdate:
        if (self.threshold is None) == (self.target_far is None):
            raise ValueError("send exactly one of threshold (a distance) or target_far")
        return self


class CalibrateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"method": "target_far", "target_far": 0.001, "apply": False}]}
    )

    method: Literal["min_negative", "target_far"] = "target_far"
    target_far: float = Field(default=0.001, gt=0.0, lt=1.0)
    apply: bool = Field(default=False, description="store the recommendation (a target FAR, or the min_negative distance)")
    sample: int = Field(default=2000, ge=2, le=5000, description="templates sampled for the negative distances")


class CalibratePublic(BaseModel):
    templates_used: int
    min_negative_distance: float | None = Field(description="smallest distance between two enrolled people (the origin's rule)")
    manifest_far_threshold: float | None = Field(
        description="the model's threshold at target_far for bursts of a template's number of frames (the table the service applies)"
    )
    recommended: float | None
    method: str
    applied: bool
    threshold: float = Field(description="in force now, for a burst of a template's number of frames")


class DistributionsPublic(BaseModel):
    bins: list[float] = Field(description="histogram bin edges on the distance scale")
    frames: int = Field(description="frames fused on both sides in the model's evaluation (a template's worth)")
    genuine: list[int] | None = Field(description="same-person distances from the model's evaluation (null if it has none)")
    impostor: list[int] | None = Field(description="different-person distances from the model's evaluation")
    enrolled_nearest: list[int] = Field(description="each sampled enrolled template's distance to its nearest other template")
    templates_used: int
    threshold: float = Field(description="in force for bursts of `frames` frames")


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "front-door", "scope": "door", "expires_in_days": 365}]}
    )

    name: Name
    scope: Literal["door", "analysis", "door+analysis", "admin"] = Field(
        description="door: identify and verify; analysis: face attributes (POST /v1/analyze); door+analysis: both; admin: everything"
    )
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class KeyPublic(BaseModel):
    id: int
    name: str
    scope: str
    prefix: str
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
    revoked_at: UtcDatetime | None
    last_used_at: UtcDatetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="the key itself; shown once, stored only as a hash")


class KeysPublic(BaseModel):
    data: list[KeyPublic]
    count: int


class EventPublic(BaseModel):
    id: int
    created_at: datetime
    kind: str
    request_id: str | None
    key_name: str | None
    door_id: str | None
    decision: str | None
    reason: str | None
    person_id: int | None
    distance: float | None
    threshold: float | None
    margin: float | None
    model_id: str | None
    frames_used: int | None
    frames_rejected: dict[str, Any] | None
    attributes: list[Any] | None = Field(default=None, description="per-frame face attributes, recorded only when AUDIT_ATTRIBUTES is on")
    latency_ms: float | None
    status_code: int | None


class EventsPublic(BaseModel):
    data: list[EventPublic]
    count: int


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)
