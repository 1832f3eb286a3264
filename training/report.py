"""Compare distillation runs: dev accuracy against images seen, one line per run, and a table.

    python -m training.report --run runs/distill-main=main --out docs/eval/distill/learning_curve
    python -m training.report --run runs/abl-pair="pair loss" --run runs/abl-distill=distillation \\
        --run runs/abl-both=both --out docs/eval/distill/ablation
    python -m training.report --run runs/stage1="stage 1" --run runs/stage2="stage 2@76800" --out ...

A run that continued another (``--init-from``) is drawn after it: ``label@N`` shifts its images
seen by the N images its starting point had already seen.

Reads each run's ``history.csv`` (dev-set figures by step, written by ``training.distill``) and
``config.json``; writes ``report.png``, ``report.md`` and ``report.json`` into ``--out``. The dev
people were kept out of training; they are not the held-out people the final figures use.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_run(path: Path, label: str, offset: int = 0) -> dict[str, Any]:
    with (path / "history.csv").open(newline="") as handle:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
    if not rows:
        raise ValueError(f"{path}/history.csv has no rows: the run has not reached its first evaluation")
    by_step = {int(r["step"]): r for r in rows}  # a resumed run may repeat a step: keep the last
    rows = [by_step[s] for s in sorted(by_step)]
    config = json.loads((path / "config.json").read_text())
    last = rows[-1]
    return {
        "label": label,
        "run": str(path),
        "loss": config.get("loss"),
        "unlabeled_images": config.get("unlabeled_images"),
        "train_images": config.get("train_images"),
        "steps": int(last["step"]),
        "images_seen": int(last["images_seen"]) + offset,
        "dev_accuracy": last["dev_accuracy"],
        "dev_distance_to_teacher": last["dev_distance_to_teacher"],
        "dev_teacher_accuracy": last["dev_teacher_accuracy"],
        "curve": [[int(r["images_seen"]) + offset, r["dev_accuracy"]] for r in rows],
    }


def plot(runs: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        seen, accuracy = zip(*run["curve"], strict=True)
        ax.plot(seen, [100 * a for a in accuracy], marker="o", markersize=3, label=run["label"])
    teacher = runs[0]["dev_teacher_accuracy"]
    ax.axhline(100 * teacher, color="grey", linestyle="--", label=f"teacher {100 * teacher:.1f}%")
    ax.set_xlabel("images seen")
    ax.set_ylabel("dev verification accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| run | loss | unlabeled photos | images seen | dev accuracy | dev distance to teacher |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['label']} | {r['loss']} | {r['unlabeled_images']} | {r['images_seen']:,} | "
            f"{100 * r['dev_accuracy']:.2f}% | {r['dev_distance_to_teacher']:.3f} |"
        )
    lines.append(f"\nThe teacher on the same dev pairs: {100 * runs[0]['dev_teacher_accuracy']:.2f}%.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="RUN_DIR=label[@images seen before it] (repeatable)")
    parser.add_argument("--title", default="distillation: dev accuracy against images seen")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = []
    for spec in args.run:
        directory, _, named = spec.partition("=")
        label, _, offset = named.partition("@")
        runs.append(read_run(Path(directory), label or Path(directory).name, int(offset or 0)))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.title, args.out / "report.png")
    text = markdown(runs)
    (args.out / "report.md").write_text(text)
    (args.out / "report.json").write_text(json.dumps(runs, indent=1) + "\n")
    print(text)
    return runs


if __name__ == "__main__":
    main()
