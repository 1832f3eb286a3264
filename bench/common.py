"""What the benchmarks share: a real `facegate serve` on a loopback port, real-face frames,
seeded templates, latency statistics, process memory and result tables.

The service always runs as its own process (`python -m app.cli serve`), configured only
through environment variables, exactly as it is deployed; the benchmark talks HTTP to it.
"""

from __future__ import annotations

import io
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

import numpy as np

from app.core.config import SHARED_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = SHARED_DIR
FACES = SHARED / "data" / "faces" / "celeba_wild"
FRAME_SIZE = (640, 480)
# Quiet the native libraries before anything imports them (MediaPipe logs through glog).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2"}


# -- frames ----------------------------------------------------------------------------------


def face_photos(min_photos: int = 8) -> dict[str, list[Path]]:
    """CelebA in-the-wild identities with at least ``min_photos`` photos, or a clear exit."""
    if not FACES.is_dir():
        raise SystemExit(
            f"real face photos not found at {FACES}: the benchmarks need ../shared/data/faces/celeba_wild "
            "(a checkout with ../shared next to the repository)"
        )
    people = {d.name: sorted(d.glob("*.jpg")) for d in sorted(FACES.iterdir()) if d.is_dir()}
    people = {k: v for k, v in people.items() if len(v) >= min_photos}
    if not people:
        raise SystemExit(f"no identity with {min_photos} photos in {FACES}")
    return people


def _background(rng: np.random.Generator) -> np.ndarray:
    """A plausible doorway scene: a lit gradient wall, a door frame, sensor noise."""
    w, h = FRAME_SIZE
    base = rng.uniform(60, 190, size=3)
    ramp = np.linspace(-35, 35, w)[None, :, None] + np.linspace(-20, 20, h)[:, None, None]
    scene: np.ndarray = np.broadcast_to(base, (h, w, 3)) + ramp
    x0 = int(rng.integers(20, 120))
    scene[:, x0 : x0 + 18] *= 0.55  # door frame, left
    scene[:, w - x0 - 18 : w - x0] *= 0.55  # door frame, right
    scene += rng.normal(0, 4, size=scene.shape)
    return np.clip(scene, 0, 255).astype(np.uint8)


def frame_from_photo(photo: Path, rng: np.random.Generator, face_side: int = 300) -> bytes:
    """One 640x480 JPEG: the face photo upscaled to ``face_side`` px, pasted at a jittered spot."""
    from PIL import Image

    w, h = FRAME_SIZE
    canvas = Image.fromarray(_background(rng))
    side = int(face_side * rng.uniform(0.9, 1.1))
    face = Image.open(photo).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    x = (w - side) // 2 + int(rng.integers(-60, 61))
    y = (h - side) // 2 + int(rng.integers(-30, 31))
    canvas.paste(face, (max(0, min(w - side, x)), max(0, min(h - side, y))))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=90)
    return out.getvalue()


def burst(photos: Sequence[Path], n: int, seed: int) -> list[bytes]:
    """``n`` frames cycling over ``photos`` (a door camera's burst of one person)."""
    rng = np.random.default_rng(seed)
    return [frame_from_photo(photos[i % len(photos)], rng) for i in range(n)]


def multipart(frames: Sequence[bytes], **fields: str) -> dict[str, Any]:
    return {"files": [("frames", (f"f{i}.jpg", data, "image/jpeg")) for i, data in enumerate(frames)], "data": fields}


# -- seeded templates ------------------------------------------------------------------------


def random_unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Non-negative unit vectors, like the embedder's post-ReLU, L2-normalised output."""
    vectors = np.abs(rng.standard_normal((n, dim), dtype=np.float32))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def model_info(model_store: Path) -> tuple[str, int]:
    """(model id, embedding size) of the package the service will load."""
    from app.vision import manifest as contract
    from app.vision.embedder import find_package

    manifest = contract.read(find_package(model_store, os.environ.get("MODEL_ID")))
    return manifest.model_id, manifest.embedding_size


