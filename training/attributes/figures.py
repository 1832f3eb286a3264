"""Figures for docs/: the expression confusion matrix, the gender and age errors by group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def draw(task: str, result: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if task == "expression":
        path = folder / "expression-confusion.png"
        confusion = np.array(result["confusion"], dtype=np.float64)
        share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(6.4, 5.4))
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        labels = result["labels"]
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(
                    j,
                    i,
                    f"{share[i, j]:.2f}\n{int(confusion[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black",
                )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (FER2013 PrivateTest)")
        ax.set_title(f"Expression: accuracy {result['accuracy']:.1%} on {result['photos']} photos (rows sum to 1)")
    else:
        path = folder / "gender-age-by-group.png"
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        races = result["by_race"]
        left.bar(list(races), [100 * (g["gender_accuracy"] or 0) for g in races.values()], color="#4a7ab5")
        left.set_ylim(80, 100)
        left.set_ylabel("gender accuracy, %")
        left.set_title(f"Gender by race group (all: {result['gender_accuracy']:.1%})")
        for i, g in enumerate(races.values()):
            left.text(i, 80.5, f"n={g['photos']}", ha="center", fontsize=8, color="white")
        bands = result["by_age_band"]
        right.bar(list(bands), [g["age_mae"] for g in bands.values()], color="#b5804a")
        right.set_ylabel("age mean absolute error, years")
        right.set_title(f"Age error by true age band (all: {result['age_mae']:.2f} y)")
        right.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
