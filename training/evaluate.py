"""Evaluate an embedder (the command line of ``training.eval``): the method's fused-vector protocol,
LFW-format pairs, training curves.

    python -m training.evaluate protocol --cache var/crops/celeba --model runs/main/best.keras \\
        --identities runs/main/split.json --out var/eval/main
    python -m training.evaluate protocol --cache var/crops/yale_b --all-identities \\
        --model runs/main/best.keras --out var/eval/yale_b
    python -m training.evaluate make-pairs --cache var/crops/celeba --identities runs/main/split.json \\
        --out var/eval/pairs/pairs.txt
    python -m training.evaluate pairs --root ../shared/data/faces/celeba_aligned \\
        --root ../shared/data/faces/celeba_wild --pairs var/eval/pairs/pairs.txt \\
        --model runs/main/best.keras --out var/eval/main
    python -m training.evaluate curves --history runs/main/history.csv --out var/eval/main
    python -m training.evaluate teacher-gap --run runs/distill --model runs/distill/best.keras \
        --out var/eval/teacher_gap      # distance to the teacher: trained vs unseen photos
    python -m training.evaluate compare-pairs --pairs-a var/eval/a/pairs.json --pairs-b var/eval/b/pairs.json \
        --out var/eval/compare          # two pairs evaluations, pair by pair (McNemar)

Every subcommand prints a plain-text table and writes JSON and PNG files into ``--out``.

Distances are always the method's normalised distance (``app.matching.fusion``): the figures
here are on the same 0..1 scale as the service's threshold. A model is a Keras file (run
through one compiled ``tf.function`` in batches) or a TFLite file (run through the service's
own ``LiteRTModel``), so the shipped artefact itself can be measured.
"""

from __future__ import annotations

from training.eval.cli import main

if __name__ == "__main__":
    main()
