"""Training curves and learning curves from a run's history."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from training.eval.common import _pct, markdown_table


def read_history(path: Path) -> dict[str, np.ndarray]:
    """``history.csv`` as columns; a resumed run's repeated epochs keep their last row."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} has no epochs yet")
    by_epoch = {int(float(r["epoch"])): r for r in rows}
    epochs = sorted(by_epoch)
    columns = {k for r in rows for k in r if k != "epoch"}
    history = {"epoch": np.array(epochs) + 1}
    for column in sorted(columns):
        history[column] = np.array([float(by_epoch[e].get(column) or "nan") for e in epochs])
    return history


def run_curves(args: argparse.Namespace) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    history = read_history(args.history)
    metrics = [
        ("loss", "pair loss"),
        ("accuracy", "batch accuracy"),
        ("mean_pos", "mean positive distance"),
        ("mean_neg", "mean negative distance"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (metric, label) in zip(axes.flat, metrics, strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + metric in history:
                ax.plot(history["epoch"], history[prefix + metric], style, label="val" if prefix else "train")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(str(args.history))
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    best = int(np.nanargmin(history["val_loss"])) if "val_loss" in history else None
    summary: dict[str, Any] = {"history": str(args.history), "epochs": len(history["epoch"]), "plot": "curves.png"}
    if best is not None:
        summary["best"] = {k: (int(v[best]) if k == "epoch" else float(v[best])) for k, v in history.items()}
    last = {k: (int(v[-1]) if k == "epoch" else float(v[-1])) for k, v in history.items()}
    summary["last"] = last
    order = ("loss", "val_loss", "accuracy", "val_accuracy", "mean_pos", "val_mean_pos", "mean_neg", "val_mean_neg")
    shown = [m for m in order if m in history]
    rows = [
        [name, str(row["epoch"]), *(f"{row[m]:.4f}" for m in shown)]
        for name, row in (("best (val_loss)", summary.get("best")), ("last", last))
        if row
    ]
    print(markdown_table(["row", "epoch (1-based)", *shown], rows))
    (out / "curves.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_learning_curve(args: argparse.Namespace) -> dict[str, Any]:
    """Best validation figures of runs that differ only in how many identities they trained on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    for run in args.run:
        config = json.loads((run / "config.json").read_text())
        history = read_history(run / "history.csv")
        best = int(np.nanargmin(history["val_loss"]))
        points.append(
            {
                "run": str(run),
                "train_identities": int(config["train_identities"]),
                "train_images": int(config["train_images"]),
                "epochs": len(history["epoch"]),
                "best_epoch": int(history["epoch"][best]),
                "val_loss": float(history["val_loss"][best]),
                "val_accuracy": float(history["val_accuracy"][best]),
                "max_val_accuracy": float(np.nanmax(history["val_accuracy"])),
                "train_accuracy": float(history["accuracy"][best]),
            }
        )
    points.sort(key=lambda p: p["train_identities"])
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["train_identities"] for p in points]
    ax.plot(xs, [p["val_accuracy"] for p in points], "o-", label="val accuracy at best val loss")
    ax.plot(xs, [p["train_accuracy"] for p in points], "s--", label="train accuracy (augmented)")
    ax.set_xscale("log")
    ax.set_xlabel("training identities")
    ax.set_ylabel("pair-batch accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(args.title)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    plt.close(fig)
    rows = [
        [
            str(p["train_identities"]),
            str(p["train_images"]),
            str(p["best_epoch"]),
            f"{p['val_loss']:.4f}",
            _pct(p["val_accuracy"]),
            _pct(p["train_accuracy"]),
        ]
        for p in points
    ]
    print(markdown_table(["identities", "images", "best epoch", "val loss", "val accuracy", "train accuracy"], rows))
    summary = {"title": args.title, "points": points, "plot": "learning_curve.png"}
    (out / "learning_curve.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
