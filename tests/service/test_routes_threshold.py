"""GET/PUT/DELETE /v1/threshold, calibrate and distributions (app/api/routes/threshold.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.services.runtime import Runtime
from tests.service.inputs import seed_person, unit

# -- threshold ------------------------------------------------------------------------------------


def _model_part(rt: Runtime) -> dict[str, Any]:
    table = rt.thresholds
    assert table is not None, "the shipped model must carry thresholds by frames fused"
    return {
        "default": table.at(5),
        "model_id": rt.model_id,
        "template_frames": 5,
        "default_far": 0.001,
        "default_by_frames": {str(n): table.at(n) for n in table.by_frames},
        "far_table": [{"far": far, "by_frames": {str(n): table.at(n, far) for n in table.by_frames}} for far in table.fars()],
    }


def test_threshold_get_put_and_reset(admin: TestClient, clean_runtime: Runtime) -> None:
    rt = clean_runtime
    model = _model_part(rt)
    default, by_default = model["default"], model["default_by_frames"]
    assert [row["far"] for row in model["far_table"]] == [0.01, 0.001, 0.0001, 1e-05]
    assert admin.get("/v1/threshold").json() == {
        "threshold": default,
        "source": "default",
        "target_far": 0.001,
        "by_frames": by_default,
        **model,
    }
    assert default == by_default["5"] and by_default["1"] > by_default["5"] > by_default["16"]

    # A raw distance: the same for every burst size.
    put = admin.put("/v1/threshold", json={"threshold": 0.25})
    assert put.status_code == 200, put.text
    assert put.json() == {"threshold": 0.25, "source": "distance", "target_far": None, "by_frames": {n: 0.25 for n in by_default}, **model}
    event = admin.get("/v1/events", params={"kind": "threshold"}).json()["data"][0]
    assert event["threshold"] == 0.25
    assert event["reason"] == "distance 0.250000 (distance); was target FAR 0.001 (default)"

    # A security level: the table's row for each burst size at that FAR.
    stricter = admin.put("/v1/threshold", json={"target_far": 0.0001}).json()
    assert stricter["source"] == "target_far" and stricter["target_far"] == 0.0001
    assert stricter["by_frames"] == model["far_table"][2]["by_frames"] and stricter["threshold"] < default
    for bad in ({"target_far": 0.003}, {"threshold": 0.2, "target_far": 0.001}, {}, {"threshold": 1.0}):
        refused = admin.put("/v1/threshold", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["code"] == ("unsupported_target_far" if bad == {"target_far": 0.003} else "invalid_request"), bad
    assert admin.get("/v1/threshold").json()["target_far"] == 0.0001  # nothing refused was stored

    # Reset: back to the model's thresholds, audited once.
    reset = admin.delete("/v1/threshold")
    assert reset.status_code == 200, reset.text
    assert reset.json()["source"] == "default" and reset.json()["threshold"] == default
    assert admin.delete("/v1/threshold").json()["source"] == "default"  # idempotent
    resets = [e for e in admin.get("/v1/events", params={"kind": "threshold"}).json()["data"] if e["reason"].startswith("reset")]
    reason = "reset to target FAR 0.001 (default); was target FAR 0.0001 (target_far)"
    assert [(e["threshold"], e["reason"]) for e in resets] == [(default, reason)]


def test_distributions(admin: TestClient, clean_runtime: Runtime) -> None:
    rt = clean_runtime
    seed_person(rt, "A", vectors=unit(rt, 1.0))
    seed_person(rt, "B", vectors=unit(rt, 0.5, math.sqrt(3) / 2))  # distance 0.5 from A
    seed_person(rt, "C", vectors=unit(rt, 0.0, 0.0, 1.0))  # distance 1 from both
    body = admin.get("/v1/threshold/distributions").json()
    bins = body["bins"]
    assert len(body["enrolled_nearest"]) == len(bins) - 1 and body["templates_used"] == 3
    counts = dict(zip(bins, body["enrolled_nearest"], strict=False))
    assert sum(body["enrolled_nearest"]) == 3
    nearest_05 = max(b for b in bins[:-1] if b <= 0.5 + 1e-6)
    assert counts[nearest_05] == 2  # A and B are each other's nearest
    assert body["frames"] == 5 and body["threshold"] == rt.thresholds.at(5)
    for histogram in ("genuine", "impostor"):
        assert body[histogram] is None or len(body[histogram]) == len(bins) - 1


def test_calibrate(admin: TestClient, clean_runtime: Runtime) -> None:
    rt = clean_runtime
    default = rt.thresholds.at(rt.thresholds.template_frames)
    # Too few templates: no negative pair to learn from, nothing applied.
    seed_person(rt, "Only", vectors=unit(rt, 1.0))
    lonely = admin.post("/v1/threshold/calibrate", json={"method": "min_negative", "apply": True}).json()
    assert (lonely["templates_used"], lonely["min_negative_distance"], lonely["recommended"], lonely["applied"]) == (1, None, None, False)

    # Two people 60 degrees apart (distance 1 - cos 60 = 0.5) and a third orthogonal to both.
    seed_person(rt, "Near", vectors=unit(rt, 0.5, math.sqrt(3) / 2))
    seed_person(rt, "Far", vectors=unit(rt, 0.0, 0.0, 1.0))
    dry = admin.post("/v1/threshold/calibrate", json={"method": "min_negative"})
    assert dry.status_code == 200, dry.text
    body = dry.json()
    assert body["templates_used"] == 3
    assert body["min_negative_distance"] == pytest.approx(0.5, abs=1e-5)
    assert body["recommended"] == pytest.approx(0.5, abs=1e-5)
    assert (body["applied"], body["method"], body["threshold"]) == (False, "min_negative", default)
    assert admin.get("/v1/threshold").json()["source"] == "default"  # a dry run stores nothing

    applied = admin.post("/v1/threshold/calibrate", json={"method": "min_negative", "apply": True}).json()
    assert applied["applied"] is True and applied["threshold"] == pytest.approx(0.5, abs=1e-5)
    now = admin.get("/v1/threshold").json()
    assert (now["threshold"], now["source"], now["default"], now["model_id"]) == (
        pytest.approx(0.5, abs=1e-5),
        "distance",
        default,
        rt.model_id,
    )

    # target_far answers with the threshold the service applies to 5-frame bursts (a template's
    # worth) at that FAR, never the single-photo threshold: strangers' fused bursts lie closer.
    far = admin.post("/v1/threshold/calibrate", json={"method": "target_far", "target_far": 0.001}).json()
    assert far["recommended"] == far["manifest_far_threshold"] == default == rt.thresholds.at(5)
    single_photo = rt.package.manifest.extra("thresholds_by_far")["0.001"]
    assert far["recommended"] != single_photo
    assert far["applied"] is False
    # Applying target_far stores the FAR: every burst size gets its own row again.
    applied_far = admin.post("/v1/threshold/calibrate", json={"method": "target_far", "target_far": 0.001, "apply": True}).json()
    assert applied_far["applied"] is True and applied_far["threshold"] == default
    assert admin.get("/v1/threshold").json()["source"] == "target_far"
    stricter = admin.post("/v1/threshold/calibrate", json={"method": "target_far", "target_far": 0.0001}).json()
    assert stricter["recommended"] is not None and stricter["recommended"] < far["recommended"]

    for bad in ({"method": "guess"}, {"sample": 1}, {"target_far": 0}, {"target_far": 1.5}, {"apply": "maybe"}, {"extra": 1}):
        refused = admin.post("/v1/threshold/calibrate", json=bad)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_request", bad
