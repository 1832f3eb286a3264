"""Liveness, readiness, request ids and metrics (app/api/routes/health.py)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.services.recognition import sync_index
from app.services.runtime import Runtime
from tests.service.conftest import multipart
from tests.service.inputs import grey_jpeg, random_bytes, seed_person

# -- health, request ids, metrics ----------------------------------------------------------------


def test_healthz_and_readyz(client: TestClient, clean_runtime: Runtime) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "checks": {
            "model": clean_runtime.model_id,
            "model_verified": True,
            "templates": len(clean_runtime.index),
            "attributes": {
                **clean_runtime.attributes.model_ids(),
                **{task: f"unavailable: {why}" for task, why in clean_runtime.attributes.unavailable.items()},
            },
            "database": "ok",
        },
    }
    # Gender and age are off unless configured; an attribute never makes the service unready.
    assert ready.json()["checks"]["attributes"]["gender_age"] == "unavailable: switched off by configuration"


def test_request_id(admin: TestClient) -> None:
    echoed = admin.get("/healthz", headers={"X-Request-ID": "door-7f3a"})
    assert echoed.headers["X-Request-ID"] == "door-7f3a"
    assert re.fullmatch(r"[0-9a-f]{32}", admin.get("/healthz").headers["X-Request-ID"])
    # Oversized ids are replaced, not logged verbatim.
    assert re.fullmatch(r"[0-9a-f]{32}", admin.get("/healthz", headers={"X-Request-ID": "x" * 65}).headers["X-Request-ID"])
    # Errors carry it too, and the audit log records it.
    refused = admin.post("/v1/identify", headers={"X-Request-ID": "req-bad-1"}, **multipart([random_bytes()]))
    assert refused.headers["X-Request-ID"] == "req-bad-1"
    assert admin.post("/v1/identify", headers={"X-Request-ID": "req-ok-1"}, **multipart([grey_jpeg()])).status_code == 200
    assert {e["request_id"] for e in admin.get("/v1/events").json()["data"]} == {"req-bad-1", "req-ok-1"}


def test_metrics(admin: TestClient, clean_runtime: Runtime) -> None:
    seed_person(clean_runtime, "One", seed=1)
    seed_person(clean_runtime, "Two", seed=2)
    with clean_runtime.sessions() as session:
        sync_index(clean_runtime, session)
    assert admin.post("/v1/identify", **multipart([grey_jpeg()])).status_code == 200
    response = admin.get("/metrics", headers={"X-API-Key": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(r'^facegate_requests_total\{endpoint="/v1/identify",method="POST",status="200"\} \d', text, re.M)
    for stage in ("decode", "align", "embed"):
        assert re.search(rf'^facegate_stage_seconds_bucket\{{le="[^"]+",stage="{stage}"\}} \d', text, re.M), stage
    assert re.search(r"^facegate_templates_enrolled 2\.0$", text, re.M)
    assert re.search(rf'^facegate_model_info\{{.*model_id="{re.escape(clean_runtime.model_id)}".*\}} 1\.0$', text, re.M)
    assert "facegate_request_seconds_bucket" in text and "facegate_decisions_total" in text
