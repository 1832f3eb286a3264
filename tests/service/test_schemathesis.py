"""Property-based API testing from the app's own OpenAPI document (schemathesis 4).

For every operation, requests are generated from the live ``/openapi.json`` (valid ones and
invalid ones) and sent with an admin key; every response must be no 5xx, carry a status code
the document declares, and match the declared media type and schema. Bounded and
derandomised, so CI runs the same cases every time.

Operations are driven one by one with ``as_strategy`` rather than ``schemathesis.pytest``:
its ``from_fixture`` runner reads ``request.node._nodeid``, which pytest 9 no longer has.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from app.core.config import Settings
from app.main import create_app
from app.services.runtime import Runtime
from app.store import crud

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 10


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) for every operation; invalid data only where there is an input."""
    spec = create_app(Settings(LOG_FORMAT="text")).openapi()
    cases = []
    for path, ops in sorted(spec["paths"].items()):
        for method, op in sorted(ops.items()):
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if op.get("parameters") or op.get("requestBody"):
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


CASES = _cases()


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {'valid' if g is GenerationMode.POSITIVE else 'invalid'}" for m, p, g in CASES]
)
def test_operation_conforms_to_its_schema(clean_runtime: Runtime, admin_key: str, method: str, path: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(clean_runtime.settings, runtime=clean_runtime))
    operation = schema[path][method]
    with clean_runtime.sessions() as session:
        own_key = crud.find_api_key(session, key=admin_key)
        assert own_key is not None
        own_key_id = own_key.id

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        # Revoking the very key the run uses would turn every later call into a 401.
        if case.path_parameters and case.path_parameters.get("key_id") == own_key_id:
            case.path_parameters["key_id"] = own_key_id + 1_000
        case.call_and_validate(headers={"X-API-Key": admin_key}, checks=CHECKS)

    check()
