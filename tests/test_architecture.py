"""The layers of docs/architecture.md hold: import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--config", str(config)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_are_kept() -> None:
    result = _lint(REPO_ROOT, REPO_ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_a_broken_layer_is_caught(tmp_path: Path) -> None:
    """The same contracts on a copy of the layout where the store imports the vision layer."""
    config = (REPO_ROOT / "pyproject.toml").read_text()
    contracts = config[config.index("[tool.importlinter]") :]
    (tmp_path / "pyproject.toml").write_text(contracts)
    for package in ("main", "cli", "api", "services", "vision", "store", "matching", "core"):
        target = tmp_path / "app" / package
        target.mkdir(parents=True)
        (target / "__init__.py").write_text("")
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "store" / "crud.py").write_text("from app.vision import align  # noqa\n")
    (tmp_path / "app" / "vision" / "align.py").write_text("")
    result = subprocess.run(
        [str(LINT), "--config", str(tmp_path / "pyproject.toml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
    )
    assert result.returncode != 0 and "app.store.crud -> app.vision.align" in result.stdout, result.stdout[-3000:]
