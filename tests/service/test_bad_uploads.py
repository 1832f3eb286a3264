"""Hostile and broken uploads: each is refused with its stable code and changes nothing stored.

Every image is generated here (random bytes, a JPEG cut in half, a 50-megapixel header, a PNG
decompression bomb, scenes with no face or two faces). After every refusal the store's row
counts and ``store_state.generation`` must be what they were before; only the audit log grows.
"""

from __future__ import annotations

import functools
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from app.core.errors import DomainError
from app.main import create_app
from app.services.runtime import Runtime
from app.vision.decode import decode_frame
from tests.service.conftest import multipart
from tests.service.inputs import (
    StoreCounts,
    dark_face,
    grey_jpeg,
    huge_jpeg,
    noise_jpeg,
    png_bomb,
    random_bytes,
    seed_person,
    small_face,
    store_counts,
    truncated_jpeg,
    two_faces,
    zero_png,
)


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(out, "GIF")
    return out.getvalue()


# name -> (frame builder, status, code); builders are cached, the bomb takes a second to squeeze.
BAD_FRAMES: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "random_bytes": (random_bytes, 415, "not_an_image"),
    "truncated_jpeg": (truncated_jpeg, 422, "corrupt_image"),
    "jpeg_50_megapixels": (huge_jpeg, 413, "image_too_large"),
    "png_50_megapixels": (functools.partial(zero_png, 7100, 7100), 413, "image_too_large"),
    "png_decompression_bomb": (png_bomb, 413, "decompression_bomb"),
    "empty_frame": (lambda: b"", 422, "empty_frame"),
    "gif": (_gif, 415, "unsupported_image_format"),
}


@functools.cache
def bad_frame(name: str) -> bytes:
    return BAD_FRAMES[name][0]()


@pytest.fixture
def seeded(admin: TestClient, clean_runtime: Runtime) -> tuple[TestClient, int, StoreCounts]:
    """The admin client, a person already in the store, and the store's counts before the test."""
    person_id = seed_person(clean_runtime)
    return admin, person_id, store_counts(clean_runtime)


def _assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "details"}, body
    assert body["code"] == code, body
    assert body["message"]
    return body


# The endpoints that take a burst, as (method, path template, extra form fields).
UPLOADS = {
    "identify": ("/v1/identify", {"door_id": "bad-upload-door"}),
    "verify": ("/v1/persons/{pid}/verify", {}),
    "enrol": ("/v1/persons", {"name": "Mallory"}),
    "add_frames": ("/v1/persons/{pid}/frames", {}),
    "deletion_request": ("/v1/deletion-requests", {}),
}


# -- one bad frame in a burst -------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(UPLOADS))
@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frame_is_refused_with_its_code(
    seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime, case: str, endpoint: str
) -> None:
    http, pid, before = seeded
    path, fields = UPLOADS[endpoint]
    # A good frame first: one undecodable frame refuses the whole burst and names its index.
    frames = [grey_jpeg(), bad_frame(case)]
    started = time.perf_counter()
    response = http.post(path.format(pid=pid), **multipart(frames, **fields))
    elapsed = time.perf_counter() - started
    _, status, code = BAD_FRAMES[case]
    body = _assert_error(response, status, code)
    assert body["details"] == {"frame": 1}
    assert store_counts(clean_runtime) == before
    # Refused from the header: no pixel of a 400-megapixel bomb is ever decoded.
    assert elapsed < 10


