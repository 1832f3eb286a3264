"""Synthetic templates written into a store through the service's own crud functions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from bench.camera import random_unit_vectors


def model_info(model_store: Path) -> tuple[str, int]:
    """(model id, embedding size) of the package the service will load."""
    from app.vision import manifest as contract
    from app.vision.embedder import find_package

    manifest = contract.read(find_package(model_store, os.environ.get("MODEL_ID")))
    return manifest.model_id, manifest.embedding_size


def seed_templates(database_url: str, model_id: str, count: int, dim: int, seed: int = 0, bulk: bool = False) -> float:
    """Insert ``count`` synthetic persons with one random template each, through the service's
    own crud functions; returns seconds.

    ``bulk=False`` takes the enrol path's writes (person, frame, template: one generation per
    person). ``bulk=True`` takes ``crud.bulk_insert_templates`` (batches under one generation
    each): the same rows, fast enough for 100k+.
    """
    from app.core.config import Settings
    from app.store import crud
    from app.store.db import make_engine, make_session_factory

    rng = np.random.default_rng(seed)
    engine = make_engine(Settings(DATABASE_URL=database_url))
    sessions = make_session_factory(engine)
    t0 = time.perf_counter()
    batch = 5000
    with sessions() as session:
        for start in range(0, count, batch):
            vectors = random_unit_vectors(min(batch, count - start), dim, rng)
            names = [f"synthetic-{start + i}" for i in range(len(vectors))]
            if bulk:
                crud.bulk_insert_templates(session, model_id=model_id, names=names, vectors=vectors, metadata={"synthetic": True})
            else:
                for name, vector in zip(names, vectors, strict=True):
                    person = crud.create_person(session, name=name, metadata={"synthetic": True}, sample_jpeg=None)
                    crud.add_frame_embeddings(session, person_id=person.id, model_id=model_id, vectors=vector[None, :])
                    crud.put_template(session, person_id=person.id, model_id=model_id, vector=vector, frame_count=1)
            session.commit()
    engine.dispose()
    return time.perf_counter() - t0


def count_persons(database_url: str) -> int:
    from app.core.config import Settings
    from app.store import crud
    from app.store.db import make_engine, make_session_factory

    engine = make_engine(Settings(DATABASE_URL=database_url))
    with make_session_factory(engine)() as session:
        n = crud.count_persons(session)
    engine.dispose()
    return n
