"""Embedding cost per face with LiteRT: the shipped student against the distillation teacher.

    python -m bench.embed_speed                       # model_store's package; teacher if fetched
    python -m bench.embed_speed --threads 1 2 --faces 200

Times one aligned 112x112 face per call (how the service embeds a burst's frames) after a
warm-up, and prints p50 / p95 per face and the teacher/student ratio. Real crops are not
needed for timing: the cost of a convolutional network does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from app.vision.embedder import ModelPackage, find_package
from app.vision.litert import LiteRTModel


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def time_calls(call: object, crop: np.ndarray, faces: int) -> list[float]:
    assert callable(call)
    for _ in range(10):
        call(crop)
    samples = []
    for _ in range(faces):
        start = time.perf_counter()
        call(crop)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("MODEL_STORE", "model_store")))
    parser.add_argument("--teacher", type=Path, default=Path("var/teacher/MobileFaceNet.tflite"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--faces", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results/embed_speed.json"))
    args = parser.parse_args()
    package = ModelPackage.open(find_package(args.store))
    size = package.input_size
    crop = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    rows = []
    for threads in args.threads:
        student = LiteRTModel(package.path / package.manifest.serving_file, num_threads=threads)
        rows.append({"model": f"student {package.model_id}", "threads": threads, **percentiles(time_calls(student, crop, args.faces))})
        if args.teacher.exists():
            from training.teacher import Teacher

            teacher = Teacher(args.teacher, num_threads=threads)
            face = crop[0].astype(np.uint8)
            rows.append(
                {
                    "model": "teacher MobileFaceNet (crop + mirror)",
                    "threads": threads,
                    **percentiles(time_calls(teacher.embed_one, face, args.faces)),
                }
            )
    print("| model | threads | p50 ms/face | p95 ms/face |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['threads']} | {r['p50_ms']} | {r['p95_ms']} |")
    for threads in args.threads:
        pair = [r for r in rows if r["threads"] == threads]
        if len(pair) == 2:
            print(f"teacher / student at {threads} thread(s): {pair[1]['p50_ms'] / pair[0]['p50_ms']:.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"faces": args.faces, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
