"""Evaluation of an embedder, as a package: metrics, the method's protocol, pairs, curves and the CLI."""