@pytest.mark.parametrize("case", ["jpeg_50_megapixels", "png_50_megapixels", "png_decompression_bomb"])
def test_huge_images_are_refused_before_decoding(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[object] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        decoded.append(self)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(DomainError) as refused:
        decode_frame(bad_frame(case), 0, max_bytes=8 * 1024 * 1024, max_pixels=40_000_000)
    assert refused.value.code == BAD_FRAMES[case][2]
    assert decoded == [], "pixels were decoded before the size check"


def test_refused_identify_is_audited_as_error(seeded: tuple[TestClient, int, StoreCounts]) -> None:
    http, _, _ = seeded
    _assert_error(http.post("/v1/identify", **multipart([bad_frame("png_decompression_bomb")], door_id="d1")), 413, "decompression_bomb")
    events = http.get("/v1/events", params={"kind": "identify"}).json()
    assert events["count"] == 1
    event = events["data"][0]
    assert (event["decision"], event["reason"], event["status_code"], event["door_id"]) == ("error", "decompression_bomb", 413, "d1")


# -- request-level refusals ---------------------------------------------------------------------


def test_too_many_frames(seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime) -> None:
    http, pid, before = seeded
    frames = [grey_jpeg(32)] * (clean_runtime.settings.MAX_FRAMES + 1)
    for endpoint, (path, fields) in UPLOADS.items():
        body = _assert_error(http.post(path.format(pid=pid), **multipart(frames, **fields)), 413, "too_many_frames")
        assert str(clean_runtime.settings.MAX_FRAMES) in body["message"], endpoint
    assert store_counts(clean_runtime) == before


def test_frame_too_large(seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    http, pid, before = seeded
    monkeypatch.setattr(clean_runtime, "settings", clean_runtime.settings.model_copy(update={"MAX_FRAME_BYTES": 20_000}))
    frames = [grey_jpeg(32), noise_jpeg(300)]
    assert len(frames[1]) > 20_000
    for path, fields in UPLOADS.values():
        body = _assert_error(http.post(path.format(pid=pid), **multipart(frames, **fields)), 413, "frame_too_large")
        assert body["details"] == {"frame": 1}
    assert store_counts(clean_runtime) == before


def test_missing_frames_field(seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime) -> None:
    http, pid, before = seeded
    for path, fields in UPLOADS.values():
        # Multipart, but with no 'frames' part at all.
        response = http.post(path.format(pid=pid), files={"note": ("note.txt", b"hello", "text/plain")}, data=fields or {"x": "y"})
        _assert_error(response, 422, "no_frames")
    assert store_counts(clean_runtime) == before


def test_enrol_without_name(seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime) -> None:
    http, _, before = seeded
    body = _assert_error(http.post("/v1/persons", **multipart([grey_jpeg()])), 422, "invalid_request")
    assert any(e["loc"][-1] == "name" for e in body["details"]["errors"])
    assert store_counts(clean_runtime) == before


@pytest.mark.parametrize("metadata", ["{not json", "[1, 2]", '"a string"', "42", json.dumps({"k": "v" * 17_000})])
def test_bad_metadata(seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime, metadata: str) -> None:
    http, _, before = seeded
    response = http.post("/v1/persons", **multipart([grey_jpeg()] * 3, name="Meta", metadata=metadata))
    _assert_error(response, 422, "invalid_metadata")
    assert store_counts(clean_runtime) == before


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("application/json", json.dumps({"frames": ["aGVsbG8="]}).encode()),
        ("text/plain", b"frames=hello"),
        ("application/x-www-form-urlencoded", b"frames=hello&door_id=x"),
        ("image/jpeg", b"\xff\xd8\xff\xe0"),
        (None, b""),
    ],
)
def test_wrong_content_type(
    seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime, content_type: str | None, content: bytes
) -> None:
    http, pid, before = seeded
    headers = {"Content-Type": content_type} if content_type else {}
    for path, _ in UPLOADS.values():
        _assert_error(http.post(path.format(pid=pid), content=content, headers=headers), 415, "expected_multipart")
    assert store_counts(clean_runtime) == before


@pytest.fixture
def small_body_client(clean_runtime: Runtime, admin_key: str) -> Iterator[TestClient]:
    """The app with MAX_REQUEST_BYTES at 64 KiB (the runtime is the shared one)."""
    settings = clean_runtime.settings.model_copy(update={"MAX_REQUEST_BYTES": 64 * 1024})
    with TestClient(create_app(settings, runtime=clean_runtime), raise_server_exceptions=False) as c:
        c.headers["X-API-Key"] = admin_key
        yield c


def test_oversized_multipart_body(small_body_client: TestClient, clean_runtime: Runtime) -> None:
    seed_person(clean_runtime)
    before = store_counts(clean_runtime)
    frames = [noise_jpeg(200, seed) for seed in range(8)]  # ~8 x 30 KB
    assert sum(map(len, frames)) > 64 * 1024
    for path, fields in UPLOADS.values():
        _assert_error(small_body_client.post(path.format(pid=1), **multipart(frames, **fields)), 413, "request_too_large")
    assert store_counts(clean_runtime) == before


