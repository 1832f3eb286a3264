"""The in-memory linear scan over every enrolled template of the serving model.

Templates are held as int8 codes (``round(v * 127)``) and their sign bits: a million 192-d
templates take 192 + 24 MB instead of 768 MB (236 bytes a template with the ids and the
id-to-row map). SimSIMD's int8 dot product scans 10k of them in ~0.3 ms on one thread; from
PREFILTER_MIN templates a Hamming scan of the sign bits shortlists first, so a million cost
~5 ms on two cores instead of the ~11 ms that reading 192 MB of int8 costs here. The
scan only shortlists candidates; their exact float32 vectors are then read back from the
database and rescored, so every distance a client sees is exact.

The index holds no database access: every request, the services layer compares the
database's ``store_state.generation`` with the generation this index has applied and hands
it the missing changes (``crud.template_changes``; see ``app.store.models``), so an enrol or
delete made through any replica is seen by the next identify on every replica.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import simsimd

QUANT_SCALE = 127.0
# Below this many templates the scan runs on one thread: starting SimSIMD's worker threads costs
# more than the scan itself (10k templates: ~0.7 ms on one thread, 6-12 ms on two, measured here).
PARALLEL_SCAN_MIN = 200_000
# From this many templates the int8 scan is preceded by a sign-bit prefilter: a million int8
# templates are 192 MB, which the int8 dot product reads at memory bandwidth (~11 ms here on two
# threads); their sign bits are 24 MB (Hamming distance, ~3.5 ms). The PREFILTER_SHORTLIST
# nearest by Hamming distance are then scanned in int8 as before. The angle between two unit
# vectors is about pi * hamming / d, so a template within any door threshold (cosine >= 0.6,
# hamming <= ~57 of 192 bits) sits far inside the shortlist of a million strangers (whose
# 4096th-nearest is at ~78 bits): the prefilter changes no decision (tests/matching).
PREFILTER_MIN = 200_000
PREFILTER_SHORTLIST = 4096


def top_k_largest(scores: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Indices of the ``k`` largest scores, largest first.

    A full ``argpartition`` over a million scores costs ~10 ms here. Instead: the k-th largest
    of the per-block maxima is a lower bound on the k-th largest score (at least k scores
    reach it), so only the few scores above it need sorting.
    """
    n = len(scores)
    if k >= n:
        return np.argsort(-scores, kind="stable")
    blocks = n // block
    if blocks >= 4 * k:
        maxima = scores[: blocks * block].reshape(blocks, block).max(axis=1)
        bound = np.partition(maxima, blocks - k)[blocks - k]
        candidates = np.flatnonzero(scores >= bound)
    else:
        candidates = np.arange(n)
    chosen = candidates[np.argpartition(scores[candidates], len(candidates) - k)[len(candidates) - k :]]
    return chosen[np.argsort(-scores[chosen], kind="stable")]


def quantise(vectors: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(vectors, dtype=np.float32) * QUANT_SCALE), -127, 127).astype(np.int8)


def sign_bits(codes: np.ndarray) -> np.ndarray:
    """(n, d) int8 codes -> (n, ceil(d / 8)) packed sign bits, the prefilter's codes."""
    return np.packbits(np.asarray(codes) > 0, axis=-1)


def nearest_rows(hamming: np.ndarray, count: int, dim: int) -> np.ndarray:
    """Rows whose Hamming distance is within that of the ``count``-th nearest (ties included).

    Hamming distances are small integers (0..dim): a histogram finds the cut-off in one pass,
    where a partial sort of a million floats costs twice the scan.
    """
    distances = hamming.astype(np.uint16)
    cutoff = int(np.searchsorted(np.cumsum(np.bincount(distances, minlength=dim + 1)), count))
    return np.flatnonzero(distances <= cutoff)


@dataclass(frozen=True)
class Candidate:
    template_id: int
    person_id: int
    approx_distance: float


