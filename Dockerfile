# syntax=docker/dockerfile:1
# The facegate API: serving dependencies only (no training extras), the code, the migrations
# and the model package(s) in model_store/.
#
#   docker build -t facegate .
#   docker run -p 8000:8000 -e DATABASE_URL=postgresql+psycopg://user:pass@host/db facegate
#
# Without DATABASE_URL it serves from a SQLite file in /app/var (mount a volume there).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    GLOG_minloglevel=2

# opencv-contrib-python (MediaPipe's OpenCV, the project's only one) links libGL and GLib; MediaPipe itself bundles its EGL/GLES libraries. Unpinned on purpose:
# the slim image's Debian release fixes the versions and security updates should come in.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN mkdir app && touch app/__init__.py \
    && pip install . \
    && pip uninstall -y facegate \
    && rm -rf app build ./*.egg-info

COPY app/ app/
COPY migrations/ migrations/
COPY model_store/ model_store/

# Editable, so the code stays in /app: the settings find migrations/ and model_store/ next to
# app/ (a plain `pip install .` would put app/ in site-packages, away from both).
# The import line fails the build on a missing library (libGL, simsimd) instead of the start.
RUN pip install --no-deps -e . \
    && python -c "import app.main, cv2, mediapipe, simsimd" \
    && groupadd --gid 10001 facegate \
    && useradd --create-home --uid 10001 --gid 10001 facegate \
    && mkdir -p var \
    && chown facegate var

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

# `serve` waits for the database and applies migrations first, then loads and verifies the model.
CMD ["facegate", "serve", "--host", "0.0.0.0"]
