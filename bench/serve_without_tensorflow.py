"""`facegate` with TensorFlow hidden, as in the Docker image (which has no training extras).

MediaPipe imports TensorFlow whenever it is installed (an optional import in
``mediapipe.tasks``), which adds ~650 MB to the server's memory in a development
environment where TensorFlow is installed for training. The image installs only the
serving dependencies, so benchmarks emulate it by making ``import tensorflow`` fail the way
an absent package does:

    python -m bench.serve_without_tensorflow serve --port 8000
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

HIDDEN = frozenset({"tensorflow", "tensorflow_io_gcs_filesystem", "tf_keras"})


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name.split(".", 1)[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by bench.serve_without_tensorflow)", name=name)
        return None


def main() -> None:
    sys.meta_path.insert(0, _Hide())
    from app.cli import main as facegate

    facegate(sys.argv[1:])


if __name__ == "__main__":
    main()
