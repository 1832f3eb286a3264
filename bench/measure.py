"""Load generation and the figures: latency percentiles, per-stage means from /metrics, tables, machine facts."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.camera import multipart
from bench.server import Service, require_loopback


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


SERVER_TOTAL = "server"  # the pseudo-stage: the server's whole time for the identify route


def stage_sums(service: Service, endpoint: str = "/v1/identify") -> dict[str, tuple[float, float]]:
    """facegate_stage_seconds from /metrics: stage -> (sum of seconds, count); and, as
    SERVER_TOTAL, facegate_request_seconds of ``endpoint`` (the time the server spent on it)."""
    import httpx

    text = httpx.get(f"{service.base_url}/metrics", timeout=10).text
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for suffix, slot in (("_sum", 0), ("_count", 1)):
            prefix = f"facegate_stage_seconds{suffix}{{"
            if line.startswith(prefix):
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                out.setdefault(stage, [0.0, 0.0])[slot] = float(line.rsplit(" ", 1)[1])
            if line.startswith(f'facegate_request_seconds{suffix}{{endpoint="{endpoint}"}}'):
                out.setdefault(SERVER_TOTAL, [0.0, 0.0])[slot] = float(line.rsplit(" ", 1)[1])
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
