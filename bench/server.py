"""The real service in a subprocess on a loopback port: environment, database, start-up, keys, enrolment."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.camera import burst, multipart
from bench.paths import QUIET_ENV, REPO_ROOT
from bench.seeding import count_persons


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_loopback(url: str) -> None:
    """Refuse to aim load at anything but this machine."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"refusing to load {url!r}: benchmarks only target loopback (127.0.0.0/8, ::1, localhost)")


def process_memory(pid: int) -> dict[str, float]:
    """Resident and peak resident memory in MiB (psutil when installed, else /proc)."""
    try:
        import psutil

        info = psutil.Process(pid).memory_info()
        rss = info.rss / 2**20
    except ImportError:
        rss = None
    values: dict[str, float] = {}
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return {
        "rss_mib": round(rss if rss is not None else values.get("VmRSS", float("nan")), 1),
        "peak_rss_mib": round(values.get("VmHWM", float("nan")), 1),
    }


@dataclass
class Service:
    base_url: str
    database_url: str
    pid: int
    admin_key: str = ""
    door_key: str = ""
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None

    def memory(self) -> dict[str, float]:
        return process_memory(self.pid)

    def loaded_tensorflow(self) -> bool:
        """Whether the server mapped TensorFlow's shared library (MediaPipe imports it if installed)."""
        maps = Path(f"/proc/{self.pid}/maps")
        return maps.exists() and "libtensorflow" in maps.read_text()


def service_env(database_url: str, model_store: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(QUIET_ENV)
    env.update(
        {
            "DATABASE_URL": database_url,
            "MODEL_STORE": str(model_store),
            # The per-key limits (10/s for doors) would turn a load test into a rate-limit test.
            "RATE_LIMIT_DOOR": "100000/second",
            "RATE_LIMIT_ADMIN": "100000/second",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
        }
    )
    env.update(extra or {})
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run `python -m app.cli ...` with the service's environment; stdout."""
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"`facegate {' '.join(args)}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def default_model_store() -> Path:
    return Path(os.environ.get("MODEL_STORE", REPO_ROOT / "model_store"))


@contextmanager
def database(database_url: str | None) -> Iterator[str]:
    """A fresh SQLite file in a temporary directory, or the given URL (an empty scratch database)."""
    if database_url:
        yield database_url
        return
    tmp = Path(tempfile.mkdtemp(prefix="facegate-bench-"))
    try:
        yield f"sqlite:///{tmp / 'facegate.db'}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_database(env: dict[str, str], reuse: bool) -> None:
    """`facegate migrate`, then refuse a database that already holds people (unless reuse)."""
    cli(env, "migrate")
    existing = count_persons(env["DATABASE_URL"])
    if existing and not reuse:
        raise SystemExit(
            f"the database already holds {existing} persons: give an empty scratch database "
            "(the benchmark enrols and inserts synthetic people) or pass --reuse-db"
        )


@contextmanager
def running_service(env: dict[str, str], start_timeout: float = 180, hide_tensorflow: bool = False, workers: int = 1) -> Iterator[Service]:
    """`python -m app.cli serve` on a free loopback port, until /readyz answers 200.

    Migrations are applied beforehand (prepare_database), so the server starts with
    --no-migrate and its start-up time is the model load and the index sync alone.
    ``hide_tensorflow`` starts it through bench.serve_without_tensorflow (the image's imports).
    ``workers`` > 1 runs that many server processes on the port (uvicorn's supervisor; its pid
    is the one measured for memory, so memory is read only with one worker).
    """
    import httpx

    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="facegate-serve-", suffix=".log", delete=False)  # noqa: SIM115
    entry = "bench.serve_without_tensorflow" if hide_tensorflow else "app.cli"
    proc = subprocess.Popen(
        [sys.executable, "-m", entry, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate", "--workers", str(workers)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    failed = True
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"facegate serve exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"facegate serve not ready after {start_timeout:.0f}s; log: {log.name}")
            time.sleep(0.25)
        yield Service(base_url=base, database_url=env["DATABASE_URL"], pid=proc.pid, env=env, log_path=Path(log.name))
        failed = False
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        if failed:
            print(f"server log kept: {log.name}", file=sys.stderr)
        else:
            Path(log.name).unlink(missing_ok=True)


def create_keys(service: Service) -> None:
    """An admin key from the CLI (as an operator would), a door key through the API."""
    import httpx

    service.admin_key = json.loads(cli(service.env, "keys", "create", "--scope", "admin", "--name", "bench-admin"))["key"]
    r = httpx.post(
        f"{service.base_url}/v1/keys", json={"name": "bench-door", "scope": "door"}, headers={"X-API-Key": service.admin_key}, timeout=30
    )
    r.raise_for_status()
    service.door_key = r.json()["key"]


def enrol(service: Service, name: str, frames: Sequence[bytes]) -> dict[str, Any]:
    import httpx

    r = httpx.post(f"{service.base_url}/v1/persons", headers={"X-API-Key": service.admin_key}, timeout=120, **multipart(frames, name=name))
    if r.status_code not in (201, 409):
        raise SystemExit(f"enrolment failed: {r.status_code} {r.text[:500]}")
    return {"status": r.status_code, **r.json()}


def enrol_real_person(service: Service, people: dict[str, list[Path]], frames: int = 5) -> tuple[str, list[Path]]:
    """Enrol the first identity whose burst yields enough usable frames; (identity, unused photos)."""
    for n, (identity, photos) in enumerate(people.items()):
        result = enrol(service, f"celeba-{identity}", burst(photos[:frames], frames, seed=n))
        if result["status"] == 201:
            return identity, photos[frames:]
        # not_enough_usable_frames for this identity's photos, or matched someone: try the next.
    raise SystemExit("no identity in ../shared could be enrolled (every burst refused)")
