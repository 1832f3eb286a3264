"""Property tests of every client text field: whatever the text, a 2xx or a 4xx with a stable
code, never a 5xx, and nothing stored on a refusal. On SQLite and Postgres alike.

Generated: any Unicode including control characters and lone surrogates, very long strings,
and JSON metadata of any shape (deep, wide, odd numbers). test_input_hardening.py holds the
hand-picked cases; these look for the ones nobody thought of.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.validation import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, control_character
from app.services.runtime import Runtime
from tests.service.conftest import multipart
from tests.service.inputs import grey_jpeg, seed_person, store_counts

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

# Any code point (surrogates included), biased towards control characters, at any length up
# to well past every field's limit.
CONTROL = st.characters(min_codepoint=0, max_codepoint=0x9F).filter(lambda c: control_character(c) is not None)
TEXT = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.text(st.one_of(CONTROL, st.characters(codec="utf-8")), min_size=1, max_size=30),
    st.text(st.characters(codec="utf-8"), min_size=190, max_size=260),
    st.just("%"),
    st.just("_"),
    st.just(" \t "),
)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True), TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=30
)
DEEP = st.integers(min_value=1, max_value=1500).map(lambda depth: '{"a":' * depth + "1" + "}" * depth)


def _is_error(response: Any, status: int | None = None) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert status is None or response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"code", "message", "details"} and body["code"], body
    return str(body["code"])


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _acceptable_metadata(value: Any) -> bool:
    """What the service must take: a JSON object within the limits, finite numbers, clean text."""
    if not isinstance(value, dict) or _depth(value) > MAX_METADATA_DEPTH:
        return False
    if len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        return False

    def clean(v: Any) -> bool:
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, str):
            return control_character(v) is None
        if isinstance(v, dict):
            return all(clean(k) and clean(x) for k, x in v.items())
        if isinstance(v, list):
            return all(clean(x) for x in v)
        return True

    return clean(value)


def test_person_name_and_metadata(admin: TestClient, clean_runtime: Runtime) -> None:
    pid = seed_person(clean_runtime, "Original")

    @PROPERTY
    @given(name=st.one_of(st.none(), TEXT), metadata=st.one_of(st.none(), JSON_VALUES, st.dictionaries(TEXT, JSON_VALUES, max_size=3)))
    def patch(name: str | None, metadata: Any) -> None:
        before = admin.get(f"/v1/persons/{pid}").json()
        counts = store_counts(clean_runtime)
        body = _dumps({k: v for k, v in {"name": name, "metadata": metadata}.items() if v is not None})
        answer = admin.patch(f"/v1/persons/{pid}", content=body, headers={"Content-Type": "application/json"})
        name_ok = name is None or (control_character(name) is None and 0 < len(name) <= 200 and name.strip() != "")
        metadata_ok = metadata is None or _acceptable_metadata(metadata)
        if answer.status_code == 200:
            assert name_ok and metadata_ok, (name, metadata)
            return
        code = _is_error(answer, 422)
        assert not (name_ok and metadata_ok), (name, metadata, answer.text[:300])
        assert code in {"invalid_text", "invalid_metadata", "invalid_request"}, code
        assert admin.get(f"/v1/persons/{pid}").json() == before
        assert store_counts(clean_runtime) == counts

    patch()


def test_deep_metadata_text_at_any_depth(admin: TestClient, clean_runtime: Runtime) -> None:
    pid = seed_person(clean_runtime, "Deep")

    @PROPERTY
    @given(nested=DEEP)
    def patch(nested: str) -> None:
        depth = nested.count("{")
        answer = admin.patch(f"/v1/persons/{pid}", content='{"metadata":' + nested + "}", headers={"Content-Type": "application/json"})
        if depth <= MAX_METADATA_DEPTH:
            assert answer.status_code == 200, answer.text[:300]
        else:
            assert _is_error(answer, 422) == "invalid_metadata"

    patch()


def test_key_names(admin: TestClient, clean_runtime: Runtime) -> None:
    @PROPERTY
    @given(name=TEXT, scope=st.sampled_from(["door", "admin", "analysis", "door+analysis", "auditor", "ADMIN", ""]))
    def create(name: str, scope: str) -> None:
        counts = store_counts(clean_runtime)
        answer = admin.post("/v1/keys", content=_dumps({"name": name, "scope": scope}), headers={"Content-Type": "application/json"})
        if answer.status_code == 201:
            assert control_character(name) is None and scope in {"door", "analysis", "door+analysis", "admin"}, (name, scope)
            return
        assert _is_error(answer, 422) in {"invalid_text", "invalid_request"}
        assert store_counts(clean_runtime) == counts

    create()


def test_filters(admin: TestClient, clean_runtime: Runtime) -> None:
    seed_person(clean_runtime, "Ada 100% _real_")

    @PROPERTY
    @given(text=TEXT, where=st.sampled_from(["persons:name", "events:door_id", "events:kind", "events:decision"]))
    def query(text: str, where: str) -> None:
        resource, field = where.split(":")
        answer = admin.get(f"/v1/{resource}", params={field: text})
        if answer.status_code == 200:
            if resource == "persons":
                names = [p["name"] for p in answer.json()["data"]]
                assert all(text.lower() in n.lower() for n in names), (text, names)  # a substring, no wildcards
            return
        assert _is_error(answer, 422) in {"invalid_text", "invalid_request"}

    query()


def test_door_id_on_identify(admin: TestClient, clean_runtime: Runtime, door_key: str) -> None:
    frame = grey_jpeg()

    @settings(PROPERTY, max_examples=25)
    @given(door_id=TEXT)
    def identify(door_id: str) -> None:
        counts = store_counts(clean_runtime)
        try:
            door_id.encode("utf-8")
        except UnicodeEncodeError:
            door_id = door_id.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # a form field is bytes on the wire
        answer = admin.post("/v1/identify", headers={"X-API-Key": door_key}, **multipart([frame], door_id=door_id))
        if answer.status_code == 200:
            assert control_character(door_id) is None and len(door_id) <= 200
            assert answer.json()["door_id"] == (door_id or None)  # an empty form field is an absent one
        else:
            assert _is_error(answer, 422) in {"invalid_text", "invalid_request"}
        assert store_counts(clean_runtime) == counts

    identify()
