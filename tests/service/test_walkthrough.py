"""The README's curl walkthrough (docs/walkthrough.sh) runs top to bottom on a fresh database."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.core.config import REPO_ROOT
from app.services.runtime import Runtime

SCRIPT = REPO_ROOT / "docs" / "walkthrough.sh"


def test_the_readme_shows_the_script() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough: docs/walkthrough.sh -->\n```bash\n(.*?)```", readme, re.S)
    assert block, "the README lost its walkthrough block"
    assert block.group(1) == SCRIPT.read_text(), "README and docs/walkthrough.sh differ: paste the script into the README"


def test_the_walkthrough_runs_as_pasted(
    live_server: str, clean_runtime: Runtime, admin_key: str, faces: dict[str, list[bytes]], tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    photos = tmp_path / "ada"
    photos.mkdir()
    name, images = next((n, imgs) for n, imgs in sorted(faces.items()) if len(imgs) >= 7)
    for i, data in enumerate(images[:7]):
        (photos / f"{i}.jpg").write_bytes(data)
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "API": live_server, "ADMIN": admin_key, "PHOTOS": str(photos)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"walkthrough stopped (person {name}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert '"decision":' in done.stdout and '"deleted":' in done.stdout and "facegate_requests_total" not in done.stdout
