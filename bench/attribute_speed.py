"""What each attribute model adds per face, with LiteRT (the target: <= 3 ms a face on this CPU).

    python -m bench.attribute_speed                  # every attribute package in model_store
    python -m bench.attribute_speed --threads 1 2 --faces 300

Times one aligned 112x112 crop per call (a 1-frame analysis) and a 5-crop batch (a burst,
one call, cost divided by 5), after a warm-up; prints p50 / p95 per face and the ratio to
the embedder's cost on the same crop, measured in the same run. The served files average the
crop and its mirror image, so these figures include that second pass.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from app.vision.attributes import AttributeModel
from app.vision.embedder import ModelPackage, find_package, list_packages
from app.vision.litert import LiteRTModel
from bench.embed_speed import percentiles, time_calls


def per_face(model: LiteRTModel, batch: np.ndarray, calls: int) -> list[float]:
    """Seconds per face of ``calls`` timed calls on the whole batch (``embed_speed.time_calls``)."""
    return [seconds / len(batch) for seconds in time_calls(model, batch, calls)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("MODEL_STORE", "model_store")))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--faces", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results/attribute_speed.json"))
    args = parser.parse_args()
    packages = [args.store / name for name in list_packages(args.store, "attributes")]
    if not packages:
        raise SystemExit(f"no attribute package in {args.store}: python -m training.attributes.export")
    embedder = ModelPackage.open(find_package(args.store))
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 255, (1, 112, 112, 3)).astype(np.float32)
    burst = rng.uniform(0, 255, (5, 112, 112, 3)).astype(np.float32)
    rows = []
    for threads in args.threads:
        models = [("embedder " + embedder.model_id, LiteRTModel(embedder.path / embedder.manifest.serving_file, num_threads=threads))]
        for path in packages:
            opened = AttributeModel.open(path, num_threads=threads)
            models.append((f"{opened.task} {opened.model_id}", opened.runner))
        for name, model in models:
            for label, batch in (("1 face", one), ("5-face burst", burst)):
                rows.append(
                    {"model": name, "threads": threads, "call": label, **percentiles(per_face(model, batch, args.faces // len(batch)))}
                )
    print("| model | threads | call | p50 ms/face | p95 ms/face | / embedder |\n|---|---|---|---|---|---|")
    for r in rows:
        base = next(x for x in rows if x["threads"] == r["threads"] and x["call"] == r["call"] and x["model"].startswith("embedder"))
        print(f"| {r['model']} | {r['threads']} | {r['call']} | {r['p50_ms']} | {r['p95_ms']} | {r['p50_ms'] / base['p50_ms']:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"faces": args.faces, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
