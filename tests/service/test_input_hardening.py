"""Every client mistake is a 4xx with a stable code, never a 500 or a 503, on both stores.

Hostile text (control characters, lone surrogates), metadata nested past any limit (up to
100,000 levels, past the JSON parser's own recursion limit), oversized text parts, wildcard
characters in filters, blank names, instants outside the calendar. After each refusal the store
is what it was; over real HTTP the connection keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.services.runtime import Runtime
from app.store import crud
from tests.service.conftest import multipart
from tests.service.inputs import grey_jpeg, seed_person, store_counts


def _assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"code", "message", "details"}, body
    assert body["code"] == code, body
    assert body["message"]
    return body


def _nested(depth: int, shape: str) -> str:
    """JSON text of ``depth`` nested containers, innermost holding a 1."""
    if shape == "array":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


# Around every interesting limit: ours (32), pydantic's serializer (~255), the JSON parser's
# recursion limit (~1000, which moves with the stack depth it is called at), and far past it.
DEPTHS = [33, 64, 300, *range(850, 1151, 25), 3000, 100_000]


# -- metadata nested too deep -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["array", "object"])
def test_deep_metadata_is_invalid_metadata_at_any_depth(admin: TestClient, clean_runtime: Runtime, shape: str) -> None:
    pid = seed_person(clean_runtime, "Deep")
    before = store_counts(clean_runtime)
    original = admin.get(f"/v1/persons/{pid}").json()
    for depth in DEPTHS:
        # Metadata is the object; its member holds the rest: depth + 1 levels in all.
        metadata = '{"m":' + _nested(depth, shape) + "}"
        enrol = admin.post("/v1/persons", **multipart([grey_jpeg()] * 3, name="Deep", metadata=metadata))
        _assert_error(enrol, 422, "invalid_metadata")
        patch = admin.patch(f"/v1/persons/{pid}", content='{"metadata":' + metadata + "}", headers={"Content-Type": "application/json"})
        body = _assert_error(patch, 422, "invalid_metadata")
        assert "32" in body["message"], (depth, body)
    assert store_counts(clean_runtime) == before
    assert admin.get(f"/v1/persons/{pid}").json() == original


def test_metadata_at_the_depth_limit_is_stored_and_echoed(admin: TestClient, clean_runtime: Runtime) -> None:
    pid = seed_person(clean_runtime, "Limit")
    deepest = json.loads(_nested(31, "object"))  # 31 levels inside the metadata object: 32 in all
    patched = admin.patch(f"/v1/persons/{pid}", json={"metadata": {"m": deepest}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["metadata"] == {"m": deepest}
    assert admin.get(f"/v1/persons/{pid}").json()["metadata"] == {"m": deepest}
    # The enrol form accepts it too: refused only later, for the grey frames.
    enrol = admin.post("/v1/persons", **multipart([grey_jpeg()] * 3, name="Limit", metadata=json.dumps({"m": deepest})))
    _assert_error(enrol, 422, "not_enough_usable_frames")
    one_more = admin.patch(f"/v1/persons/{pid}", json={"metadata": {"m": {"n": deepest}}})
    _assert_error(one_more, 422, "invalid_metadata")


def test_deep_json_bodies_elsewhere_are_invalid_request(admin: TestClient) -> None:
    """Past the parser's limit in a body with no metadata: still a 422, never a 400 or 500."""
    deep = _nested(100_000, "array")
    for method, path in (("POST", "/v1/keys"), ("POST", "/v1/deletion-requests/confirm"), ("PATCH", "/v1/persons/1")):
        response = admin.request(method, path, content='{"name":' + deep + "}", headers={"Content-Type": "application/json"})
        _assert_error(response, 422, "invalid_request")
    _assert_error(admin.post("/v1/keys", content=deep, headers={"Content-Type": "application/json"}), 422, "invalid_request")


