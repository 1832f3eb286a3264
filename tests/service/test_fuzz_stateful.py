"""Stateful API testing over the OpenAPI links: enrol -> get -> patch -> frames -> delete.

Schemathesis builds a Hypothesis state machine from the links the persons routes declare
(``PERSON_LINKS``): each step calls one operation with generated data, or with the id a
previous answer handed over. Enrolment needs a real face, which no generator can make, so the
machine swaps in a burst of a held-out person (a different one each time) for every enrol
call; everything else (names, metadata, the PATCH body, the frames added) is generated.
Every answer must be no 5xx and match the documented status, media type and schema.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from app.main import create_app
from app.services.runtime import Runtime

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_enrol_get_patch_delete_over_links(clean_runtime: Runtime, admin_key: str, faces: dict[str, list[bytes]]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(clean_runtime.settings, runtime=clean_runtime))
    schema = schema.include(path_regex=r"^/v1/persons")
    people = itertools.cycle(sorted(faces.items()))
    seen: Counter[tuple[str, str, int]] = Counter()

    class PersonsMachine(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: schemathesis.Case) -> None:
            if case.method == "POST" and case.path == "/v1/persons" and isinstance(case.body, dict):
                # A real face (the next held-out person; one already enrolled answers 409
                # already_enrolled, a documented answer); the generated name and metadata stay.
                _, photos = next(people)
                case.body["frames"] = photos[:3]

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": {"X-API-Key": admin_key}}

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            seen[(case.method, case.path, response.status_code)] += 1

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, headers={"X-API-Key": admin_key})

    PersonsMachine.run(
        settings=settings(
            max_examples=12,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    enrolled = seen[("POST", "/v1/persons", 201)]
    followed = {(m, p) for (m, p, status) in seen if p == "/v1/persons/{person_id}" and status == 200}
    assert enrolled >= 1, f"no enrolment succeeded, so no link was followed: {dict(seen)}"
    assert followed & {("GET", "/v1/persons/{person_id}"), ("PATCH", "/v1/persons/{person_id}"), ("DELETE", "/v1/persons/{person_id}")}, (
        f"no link from an enrolled person was followed: {dict(seen)}"
    )
    assert not [key for key in seen if key[2] >= 500]
