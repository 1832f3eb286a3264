"""The console is served by the process itself and loads nothing from the network; its
behaviour in a real browser, camera included, is in test_browser.py."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_console_pages_and_assets_are_local(client: TestClient) -> None:
    page = client.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", page.text)
    assert sorted(assets) == ["console.css", "console.js"]
    for asset in assets:
        body = client.get(f"/console/{asset}")
        assert body.status_code == 200 and body.text
        assert not re.search(r"https?://", body.text), f"{asset} refers to the network"
    assert client.get("/console").status_code in (200, 307)


def test_every_element_the_script_uses_exists_and_every_input_has_a_label(client: TestClient) -> None:
    html = client.get("/console/").text
    script = client.get("/console/console.js").text
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    used = set(re.findall(r'\$\("([a-z-]+)"\)', script)) | set(re.findall(r"\$\(`\$\{which\}-([a-z]+)`\)", script))
    missing = {u for u in used if u not in ids and f"enrol-{u}" not in ids}
    assert not missing, f"the script uses ids the page lacks: {sorted(missing)}"
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    for control in re.findall(r'<(?:input|select|textarea)\s+id="([^"]+)"', html):
        wrapped = re.search(rf'<label><input id="{control}"', html)
        assert control in labelled or wrapped, f"{control} has no label"


def test_the_key_is_never_put_in_a_url(client: TestClient) -> None:
    script = client.get("/console/console.js").text
    assert "sessionStorage" in script and "localStorage" not in script
    assert not re.search(r"[?&](key|api_key)=", script)
    assert '"X-API-Key"' in script