def seed_templates(database_url: str, model_id: str, count: int, dim: int, seed: int = 0, bulk: bool = False) -> float:
    """Insert ``count`` synthetic persons with one random template each; returns seconds.

    ``bulk=False`` goes through ``crud.create_person`` (the enrol path's own writes, one
    generation per person). ``bulk=True`` writes persons and templates in batches under a
    single generation: the same rows, fast enough for 100k+.
    """
    from sqlalchemy import insert

    from app.core.config import Settings
    from app.store import crud
    from app.store.crud import vector_to_bytes
    from app.store.db import make_engine, make_session_factory
    from app.store.models import Person, Template

    rng = np.random.default_rng(seed)
    engine = make_engine(Settings(DATABASE_URL=database_url))
    sessions = make_session_factory(engine)
    t0 = time.perf_counter()
    batch = 5000
    with sessions() as session:
        if not bulk:
            for start in range(0, count, batch):
                vectors = random_unit_vectors(min(batch, count - start), dim, rng)
                for i, vector in enumerate(vectors):
                    person = crud.create_person(session, name=f"synthetic-{start + i}", metadata={"synthetic": True}, sample_jpeg=None)
                    crud.add_frame_embeddings(session, person_id=person.id, model_id=model_id, vectors=vector[None, :])
                    crud.put_template(session, person_id=person.id, model_id=model_id, vector=vector, frame_count=1)
                session.commit()
        else:
            seq = crud.bump_generation(session)
            for start in range(0, count, batch):
                n = min(batch, count - start)
                vectors = random_unit_vectors(n, dim, rng)
                now = crud.utcnow()
                ids = (
                    session.execute(
                        insert(Person).returning(Person.id, sort_by_parameter_order=True),
                        [
                            {
                                "name": f"synthetic-{start + i}",
                                "metadata_": {"synthetic": True},
                                "search_count": 0,
                                "created_at": now,
                                "updated_at": now,
                            }
                            for i in range(n)
                        ],
                    )
                    .scalars()
                    .all()
                )
                session.execute(
                    insert(Template),
                    [
                        {
                            "person_id": pid,
                            "model_id": model_id,
                            "vector": vector_to_bytes(v),
                            "frame_count": 1,
                            "seq": seq,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for pid, v in zip(ids, vectors, strict=True)
                    ],
                )
            session.commit()
    engine.dispose()
    return time.perf_counter() - t0


def count_persons(database_url: str) -> int:
    from sqlalchemy import func, select

    from app.core.config import Settings
    from app.store.db import make_engine
    from app.store.models import Person

    engine = make_engine(Settings(DATABASE_URL=database_url))
    with engine.connect() as conn:
        n = int(conn.execute(select(func.count()).select_from(Person)).scalar_one())
    engine.dispose()
    return n


# -- the service -----------------------------------------------------------------------------


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
def running_service(env: dict[str, str], start_timeout: float = 180, hide_tensorflow: bool = False) -> Iterator[Service]:
    """`python -m app.cli serve` on a free loopback port, until /readyz answers 200.

    Migrations are applied beforehand (prepare_database), so the server starts with
    --no-migrate and its start-up time is the model load and the index sync alone.
    ``hide_tensorflow`` starts it through bench.serve_without_tensorflow (the image's imports).
    """
    import httpx

    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="facegate-serve-", suffix=".log", delete=False)  # noqa: SIM115
    entry = "bench.serve_without_tensorflow" if hide_tensorflow else "app.cli"
    proc = subprocess.Popen(
        [sys.executable, "-m", entry, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"],
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


# -- load ------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    latencies_s: list[float]
    statuses: dict[str, int]
    decisions: dict[str, int]
    errors: int  # transport errors and non-200 answers
    wall_s: float
    stopped_by: str  # "count" or "time"

    def summary(self) -> dict[str, Any]:
        done = sum(self.statuses.values())
        return {
            "requests": done,
            "wall_s": round(self.wall_s, 2),
            "throughput_rps": round(done / self.wall_s, 2) if self.wall_s else 0.0,
            "ok_rps": round(self.statuses.get("200", 0) / self.wall_s, 2) if self.wall_s else 0.0,
            "latency": latency_summary(self.latencies_s),
            "statuses": self.statuses,
            "decisions": self.decisions,
            "errors": self.errors,
            "stopped_by": self.stopped_by,
        }


def identify_load(
    base_url: str, key: str, bursts: Sequence[Sequence[bytes]], requests: int, concurrency: int, max_seconds: float, door_id: str = "bench"
) -> LoadResult:
    """``requests`` identify calls spread over ``concurrency`` threads (one keep-alive client
    each), stopping early after ``max_seconds``. Latency is measured per call, client side."""
    import threading

    import httpx

    require_loopback(base_url)
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    decisions: dict[str, int] = {}
    errors = 0
    deadline = time.monotonic() + max_seconds
    timed_out = False

    def worker() -> None:
        nonlocal issued, errors, timed_out
        with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=60) as client:
            while True:
                with lock:
                    if issued >= requests:
                        return
                    if time.monotonic() > deadline:
                        timed_out = True
                        return
                    i = issued
                    issued += 1
                frames = bursts[i % len(bursts)]
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/identify", **multipart(frames, door_id=door_id))
                    status, decision = str(r.status_code), (r.json().get("decision") if r.status_code == 200 else None)
                except httpx.HTTPError as exc:
                    status, decision = exc.__class__.__name__, None
                elapsed = time.perf_counter() - t0
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == "200":
                        latencies.append(elapsed)
                        decisions[decision or "?"] = decisions.get(decision or "?", 0) + 1
                    else:
                        errors += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return LoadResult(latencies, statuses, decisions, errors, wall, "time" if timed_out else "count")


def identify_bursts(
    people: dict[str, list[Path]], identity: str, photos: Sequence[Path], frames: int, count: int, seed: int = 1000
) -> list[list[bytes]]:
    """``count`` distinct bursts of ``frames`` frames of the enrolled identity (photos it was
    not enrolled with when there are any); built before timing starts."""
    pool = list(photos) or people[identity]
    return [burst([pool[(b + i) % len(pool)] for i in range(frames)], frames, seed=seed + b) for b in range(count)]


# -- metrics ---------------------------------------------------------------------------------


def stage_sums(service: Service) -> dict[str, tuple[float, float]]:
    """facegate_stage_seconds from /metrics: stage -> (sum of seconds, count)."""
    import httpx

    text = httpx.get(f"{service.base_url}/metrics", timeout=10).text
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for suffix, slot in (("_sum", 0), ("_count", 1)):
            prefix = f"facegate_stage_seconds{suffix}{{"
            if line.startswith(prefix):
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                out.setdefault(stage, [0.0, 0.0])[slot] = float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_means_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean milliseconds per request and stage between two /metrics snapshots."""
    means = {}
    for stage, (total, count) in after.items():
        t0, c0 = before.get(stage, (0.0, 0.0))
        if count > c0:
            means[stage] = round((total - t0) / (count - c0) * 1000, 2)
    return means


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds) * 1000
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "max_ms": round(float(ms.max()), 2),
    }


# -- reporting -------------------------------------------------------------------------------


def versus(value: float, target: float, unit: str) -> str:
    """'62 ms (0.78x target)'."""
    return f"{value:.1f} {unit} ({value / target:.2f}x target {target:g} {unit})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu": cpu, "loadavg_at_start": [round(x, 2) for x in load], "python": sys.version.split()[0]}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
