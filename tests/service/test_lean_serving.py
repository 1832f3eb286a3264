"""The serving process never loads TensorFlow, even with it installed in the same venv."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from app.core.config import REPO_ROOT

PROBE = """
import json, sys
from fastapi.testclient import TestClient
from app.core.config import Settings
from app.main import create_app
settings = Settings(DATABASE_URL=sys.argv[1], LOG_FORMAT="text", LOG_LEVEL="WARNING")
from app.cli import migrate
migrate(sys.argv[1], wait_s=10, quiet=True)
with TestClient(create_app(settings)) as client:  # the lifespan loads the model, Face Mesh and the index
    ready = client.get("/readyz").status_code
    identify = client.post("/v1/identify", files=[("frames", ("f.jpg", open(sys.argv[2], "rb").read(), "image/jpeg"))]).status_code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({"ready": ready, "identify": identify, "loaded": loaded[:5]}))
"""


def test_no_tensorflow_after_start_up_and_a_request(tmp_path: Path) -> None:
    from tests.service.inputs import grey_jpeg

    # The README's venv has TensorFlow (the train extra): the point is that the server does not load it.
    assert importlib.util.find_spec("tensorflow") is not None, "TensorFlow is not installed: this test would prove nothing"

    frame = tmp_path / "frame.jpg"
    frame.write_bytes(grey_jpeg())
    done = subprocess.run(
        [sys.executable, "-c", PROBE, f"sqlite:///{tmp_path / 'lean.db'}", str(frame)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ready"] == 200 and result["identify"] in (200, 401), result
    assert result["loaded"] == [], f"the server loaded {result['loaded']}"