# metadata text -> what PATCH answers when it is the body's `metadata` (the enrol form always
# answers invalid_metadata): a body the JSON parser cannot read at all is the body's fault.
BAD_METADATA = {
    "nan": ('{"n": NaN}', 422, "invalid_metadata"),
    "infinity": ('{"n": -Infinity}', 422, "invalid_metadata"),
    "overflow": ('{"n": 1e999}', 422, "invalid_metadata"),
    "over_16k": (json.dumps({"k": "v" * 17_000}), 422, "invalid_metadata"),
    "over_part_size": (json.dumps({"k": "v" * (1100 * 1024)}), 422, "invalid_metadata"),  # past Starlette's 1 MiB part size
    "not_an_object": ("[1, 2]", 422, "invalid_metadata"),
    "huge_int": ('{"n": ' + "9" * 5000 + "}", 400, "bad_request"),  # past Python's integer digit limit
    "broken": ("[" * 20, 422, "invalid_request"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_bad_metadata_values(admin: TestClient, clean_runtime: Runtime, case: str) -> None:
    metadata, patch_status, patch_code = BAD_METADATA[case]
    pid = seed_person(clean_runtime, "Values")
    before = store_counts(clean_runtime)
    _assert_error(admin.post("/v1/persons", **multipart([grey_jpeg()] * 3, name="Values", metadata=metadata)), 422, "invalid_metadata")
    response = admin.patch(f"/v1/persons/{pid}", content='{"metadata":' + metadata + "}", headers={"Content-Type": "application/json"})
    _assert_error(response, patch_status, patch_code)
    assert store_counts(clean_runtime) == before
    assert admin.get(f"/v1/persons/{pid}").json()["metadata"] == {"seeded": True}


def test_oversized_text_parts_answer_their_own_codes(admin: TestClient, door_key: str, clean_runtime: Runtime) -> None:
    """Over Starlette's 1 MiB part size a text part was a 400 bad_request; under, a 422."""
    before = store_counts(clean_runtime)
    two_mib = "d" * (2 * 1024 * 1024)
    door = {"X-API-Key": door_key}
    cases = [
        (admin.post("/v1/identify", headers=door, **multipart([grey_jpeg()], door_id=two_mib)), "invalid_request", "door_id"),
        (admin.post("/v1/persons", **multipart([grey_jpeg()] * 3, name=two_mib)), "invalid_request", "name"),
        (
            admin.post("/v1/persons", **multipart([grey_jpeg()] * 3, name="Big", metadata=json.dumps({"k": two_mib}))),
            "invalid_metadata",
            "metadata",
        ),
    ]
    for response, code, field in cases:
        body = _assert_error(response, 422, code)
        assert body["details"]["errors"][0]["loc"] == ["body", field], body
    assert store_counts(clean_runtime) == before


def test_deep_metadata_over_real_http_keeps_the_connection(live_server: str, admin_key: str, clean_runtime: Runtime) -> None:
    pid = seed_person(clean_runtime, "Wire")
    metadata = '{"m":' + _nested(100_000, "array") + "}"
    with httpx.Client(base_url=live_server, headers={"X-API-Key": admin_key}, timeout=30) as http:
        for _ in range(2):
            enrol = http.post("/v1/persons", **multipart([grey_jpeg()] * 3, name="Wire", metadata=metadata))  # type: ignore[arg-type]
            _assert_error(enrol, 422, "invalid_metadata")
            patch = http.patch(f"/v1/persons/{pid}", content='{"metadata":' + metadata + "}", headers={"Content-Type": "application/json"})
            _assert_error(patch, 422, "invalid_metadata")
            # The next request on the same connection is served.
            assert http.get(f"/v1/persons/{pid}").json()["name"] == "Wire"


# -- control characters ---------------------------------------------------------------------------

CONTROL = ["\x00", "\x01", "\t", "\n", "\x1f", "\x7f", "\x85", "\x9f"]


@pytest.mark.parametrize("char", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
def test_control_characters_are_invalid_text_everywhere(admin: TestClient, clean_runtime: Runtime, door_key: str, char: str) -> None:
    """On Postgres a NUL was a 503 database_unavailable and left no audit event; on SQLite it was stored."""
    pid = seed_person(clean_runtime, "Clean")
    with clean_runtime.sessions() as session:
        token, _ = crud.create_deletion_request(session, person_id=pid, distance=0.01, ttl_s=120)
        session.commit()
    before = store_counts(clean_runtime)
    door = {"X-API-Key": door_key}
    bad = f"a{char}b"
    responses = {
        "identify door_id": admin.post("/v1/identify", headers=door, **multipart([grey_jpeg()], door_id=bad)),
        "verify door_id": admin.post(f"/v1/persons/{pid}/verify", headers=door, **multipart([grey_jpeg()], door_id=bad)),
        "enrol name": admin.post("/v1/persons", **multipart([grey_jpeg()] * 3, name=bad)),
        "enrol metadata key": admin.post("/v1/persons", **multipart([grey_jpeg()] * 3, name="M", metadata=json.dumps({bad: 1}))),
        "enrol metadata value": admin.post(
            "/v1/persons", **multipart([grey_jpeg()] * 3, name="M", metadata=json.dumps({"k": [{"v": bad}]}))
        ),
        "patch name": admin.patch(f"/v1/persons/{pid}", json={"name": bad}),
        "patch metadata key": admin.patch(f"/v1/persons/{pid}", json={"metadata": {"x": {bad: 1}}}),
        "patch metadata value": admin.patch(f"/v1/persons/{pid}", json={"metadata": {"x": [bad]}}),
        "key name": admin.post("/v1/keys", json={"name": bad, "scope": "door"}),
        "deletion token": admin.post("/v1/deletion-requests/confirm", json={"token": token + char}),
        "persons name filter": admin.get("/v1/persons", params={"name": bad}),
        "events door_id filter": admin.get("/v1/events", params={"door_id": bad}),
        "events kind filter": admin.get("/v1/events", params={"kind": bad}),
        "events decision filter": admin.get("/v1/events", params={"decision": bad}),
    }
    for what, response in responses.items():
        assert response.status_code == 422, (what, response.text)
        assert response.json()["code"] == "invalid_text", (what, response.json())
    assert store_counts(clean_runtime) == before
    assert admin.get(f"/v1/persons/{pid}").json()["name"] == "Clean"
    # The refused door attempts are audited, without the refused text.
    events = admin.get("/v1/events", params={"decision": "error", "limit": 500}).json()["data"]
    attempts = {(e["kind"], e["status_code"], e["door_id"]) for e in events if e["reason"] == "invalid_text"}
    assert {("identify", 422, None), ("verify", 422, None), ("enrol", 422, None)} <= attempts
    # The token itself still works: nothing was consumed by the refusal.
    assert admin.post("/v1/deletion-requests/confirm", json={"token": token}).status_code == 200


def test_lone_surrogates_are_invalid_text(admin: TestClient, clean_runtime: Runtime) -> None:
    """JSON may escape a lone surrogate, which no database can encode."""
    pid = seed_person(clean_runtime, "Surrogate")
    before = store_counts(clean_runtime)
    as_json = {"Content-Type": "application/json"}
    for payload in ({"name": "a\ud800"}, {"metadata": {"k": "\udfff"}}, {"metadata": {"\ud800": 1}}):
        # json.dumps escapes the surrogate as \\ud800, as a client in another language might.
        response = admin.patch(f"/v1/persons/{pid}", content=json.dumps(payload), headers=as_json)
        _assert_error(response, 422, "invalid_text")
    key = admin.post("/v1/keys", content=json.dumps({"name": "\ud83d", "scope": "door"}), headers=as_json)
    _assert_error(key, 422, "invalid_text")
    # A well-formed pair is a character like any other.
    assert admin.patch(f"/v1/persons/{pid}", json={"name": "Ada \U0001f600"}).json()["name"] == "Ada \U0001f600"
    assert store_counts(clean_runtime) == before


# -- filters, names, instants -----------------------------------------------------------------------


def test_name_filter_is_a_literal_substring(admin: TestClient, clean_runtime: Runtime) -> None:
    for i, name in enumerate(["Ada Lovelace", "Bob", "50% Off", "snake_case", "back\\slash"]):
        seed_person(clean_runtime, name, seed=i)

    def names(query: str) -> list[str]:
        response = admin.get("/v1/persons", params={"name": query})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["data"])
        return [p["name"] for p in body["data"]]

    assert names("%") == ["50% Off"]
    assert names("_") == ["snake_case"]
    assert names("%%") == []
    assert names("a%e") == []
    assert names("\\") == ["back\\slash"]
    assert names("LOVE") == ["Ada Lovelace"]
    assert names("o") == ["Ada Lovelace", "Bob", "50% Off"]


@pytest.mark.parametrize("blank", [" ", "   ", "\u3000", "\u00a0 ", "\u200b", "\u2028"])
def test_blank_names_are_refused(admin: TestClient, clean_runtime: Runtime, blank: str) -> None:
    pid = seed_person(clean_runtime, "Named")
    before = store_counts(clean_runtime)
    _assert_error(admin.post("/v1/persons", **multipart([grey_jpeg()] * 3, name=blank)), 422, "invalid_request")
    _assert_error(admin.patch(f"/v1/persons/{pid}", json={"name": blank}), 422, "invalid_request")
    _assert_error(admin.post("/v1/keys", json={"name": blank, "scope": "door"}), 422, "invalid_request")
    assert store_counts(clean_runtime) == before


def test_names_are_stripped(admin: TestClient, clean_runtime: Runtime) -> None:
    pid = seed_person(clean_runtime, "Named")
    assert admin.patch(f"/v1/persons/{pid}", json={"name": "  Ada King \u3000"}).json()["name"] == "Ada King"
    assert admin.post("/v1/keys", json={"name": " front-door ", "scope": "door"}).json()["name"] == "front-door"


def test_instants_outside_the_calendar(admin: TestClient) -> None:
    for params in ({"since": "9999-12-31T23:00:00-05:00"}, {"until": "0001-01-01T00:30:00+01:00"}):
        _assert_error(admin.get("/v1/events", params=params), 422, "invalid_request")
    assert admin.get("/v1/events", params={"since": "9999-12-31T23:00:00+00:00"}).json()["count"] == 0