class TemplateIndex:
    def __init__(self, model_id: str, dim: int, capacity: int = 1024, threads: int = 1):
        self.model_id = model_id
        self.threads = threads
        self.dim = dim
        self.generation = -1
        self._codes = np.zeros((capacity, dim), dtype=np.int8)
        self._bits = np.zeros((capacity, (dim + 7) // 8), dtype=np.uint8)
        self._template_ids = np.zeros(capacity, dtype=np.int64)
        self._person_ids = np.zeros(capacity, dtype=np.int64)
        # Template id -> row (-1: absent). Ids are the database's dense integers, so an int32
        # array costs 4 bytes per id where a dict of a million ints costs ~100 MB.
        self._row_of = np.full(capacity, -1, dtype=np.int32)
        self._size = 0
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return self._codes.nbytes + self._bits.nbytes + self._template_ids.nbytes + self._person_ids.nbytes + self._row_of.nbytes

    # -- changes ---------------------------------------------------------------------------
    def _grow(self, needed: int) -> None:
        capacity = len(self._codes)
        if needed <= capacity:
            return
        new_capacity = max(needed, capacity * 2)
        for name in ("_codes", "_bits", "_template_ids", "_person_ids"):
            old = getattr(self, name)
            new = np.zeros((new_capacity, *old.shape[1:]), dtype=old.dtype)
            new[: self._size] = old[: self._size]
            setattr(self, name, new)

    def _cover_ids(self, max_id: int) -> None:
        if max_id < len(self._row_of):
            return
        grown = np.full(max(max_id + 1, 2 * len(self._row_of)), -1, dtype=np.int32)
        grown[: len(self._row_of)] = self._row_of
        self._row_of = grown

    def row_of(self, template_id: int) -> int:
        return int(self._row_of[template_id]) if 0 <= template_id < len(self._row_of) else -1

    def upsert_many(self, template_ids: np.ndarray, person_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or overwrite templates (ids unique within one call)."""
        if len(template_ids) == 0:
            return
        tids = np.asarray(template_ids, dtype=np.int64)
        codes = quantise(vectors)
        with self._lock:
            self._cover_ids(int(tids.max()))
            rows = self._row_of[tids].astype(np.int64)
            new = rows < 0
            n_new = int(new.sum())
            self._grow(self._size + n_new)
            rows[new] = np.arange(self._size, self._size + n_new)
            self._size += n_new
            self._row_of[tids] = rows
            self._codes[rows] = codes
            self._bits[rows] = sign_bits(codes)
            self._template_ids[rows] = tids
            self._person_ids[rows] = np.asarray(person_ids, dtype=np.int64)

    def remove(self, template_id: int) -> None:
        with self._lock:
            row = self.row_of(template_id)
            if row < 0:
                return
            self._row_of[template_id] = -1
            last = self._size - 1
            if row != last:
                # Move the last row into the hole so the matrix stays dense.
                moved = int(self._template_ids[last])
                self._codes[row] = self._codes[last]
                self._bits[row] = self._bits[last]
                self._template_ids[row] = moved
                self._person_ids[row] = self._person_ids[last]
                self._row_of[moved] = row
            self._size = last

    def load_bulk(self, template_ids: np.ndarray, person_ids: np.ndarray, codes: np.ndarray, generation: int) -> None:
        """Replace the contents at once (benchmarks and start-up of very large stores)."""
        with self._lock:
            n = len(template_ids)
            self._codes = np.ascontiguousarray(codes, dtype=np.int8)
            self._bits = sign_bits(self._codes)
            self._template_ids = np.asarray(template_ids, dtype=np.int64).copy()
            self._person_ids = np.asarray(person_ids, dtype=np.int64).copy()
            self._row_of = np.full(int(self._template_ids.max(initial=0)) + 1, -1, dtype=np.int32)
            self._row_of[self._template_ids] = np.arange(n, dtype=np.int32)
            self._size = n
            self.generation = generation

    # -- consistency -----------------------------------------------------------------------
    def apply(self, generation: int, deleted: Iterable[int], batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Apply the changes committed up to ``generation`` (as ``crud.template_changes`` reads
        them): the deleted template ids, then batches of (template ids, person ids, vectors)
        added or re-fused. One lock for the whole: a concurrent scan sees before or after."""
        with self._lock:
            for tid in deleted:
                self.remove(int(tid))
            for template_ids, person_ids, vectors in batches:
                self.upsert_many(template_ids, person_ids, vectors)
            self.generation = max(self.generation, generation)

    # -- scan ------------------------------------------------------------------------------
    def scan(self, query: np.ndarray, k: int) -> list[Candidate]:
        """Shortlist the ``k`` nearest templates by int8 dot product (approximate distances);
        from PREFILTER_MIN templates, among the PREFILTER_SHORTLIST nearest by sign bits."""
        q = quantise(query)[None, :]
        with self._lock:
            n = self._size
            if n == 0:
                return []
            threads = self.threads if n >= PARALLEL_SCAN_MIN else 1
            if n >= PREFILTER_MIN:
                hamming = np.empty((1, n), dtype=np.float32)
                simsimd.cdist(sign_bits(q), self._bits[:n], metric="hamming", dtype="bin8", out=hamming, threads=threads)
                rows = nearest_rows(hamming[0], max(PREFILTER_SHORTLIST, k), self.dim)
            if n < PREFILTER_MIN or len(rows) > n // 8:
                # Below the prefilter's size, or sign bits that do not tell templates apart
                # (vectors all in one orthant, as a ReLU head gives): the plain scan, never a
                # worse one, and no copy of the codes.
                rows, codes = np.arange(n), self._codes[:n]
            else:
                codes = self._codes[rows]
            dots = np.empty((1, len(rows)), dtype=np.float32)
            simsimd.cdist(q, codes, metric="dot", out=dots, threads=threads if len(rows) >= PARALLEL_SCAN_MIN else 1)
            scores = dots[0]
            # Largest dot products = smallest distances.
            top = top_k_largest(scores, min(k, len(rows)))
            return [
                Candidate(int(self._template_ids[rows[r]]), int(self._person_ids[rows[r]]), float(1.0 - scores[r] / QUANT_SCALE**2))
                for r in top
            ]

    def all_template_ids(self) -> np.ndarray:
        with self._lock:
            return self._template_ids[: self._size].copy()
