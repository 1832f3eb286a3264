"""API keys: create, list, revoke (app/api/routes/keys.py)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from app.services.runtime import Runtime
from app.store.models import ApiKey
from tests.service.conftest import multipart
from tests.service.inputs import grey_jpeg

# -- keys -----------------------------------------------------------------------------------------


def test_keys_create_list_revoke(admin: TestClient, clean_runtime: Runtime) -> None:
    made = admin.post("/v1/keys", json={"name": "front-door", "scope": "door", "expires_in_days": 30})
    assert made.status_code == 201, made.text
    created = made.json()
    key = created["key"]
    assert re.fullmatch(rf"fg_{created['prefix']}_[A-Za-z0-9_-]{{40,}}", key)
    expires = datetime.fromisoformat(created["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)

    # Stored hashed: the key itself is in no column of its row.
    with clean_runtime.sessions() as session:
        row = session.get(ApiKey, created["id"])
        assert row is not None
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        stored = [str(getattr(row, column.key)) for column in ApiKey.__table__.columns]
        assert not any(key in value or key.split("_", 2)[2] in value for value in stored)

    listed = admin.get("/v1/keys").json()
    assert listed["count"] == 2  # the fixture's admin key and this one
    mine = next(k for k in listed["data"] if k["id"] == created["id"])
    assert "key" not in mine and mine["scope"] == "door" and mine["revoked_at"] is None
    assert key not in admin.get("/v1/keys").text

    # The new key works, and its use is recorded.
    used = admin.post("/v1/identify", headers={"X-API-Key": key}, **multipart([grey_jpeg(64)]))
    assert used.status_code == 200, used.text
    assert next(k for k in admin.get("/v1/keys").json()["data"] if k["id"] == created["id"])["last_used_at"] is not None

    revoked = admin.delete(f"/v1/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    again = admin.delete(f"/v1/keys/{created['id']}")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert admin.post("/v1/identify", headers={"X-API-Key": key}, **multipart([grey_jpeg(64)])).json()["code"] == "revoked_api_key"
    missing = admin.delete("/v1/keys/999999")
    assert missing.status_code == 404 and missing.json()["code"] == "key_not_found"

    kinds = [e["kind"] for e in admin.get("/v1/events").json()["data"]]
    assert kinds.count("key_created") == 1 and kinds.count("key_revoked") == 1
    for bad in (
        {"name": "x", "scope": "root"},
        {"name": "", "scope": "door"},
        {"name": "x", "scope": "door", "expires_in_days": 0},
        {"scope": "door"},
    ):
        refused = admin.post("/v1/keys", json=bad)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_request", bad
