"""Load test: identify throughput and tail latency at concurrency 8, a few thousand templates.

Loopback only, bounded in request count and in time. By default it starts its own
`facegate serve` on a free loopback port against a fresh temporary SQLite database (or
--database-url, an empty scratch Postgres database) after writing --templates synthetic
persons through ``app.store.crud.create_person`` (random unit vectors over the whole sphere), then
enrols one real person from ../shared through the API and sends 5-frame 640x480 bursts of
that person to /v1/identify.

    python -m bench.load --quick                    # < 1 minute
    python -m bench.load                            # 3000 templates, 400 requests, <= 120 s
    python -m bench.load --url http://127.0.0.1:8000 --key "$DOOR_KEY"   # a service already running here

The per-key rate limits are raised for the server it starts (RATE_LIMIT_DOOR=100000/second):
with --url, give a key whose limit the run will not hit, or expect 429s in the status counts.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from bench import camera, measure, paths, seeding, server

MAX_REQUESTS = 20_000
MAX_SECONDS = 600.0
MAX_CONCURRENCY = 64


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer templates and requests (< 1 minute)")
    p.add_argument("--url", default=None, help="an already running service on this machine (loopback only); needs --key")
    p.add_argument("--key", default=None, help="API key for --url (door or admin scope)")
    p.add_argument("--templates", type=int, default=None, help="synthetic persons written before start-up (default 3000; quick 1000)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=None, help=f"identify requests (default 400; quick 60; at most {MAX_REQUESTS})")
    p.add_argument("--max-seconds", type=float, default=120.0, help=f"stop after this long (at most {MAX_SECONDS:.0f})")
    p.add_argument("--frames", type=int, default=5, help="frames per identify request")
    p.add_argument("--warmup", type=int, default=4, help="untimed requests first")
    p.add_argument("--database-url", default=None, help="an empty scratch database instead of a temporary SQLite file")
    p.add_argument("--reuse-db", action="store_true", help="accept a --database-url that already holds people")
    p.add_argument("--hide-tensorflow", action="store_true", help="start the server as in the Docker image (no TensorFlow)")
    p.add_argument("--model-store", type=Path, default=None, help="default: $MODEL_STORE or model_store/")
    p.add_argument("--out", type=Path, default=paths.REPO_ROOT / "bench" / "results" / "load.json")
    args = p.parse_args()
    args.templates = args.templates if args.templates is not None else (1000 if args.quick else 3000)
    args.requests = args.requests or (60 if args.quick else 400)
    if not 1 <= args.requests <= MAX_REQUESTS:
        p.error(f"--requests must be within 1..{MAX_REQUESTS}")
    if not 0 < args.max_seconds <= MAX_SECONDS:
        p.error(f"--max-seconds must be within (0, {MAX_SECONDS:.0f}]")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        p.error(f"--concurrency must be within 1..{MAX_CONCURRENCY}")
    if args.url:
        server.require_loopback(args.url)
        if not args.key:
            p.error("--url needs --key")
    args.model_store = args.model_store or server.default_model_store()
    return args


def run(args: argparse.Namespace, base_url: str, key: str, bursts: list[list[bytes]]) -> measure.LoadResult:
    if args.warmup:
        measure.identify_load(base_url, key, bursts, args.warmup, min(args.concurrency, args.warmup), args.max_seconds)
    return measure.identify_load(base_url, key, bursts, args.requests, args.concurrency, args.max_seconds)


def templates_served(base_url: str) -> int | None:
    import httpx

    checks = httpx.get(f"{base_url}/readyz", timeout=10).json().get("checks") or {}
    value = checks.get("templates")
    return int(value) if value is not None else None


def main() -> None:
    args = parse_args()
    people = camera.face_photos()
    results: dict[str, Any] = {
        "machine": measure.machine(),
        "concurrency": args.concurrency,
        "frames": args.frames,
        "requests_asked": args.requests,
        "max_seconds": args.max_seconds,
    }
    if args.url:
        identity = next(iter(people))
        bursts = camera.identify_bursts(people, identity, people[identity], args.frames, count=8)
        results["target"] = args.url
        results["templates"] = templates_served(args.url)
        load = run(args, args.url, args.key, bursts)
    else:
        model_id, dim = seeding.model_info(args.model_store)
        results["model_id"] = model_id
        with server.database(args.database_url) as url:
            env = server.service_env(url, args.model_store)
            server.prepare_database(env, args.reuse_db)
            results["seed_s"] = round(seeding.seed_templates(url, model_id, args.templates, dim, seed=1), 1)
            print(f"{args.templates} synthetic persons written in {results['seed_s']} s", flush=True)
            with server.running_service(env, hide_tensorflow=args.hide_tensorflow) as service:
                server.create_keys(service)
                identity, spare = server.enrol_real_person(service, people)
                bursts = camera.identify_bursts(people, identity, spare, args.frames, count=8)
                results["target"] = "own server (" + ("postgres" if url.startswith("postgres") else "sqlite") + ")"
                print(
                    f"server up at {service.base_url} with {args.templates} synthetic templates + 1 enrolled; "
                    f"{args.requests} requests at concurrency {args.concurrency}",
                    flush=True,
                )
                load = run(args, service.base_url, service.door_key, bursts)
                results["templates"] = templates_served(service.base_url)  # the index, after the run's syncs
                results["server_memory"] = service.memory()
                results["tensorflow_loaded"] = service.loaded_tensorflow()
    summary = load.summary()
    results.update(summary)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    lat = summary["latency"]
    rows = [
        ["templates enrolled", results["templates"]],
        ["requests (completed / asked)", f"{summary['requests']} / {args.requests} (stopped by {summary['stopped_by']})"],
        [
            f"throughput, concurrency {args.concurrency}, {args.frames} frames",
            f"{summary['throughput_rps']:.2f} req/s ({summary['ok_rps']:.2f} answered 200) over {summary['wall_s']:.1f} s",
        ],
        [
            "latency of 200s",
            f"p50 {lat.get('p50_ms')} ms; p95 {lat.get('p95_ms')} ms; p99 {lat.get('p99_ms')} ms; max {lat.get('max_ms')} ms",
        ],
        ["errors", summary["errors"]],
        ["status codes", summary["statuses"]],
        ["decisions", summary["decisions"]],
    ]
    if "server_memory" in results:
        m = results["server_memory"]
        rows.append(
            [
                "server RSS after the run",
                f"{m['rss_mib']:.0f} MiB (peak {m['peak_rss_mib']:.0f} MiB; TensorFlow loaded: {results['tensorflow_loaded']})",
            ]
        )
    table = measure.markdown_table(["measure", "result"], rows)
    results["table"] = table
    measure.write_json(args.out, results)
    print()
    print(
        f"facegate load test — {results['target']}, {results['machine']['cpus']} CPUs, "
        f"load average {results['machine']['loadavg_at_start']} at start"
    )
    print(table)
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