def test_oversized_streamed_body_without_length(small_body_client: TestClient, clean_runtime: Runtime) -> None:
    """A chunked upload declares no Content-Length: it is cut off while streaming, still 413."""
    before = store_counts(clean_runtime)
    boundary = "facegate-boundary"
    frame = noise_jpeg(300)

    def body() -> Iterator[bytes]:
        for i in range(6):
            yield (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="frames"; filename="f{i}.jpg"\r\n'
                    "Content-Type: image/jpeg\r\n\r\n"
                ).encode()
                + frame
                + b"\r\n"
            )
        yield f"--{boundary}--\r\n".encode()

    response = small_body_client.post("/v1/identify", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    _assert_error(response, 413, "request_too_large")
    assert store_counts(clean_runtime) == before


@pytest.fixture
def small_body_limit(clean_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clean_runtime, "settings", clean_runtime.settings.model_copy(update={"MAX_REQUEST_BYTES": 64 * 1024}))


@pytest.fixture
def small_body_server(small_body_limit: None, live_server: str) -> str:
    """uvicorn serving the app with MAX_REQUEST_BYTES at 64 KiB."""
    return live_server


def test_oversized_bodies_over_real_http(small_body_server: str, clean_runtime: Runtime, admin_key: str) -> None:
    before = store_counts(clean_runtime)
    frame = noise_jpeg(300)

    def chunks() -> Iterator[bytes]:
        boundary = "facegate-boundary"
        for i in range(6):
            yield (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="frames"; filename="f{i}.jpg"\r\n'
                    "Content-Type: image/jpeg\r\n\r\n"
                ).encode()
                + frame
                + b"\r\n"
            )
        yield f"--{boundary}--\r\n".encode()

    with httpx.Client(base_url=small_body_server, headers={"X-API-Key": admin_key}, timeout=30) as http:
        declared = http.post("/v1/identify", **multipart([frame] * 6))  # type: ignore[arg-type]
        _assert_error(declared, 413, "request_too_large")
        streamed = http.post("/v1/persons", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=facegate-boundary"})
        assert streamed.request.headers.get("transfer-encoding") == "chunked"
        _assert_error(streamed, 413, "request_too_large")
        # The server is still serving.
        assert http.get("/healthz").status_code == 200
    assert store_counts(clean_runtime) == before


@pytest.mark.parametrize("value", [0, 1, -1, 1.5, "abc", None, "missing", "extra"])
def test_bad_threshold_values(seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime, value: object) -> None:
    http, _, before = seeded
    if value == "missing":
        payload: object = {}
    elif value == "extra":
        payload = {"threshold": 0.2, "unexpected": True}
    else:
        payload = {"threshold": value}
    _assert_error(http.put("/v1/threshold", json=payload), 422, "invalid_request")
    # A body that is not JSON at all is refused the same way.
    _assert_error(http.put("/v1/threshold", content=b"0.2", headers={"Content-Type": "application/json"}), 422, "invalid_request")
    assert store_counts(clean_runtime) == before
    assert http.get("/v1/threshold").json()["source"] == "default"


def test_unknown_person_ids(seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime) -> None:
    http, pid, before = seeded
    missing = pid + 10_000
    frames = multipart([grey_jpeg()])
    for response in (
        http.get(f"/v1/persons/{missing}"),
        http.get(f"/v1/persons/{missing}/sample"),
        http.patch(f"/v1/persons/{missing}", json={"name": "Nobody"}),
        http.delete(f"/v1/persons/{missing}"),
        http.post(f"/v1/persons/{missing}/verify", **frames),
        http.post(f"/v1/persons/{missing}/frames", **frames),
    ):
        body = _assert_error(response, 404, "person_not_found")
        assert str(missing) in body["message"]
    # Not an integer, or one no BIGINT column can hold: a validation error, never a 500 or a 503.
    for absurd in ("not-a-number", "0", "-1", str(2**63), str(10**30)):
        for response in (
            http.get(f"/v1/persons/{absurd}"),
            http.get(f"/v1/persons/{absurd}/sample"),
            http.patch(f"/v1/persons/{absurd}", json={"name": "Nobody"}),
            http.delete(f"/v1/persons/{absurd}"),
            http.post(f"/v1/persons/{absurd}/verify", **frames),
            http.post(f"/v1/persons/{absurd}/frames", **frames),
            http.delete(f"/v1/keys/{absurd}"),
        ):
            _assert_error(response, 422, "invalid_request")
    assert store_counts(clean_runtime) == before


def test_unparseable_bodies_are_400(seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime) -> None:
    """Bodies that cannot even be parsed: 400 bad_request, as the OpenAPI document declares."""
    http, pid, before = seeded
    not_utf8 = b"\xbfF"
    for method, path in (
        ("PUT", "/v1/threshold"),
        ("PATCH", f"/v1/persons/{pid}"),
        ("POST", "/v1/keys"),
        ("POST", "/v1/deletion-requests/confirm"),
        ("POST", "/v1/threshold/calibrate"),
    ):
        response = http.request(method, path, content=not_utf8, headers={"Content-Type": "application/json"})
        _assert_error(response, 400, "bad_request")
    for path, _ in UPLOADS.values():
        no_boundary = http.post(path.format(pid=pid), content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
        _assert_error(no_boundary, 400, "bad_request")
    spec = http.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if "requestBody" in op:
                assert "400" in op["responses"], (method, path)
    assert store_counts(clean_runtime) == before


# -- frames that decode but are not usable --------------------------------------------------------


def test_no_face_identify_is_denied_and_enrol_refused(seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime) -> None:
    http, _, before = seeded
    frames = [grey_jpeg(), noise_jpeg(200, 1)]
    answer = http.post("/v1/identify", **multipart(frames, door_id="grey-door"))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["decision"], result["reason"], result["person"], result["frames_used"]) == ("denied", "no_usable_frames", None, 0)
    assert [f["reason"] for f in result["frames"]] == ["no_face", "no_face"]

    body = _assert_error(http.post("/v1/persons", **multipart(frames * 2, name="Nobody")), 422, "not_enough_usable_frames")
    assert body["details"]["usable"] == 0
    assert body["details"]["required"] == clean_runtime.settings.MIN_ENROL_FRAMES
    assert body["details"]["rejected"] == {"no_face": 4}
    assert store_counts(clean_runtime) == before


@pytest.fixture(scope="module")
def unusable_scenes(faces: dict[str, list[bytes]]) -> dict[str, bytes]:
    """One frame per quality reason, each made from a real photo."""
    people = list(faces)
    return {
        "no_face": grey_jpeg(),
        "multiple_faces": two_faces(faces[people[0]][0], faces[people[1]][0]),
        "face_too_small": small_face(faces[people[2]][0]),
        "too_dark": dark_face(faces[people[0]][1]),
    }


def test_quality_reasons_per_frame(
    seeded: tuple[TestClient, int, StoreCounts], clean_runtime: Runtime, unusable_scenes: dict[str, bytes]
) -> None:
    http, pid, before = seeded
    expected = list(unusable_scenes)
    frames = list(unusable_scenes.values())

    answer = http.post("/v1/identify", **multipart(frames, door_id="q-door"))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["decision"], result["reason"], result["frames_used"]) == ("denied", "no_usable_frames", 0)
    assert [(f["index"], f["used"], f["reason"]) for f in result["frames"]] == [(i, False, r) for i, r in enumerate(expected)]

    verify = http.post(f"/v1/persons/{pid}/verify", **multipart(frames))
    assert verify.status_code == 200, verify.text
    assert verify.json()["reason"] == "no_usable_frames"
    assert [f["reason"] for f in verify.json()["frames"]] == expected

    body = _assert_error(http.post("/v1/persons", **multipart(frames, name="Crowd")), 422, "not_enough_usable_frames")
    assert [f["reason"] for f in body["details"]["frames"]] == expected
    assert body["details"]["rejected"] == dict.fromkeys(expected, 1)

    _assert_error(http.post(f"/v1/persons/{pid}/frames", **multipart(frames)), 422, "not_enough_usable_frames")
    assert store_counts(clean_runtime) == before

    # The denial is audited with the per-reason counts.
    event = http.get("/v1/events", params={"kind": "identify", "door_id": "q-door"}).json()["data"][0]
    assert (event["decision"], event["reason"], event["frames_used"]) == ("denied", "no_usable_frames", 0)
    assert event["frames_rejected"] == dict.fromkeys(expected, 1)
