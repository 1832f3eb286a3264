"""The README's configuration table is the settings class, field for field."""

from __future__ import annotations

import re

from app.core.config import REPO_ROOT, Settings, settings_table


def test_the_readme_table_is_generated_from_settings() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    found = re.search(r"<!-- settings-table:[^\n]*-->\n(.*?)\n<!-- /settings-table -->", text, re.S)
    assert found, "the README lost its settings-table markers"
    assert found.group(1) == settings_table(), "README drifted from Settings: paste `python -m app.core.config` between the markers"


def test_every_setting_is_described() -> None:
    table = settings_table()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"| `{name}` |" in table
