"""The docs page and the console in a real browser: headless Chromium from Debian, driven by
Playwright for Python, against the real server on a loopback port, with no network.

The camera is Chromium's fake capture device fed with a video made here from real photos of
held-out people (pasted into a doorway, as a door camera sees them). A screenshot of every page
is saved under the test's temporary directory (never committed).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from app.services.runtime import Runtime

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium when apt can reach Debian's mirror)")
    with sync_playwright() as p:
        yield p


def door_video(photos: list[bytes], path: Path, seconds_per_photo: float = 0.6, fps: int = 10) -> Path:
    """A Y4M video (what Chromium's fake camera reads) of the photos, each pasted into a grey
    640x480 doorway at ~300 px and held for a moment."""
    w, h = 640, 480
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for photo in photos:
            face = Image.open(io.BytesIO(photo)).convert("RGB")
            face = face.resize((300, round(300 * face.height / face.width)))
            frame = Image.new("RGB", (w, h), (128, 132, 128))
            frame.paste(face, ((w - face.width) // 2, max(0, (h - face.height) // 2)))
            y, cb, cr = (np.asarray(c) for c in frame.convert("YCbCr").split())
            planes = y.tobytes() + np.asarray(Image.fromarray(cb).resize((w // 2, h // 2))).tobytes()
            planes += np.asarray(Image.fromarray(cr).resize((w // 2, h // 2))).tobytes()
            for _ in range(round(seconds_per_photo * fps)):
                out.write(b"FRAME\n" + planes)
    return path


@contextmanager
def browser_page(playwright: Any, video: Path | None = None) -> Iterator[Any]:
    args = [*ARGS, f"--use-file-for-fake-video-capture={video}"] if video else ARGS
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(60_000)
        # Nothing may come from the network: every request goes to the loopback server.
        page.route("**/*", lambda route: route.continue_() if "127.0.0.1" in route.request.url else route.abort())
        yield page
    finally:
        browser.close()


def sign_in(page: Any, base: str, key: str) -> None:
    page.goto(f"{base}/console/")
    page.get_by_label("Admin API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="People").wait_for()
    assert key not in page.url


def identify(page: Any) -> str:
    page.get_by_role("button", name="Door simulator").click()
    page.get_by_role("button", name="Identify").click()
    page.wait_for_function("document.getElementById('door-result').textContent.length > 0")
    return str(page.locator("#door-result").inner_text())


@pytest.fixture
def sqlite_only(clean_runtime: Runtime) -> None:
    if not clean_runtime.settings.is_sqlite:
        pytest.skip("the browser tests need one store: they run on SQLite")


def test_docs_page_renders_and_authorize_works_offline(
    playwright: Any, sqlite_only: None, live_server: str, admin_key: str, tmp_path: Path
) -> None:
    with browser_page(playwright) as page:
        page.goto(f"{live_server}/docs")
        page.locator(".opblock").first.wait_for()
        assert page.locator(".opblock").count() >= 20
        page.get_by_role("button", name="Authorize").first.click()
        page.locator(".auth-container input").first.fill(admin_key)
        page.locator(".auth-btn-wrapper button.authorize").click()
        page.locator(".auth-btn-wrapper button", has_text="Logout").wait_for()
        page.locator(".auth-btn-wrapper button", has_text="Close").click()
        # An admin-only call from the page itself, with the key it was given.
        page.locator("#operations-threshold-get_threshold_v1_threshold_get .opblock-summary").click()
        page.get_by_role("button", name="Try it out").click()
        page.locator("button.execute").click()
        status = page.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for()
        assert status.inner_text().strip().startswith("200"), status.inner_text()
        page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)


def test_console_enrol_identify_delete_and_threshold(
    playwright: Any, sqlite_only: None, live_server: str, admin_key: str, faces: dict[str, list[bytes]], tmp_path: Path
) -> None:
    (_, photos_a), (_, photos_b) = list(sorted(faces.items()))[:2]
    video_a = door_video(photos_a[:5], tmp_path / "a.y4m")
    video_b = door_video(photos_b[:5], tmp_path / "b.y4m")
    shots = tmp_path / "screens"
    shots.mkdir()

    with browser_page(playwright, video_a) as page:
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
        sign_in(page, live_server, admin_key)
        page.screenshot(path=str(shots / "people-empty.png"))

        page.get_by_role("button", name="Enrol").click()
        page.get_by_role("button", name="Start camera").first.click()
        page.get_by_role("button", name="Capture burst").click()
        page.wait_for_function("document.querySelectorAll('#enrol-frames li').length === 5")
        assert "usable" in page.locator("#status").inner_text()
        page.screenshot(path=str(shots / "enrol.png"), full_page=True)
        page.locator("#page-enrol").get_by_label("Name", exact=True).fill("Browser Person")
        page.locator("#enrol-form").get_by_role("button", name="Enrol").click()
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Enrolled')")

        granted = identify(page)
        page.screenshot(path=str(shots / "door-granted.png"), full_page=True)
        assert granted.startswith("GRANTED") and "Browser Person" in granted, granted

    with browser_page(playwright, video_b) as page:
        sign_in(page, live_server, admin_key)
        denied = identify(page)
        assert denied.startswith("DENIED") and "person: none" in denied, denied
        page.screenshot(path=str(shots / "door-denied.png"), full_page=True)

    with browser_page(playwright, video_a) as page:
        page.on("dialog", lambda d: d.accept())
        sign_in(page, live_server, admin_key)
        page.get_by_role("cell", name="Browser Person").click()
        page.get_by_role("button", name="Delete").click()
        page.wait_for_function("document.getElementById('status').textContent === 'Deleted.'")
        page.screenshot(path=str(shots / "people.png"), full_page=True)
        after = identify(page)
        assert after.startswith("DENIED"), after  # the same face, now deleted

        page.get_by_role("button", name="Threshold").click()
        page.wait_for_function("document.getElementById('threshold-plot').innerHTML.includes('threshold 0.')")
        assert page.locator("#threshold-table tr").count() == 4  # the model's FAR table
        page.get_by_label("Security level (target FAR)").select_option("0.0001")
        page.get_by_role("button", name="Set level").click()
        page.wait_for_function("document.getElementById('status').textContent === 'Security level set.'")
        page.screenshot(path=str(shots / "threshold.png"), full_page=True)
        for section in ("Events", "Keys"):
            page.get_by_role("button", name=section).click()
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / f"{section.lower()}.png"), full_page=True)

    with httpx.Client(base_url=live_server, headers={"X-API-Key": admin_key}) as api:
        threshold = api.get("/v1/threshold").json()
        assert (threshold["source"], threshold["target_far"]) == ("target_far", 0.0001)
        events = api.get("/v1/events", params={"kind": "threshold"}).json()["data"]
        assert events and events[0]["reason"].startswith("target FAR 0.0001")
        assert api.get("/v1/persons").json()["count"] == 0
    assert len(list(shots.glob("*.png"))) >= 7
