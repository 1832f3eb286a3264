"""The command line: ``python -m training.evaluate protocol|compare|compare-pairs|teacher-gap|pairs|make-pairs|curves|learning-curve``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.eval.common import DEFAULT_NS
from training.eval.compare import run_compare, run_compare_pairs
from training.eval.curves import run_curves, run_learning_curve
from training.eval.make_pairs import run_make_pairs
from training.eval.pairs import run_pairs
from training.eval.protocol import run_protocol
from training.eval.teacher_gap import run_teacher_gap


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("protocol", help="the method's fused-vector protocol on held-out identities")
    p.add_argument("--cache", type=Path, action="append", required=True, help="crop cache (repeatable; each is reported separately)")
    p.add_argument("--model", type=Path, required=True, help=".keras or .tflite embedder")
    p.add_argument("--identities", type=Path, help="a run's split.json (its 'val' list) or one identity per line")
    p.add_argument(
        "--all-identities",
        action="store_true",
        help="use whole every cache holding none of --identities (or every cache, without --identities)",
    )
    p.add_argument("--n", type=int, nargs="+", default=list(DEFAULT_NS), help="images fused per vector")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_protocol)

    p = sub.add_parser("compare", help="two embedders on the same single-photo queries, with McNemar's exact test")
    p.add_argument("--cache", type=Path, action="append", required=True, help="crop cache (repeatable; each is reported separately)")
    p.add_argument("--model-a", type=Path, required=True, help=".keras or .tflite embedder (e.g. the shipped one)")
    p.add_argument("--model-b", type=Path, required=True, help=".keras or .tflite embedder (e.g. a candidate)")
    p.add_argument("--identities", type=Path, help="a run's split.json (its 'val' list) or one identity per line")
    p.add_argument("--all-identities", action="store_true", help="use whole every cache holding none of --identities")
    p.add_argument("--seed", type=int, default=0, help="the protocol's --seed (the order of equally near photos)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_compare)

    p = sub.add_parser("compare-pairs", help="two pairs evaluations of one pairs file, pair by pair, with McNemar's exact test")
    p.add_argument("--pairs-a", type=Path, required=True, help="pairs.json of `pairs` for model A")
    p.add_argument("--pairs-b", type=Path, required=True, help="pairs.json of `pairs` for model B (the same --pairs file)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_compare_pairs)

    p = sub.add_parser("teacher-gap", help="a student's distance to its teacher on a distillation run's trained, dev and held-out photos")
    p.add_argument("--run", type=Path, required=True, help="a training.distill run directory (its config.json and split.json)")
    p.add_argument("--model", type=Path, required=True, help=".keras or .tflite student (any trained on that run's split)")
    p.add_argument("--people", type=int, default=400, help="training identities sampled (0: all)")
    p.add_argument("--images", type=int, default=1000, help="unlabeled photos sampled per source (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_teacher_gap)

    p = sub.add_parser("make-pairs", help="an LFW-format pairs.txt over held-out identities")
    p.add_argument("--cache", type=Path, required=True, help="crop cache whose index.csv lists the aligned images")
    p.add_argument("--identities", type=Path, help="a run's split.json (its 'val' list) or one identity per line")
    p.add_argument("--all-identities", action="store_true", help="every identity of the cache (a wholly held-out set)")
    p.add_argument(
        "--root",
        type=Path,
        action="append",
        default=[],
        help="raw image roots in order (repeatable); default: the roots of the cache's index paths",
    )
    p.add_argument("--out", type=Path, required=True, help="pairs file to write")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--per-fold", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_make_pairs)

    p = sub.add_parser("pairs", help="LFW-format verification on raw photos, 10-fold and TAR at FAR")
    p.add_argument("--root", type=Path, action="append", required=True, help="image root (repeatable, merged by name)")
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help=".keras or .tflite embedder")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_pairs)

    p = sub.add_parser("curves", help="training curves from a run's history.csv")
    p.add_argument("--history", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_curves)

    p = sub.add_parser("learning-curve", help="best validation figures of runs over training-set size")
    p.add_argument("--run", type=Path, action="append", required=True, help="a run directory (repeatable)")
    p.add_argument("--title", default="learning curve")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_learning_curve)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result: dict[str, Any] = args.func(args)
    return result
