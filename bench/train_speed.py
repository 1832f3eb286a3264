"""Training throughput of the student on this CPU, by input size and first trained block.

    python -m bench.train_speed                      # 112 and 160 px; all, block_6, block_13
    python -m bench.train_speed --sizes 112 --from all block_6 --steps 6
    python -m bench.train_speed --sizes 112 --output-strides 32 16 --pooling gdc   # the dense tail

One distillation step (forward in training mode, cosine loss, backward, Adam) on random
pixels, timed after warm-up steps that trace the graph. Prints images/s per configuration and
its ratio to the whole network at the first size, so the choice of input size and frozen
blocks is read off one table. BatchNorm trains in every configuration (as in training).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from training.distill import distill_loss
from training.model import OUTPUT_STRIDES, POOLINGS, Pooling, build_embedder


def measure(
    size: int, trainable_from: str, batch: int, steps: int, warmup: int, output_stride: int = 32, pooling: Pooling = "avg"
) -> float:
    model = build_embedder(
        input_size=size,
        embedding_size=192,
        backbone_weights=None,
        trainable="full" if trainable_from == "all" else "partial",
        trainable_from="block_13" if trainable_from == "all" else trainable_from,
        batchnorm="train",
        head_activation=None,
        pooling=pooling,
        output_stride=output_stride,
    )
    optimizer = tf.keras.optimizers.Adam(1e-3)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    t = tf.math.l2_normalize(tf.constant(rng.normal(size=(batch, 192)).astype(np.float32)), axis=1)
    w = tf.ones(batch)

    @tf.function(jit_compile=False)
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = distill_loss(model(x, training=True), t, w)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    for _ in range(warmup):
        step().numpy()
    start = time.perf_counter()
    for _ in range(steps):
        step().numpy()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 160])
    parser.add_argument("--from", dest="blocks", nargs="+", default=["all", "block_6", "block_13"])
    parser.add_argument("--output-strides", type=int, nargs="+", default=[32], choices=OUTPUT_STRIDES)
    parser.add_argument("--pooling", choices=POOLINGS, default="avg")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_speed.json"))
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        for stride in args.output_strides:
            for block in args.blocks:
                rate = measure(size, block, args.batch, args.steps, args.warmup, stride, args.pooling)
                rows.append({"size": size, "output_stride": stride, "trained_from": block, "images_per_s": round(rate, 1)})
                print(f"size {size} stride {stride} from {block}: {rate:.1f} images/s", flush=True)
    base = rows[0]["images_per_s"]
    print("\n| input | output stride | trained from | images/s | vs first row |\n|---|---|---|---|---|")
    for row in rows:
        ratio = row["images_per_s"] / base
        print(f"| {row['size']} | {row['output_stride']} | {row['trained_from']} | {row['images_per_s']} | {ratio:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"batch": args.batch, "steps": args.steps, "threads": os.cpu_count(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
