"""How far a student sits from its distillation teacher on photos it trained on and on people it never saw.

    python -m training.evaluate teacher-gap --run runs/cont-os16 \\
        --model model_store/<package>/model.tflite --out docs/eval/<run>/teacher_gap

The run directory's ``config.json`` names its crop caches, teacher labels and split settings,
so the groups are exactly that run's (``training.distill.load_data``):

- **trained people**: labelled photos of the run's training identities (a sample of people);
- **trained unlabeled photos**, by source (a sample of each);
- **dev people**: training identities kept out to follow progress;
- **held-out people**: ``split.json``'s ``val``, the people every reported figure is on.

For each group, on the clean crops (no augmentation): the mean cosine distance between the
student's vector and the teacher's label, and for people the best-threshold verification
accuracy of the student and of the teacher on the same photos (every same-person pair and as
many random stranger pairs, the dev figure's measure). A large distance on every group with a
small difference between trained and unseen ones says the student *underfits*: capacity or
compute is the limit, and more distinct photos will not pay by themselves. A distance much
lower on trained photos than on unseen people says it *overfits*: more distinct photos would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from training.eval.common import _json_default, embed_images, load_model, markdown_table


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def run_args(run: Path) -> argparse.Namespace:
    """``training.distill``'s arguments for ``run``, rebuilt from its ``config.json`` (data and split settings only)."""
    from training.distill import parse_args

    config = json.loads((Path(run) / "config.json").read_text())
    argv: list[str] = []
    for cache in _as_list(config["cache"]):
        argv += ["--cache", cache]
    labels, roots = _as_list(config["labels"]), _as_list(config["root"])
    for label_dir, root in zip(labels, roots, strict=True):
        argv += ["--labels", label_dir, "--root", root]
    for key in ("val_fraction", "split_seed", "dev_fraction", "unlabeled_fraction", "max_train_identities"):
        if key in config:
            argv += [f"--{key.replace('_', '-')}", str(config[key])]
    return parse_args([*argv, "--out", str(run)])


def run_teacher_gap(args: argparse.Namespace) -> dict[str, Any]:
    from training.distill import load_data
    from training.eval.metrics import verification_accuracy

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    dargs = run_args(args.run)
    data = load_data(dargs, None)
    saved = json.loads((Path(args.run) / "split.json").read_text())
    if sorted(saved["val"]) != sorted(data.heldout):
        raise ValueError(f"{args.run}/split.json does not match the split its config rebuilds: not that run's data")
    rng = np.random.default_rng(args.seed)

    def people(ids: dict[str, list[int]], limit: int) -> tuple[np.ndarray, np.ndarray]:
        names = sorted(ids)
        if limit and len(names) > limit:
            names = sorted(rng.choice(names, size=limit, replace=False).tolist())
        pairs = [(r, k) for k, name in enumerate(names) for r in ids[name] if data.has_teacher[r]]
        return np.array([r for r, _ in pairs], dtype=np.int64), np.array([k for _, k in pairs], dtype=np.int64)

    groups: list[tuple[str, np.ndarray, np.ndarray | None]] = [("trained people", *people(data.train_ids, args.people))]
    for source in sorted(set(data.sources[data.unlabeled_rows].tolist())):
        rows = data.unlabeled_rows[data.sources[data.unlabeled_rows] == source]
        if args.images and len(rows) > args.images:
            rows = np.sort(rng.choice(rows, size=args.images, replace=False))
        groups.append((f"trained unlabeled: {source}", rows, None))
    groups.append(("dev people", *people(data.dev_ids, 0)))
    groups.append(("held-out people", *people(data.heldout_ids, 0)))

    results = []
    for name, rows, owners in groups:
        vectors = embed_images(model.embed, data.crops, rows, desc=f"embedding {name}")
        targets = data.teacher[rows]
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        result: dict[str, Any] = {
            "group": name,
            "photos": len(rows),
            "distance_to_teacher": float(np.mean(1.0 - np.sum(vectors * targets, axis=1))),
        }
        if owners is not None:
            result.update(
                people=len(np.unique(owners)),
                student_accuracy=verification_accuracy(vectors, owners, args.seed),
                teacher_accuracy=verification_accuracy(targets, owners, args.seed),
            )
        results.append(result)
    report = {"run": str(args.run), "model": model.path, "model_sha256": model.sha256, "seed": args.seed, "groups": results}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    table = markdown_table(
        ["group", "photos", "distance to teacher", "student accuracy", "teacher accuracy"],
        [
            [
                r["group"],
                f"{r['photos']:,}" + (f" ({r['people']} people)" if "people" in r else ""),
                f"{r['distance_to_teacher']:.4f}",
                f"{100 * r['student_accuracy']:.2f}%" if "student_accuracy" in r else "",
                f"{100 * r['teacher_accuracy']:.2f}%" if "teacher_accuracy" in r else "",
            ]
            for r in results
        ],
    )
    text = f"Student {Path(model.path).name} against its teacher, groups of run {args.run} (clean crops)\n\n{table}"
    (out / "report.md").write_text(text)
    print(text)
    return report
