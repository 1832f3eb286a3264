"""Where the benchmarks find things: the repository, ../shared's faces, the frame size, quiet native logs."""

from __future__ import annotations

from pathlib import Path

from app.core.config import SHARED_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]


SHARED = SHARED_DIR


FACES = SHARED / "data" / "faces" / "celeba_wild"


FRAME_SIZE = (640, 480)


# Quiet the native libraries before anything imports them (MediaPipe logs through glog).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2"}
