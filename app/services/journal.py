"""Door decisions written off the response path: audit events and match counts, never lost.

An identify used to insert its audit event and count the person's match inside the request's
transaction, so every door answer waited for two writes and a commit (1.5 ms on SQLite, 2-7 ms
on Postgres, whose commit waits for the WAL flush). The journal takes both from the request
and writes them from one thread in batches: one transaction for every decision that arrived
since the last one.

Nothing is dropped:

- a batch leaves the queue only once its transaction has committed; a failed write (the
  database restarting, a lock timeout) is rolled back and retried with backoff, in order;
- the queue is bounded (``max_pending``): when the database is away so long that it fills,
  ``submit`` waits for room, so back-pressure reaches the doors instead of events being lost
  (a door request during an outage is answered 503 anyway, before it decides anything);
- :meth:`flush` waits until what was submitted before it is committed: reads of the audit
  log and of match counts flush first, so a replica reads its own writes;
- :meth:`close` (the server's shutdown) flushes; what still cannot be written when the
  database stays away past its deadline is logged, event by event, as an error.

What a crash (``kill -9``) takes with it is what was queued and not yet committed: the
decisions of the last few milliseconds, which ``facegate_journal_pending`` shows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.core.metrics import JOURNAL_PENDING, JOURNAL_RETRIES
from app.store import crud

log = logging.getLogger("facegate.journal")

MAX_BATCH = 500
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 2.0


@dataclass(frozen=True)
class Entry:
    """One decision to write: its audit event (stamped ``created_at``), and the person whose
    match it counts (if granted), at the event's time."""

    event: dict[str, Any]
    matched_person: int | None = None

    @property
    def at(self) -> datetime:
        at: datetime = self.event["created_at"]
        return at


class Journal:
    def __init__(self, sessions: Callable[[], Session], max_pending: int = 50_000, max_batch: int = MAX_BATCH):
        if max_pending < 1 or max_batch < 1:
            raise ValueError("max_pending and max_batch must be positive")
        self._sessions = sessions
        self._max_pending, self._max_batch = max_pending, max_batch
        self._queue: deque[Entry] = deque()
        self._cond = threading.Condition()
        self._submitted = 0  # entries ever submitted
        self._committed = 0  # entries ever committed (in submission order)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cond:
            return self._submitted - self._committed

    def submit(self, event: dict[str, Any], *, matched_person: int | None = None) -> None:
        """Queue one decision; returns at once unless ``max_pending`` decisions are still unwritten."""
        entry = Entry({**event, "created_at": event.get("created_at") or crud.utcnow()}, matched_person)
        with self._cond:
            if self._closing:
                raise RuntimeError("the journal is closed")
            while self._submitted - self._committed >= self._max_pending:
                self._cond.wait(0.5)
            self._queue.append(entry)
            self._submitted += 1
            JOURNAL_PENDING.set(self._submitted - self._committed)
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every decision submitted before this call is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while self._committed < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the writer; log (as errors) whatever the database would not take by ``timeout``."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0 if flushed else 0.1)
        with self._cond:
            left = list(self._queue)
        for entry in left:
            log.error("audit event not written (database unreachable at shutdown)", extra={"fields": _loggable(entry)})

    # -- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [self._queue[i] for i in range(min(len(self._queue), self._max_batch))]
            try:
                self._write(batch)
            except Exception as exc:
                JOURNAL_RETRIES.inc()
                if delay == RETRY_FIRST_S:
                    log.warning("audit journal write failed (%s); retrying", exc.__class__.__name__)
                with self._cond:
                    if self._closing:
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            with self._cond:
                for _ in batch:
                    self._queue.popleft()
                self._committed += len(batch)
                JOURNAL_PENDING.set(self._submitted - self._committed)
                self._cond.notify_all()

    def _write(self, batch: list[Entry]) -> None:
        matches: dict[int, tuple[int, datetime]] = {}
        for entry in batch:
            if entry.matched_person is not None:
                count, _ = matches.get(entry.matched_person, (0, entry.at))
                matches[entry.matched_person] = (count + 1, entry.at)
        with self._sessions() as session:
            crud.record_events(session, [entry.event for entry in batch])
            for person_id, (count, last) in matches.items():
                crud.record_match(session, person_id=person_id, count=count, at=last)
            session.commit()


def _loggable(entry: Entry) -> dict[str, Any]:
    fields = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in entry.event.items()}
    return {**fields, "matched_person": entry.matched_person}
