"""The journal: door decisions written off the response path, in order, and never lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.services.journal import Journal
from app.services.runtime import Runtime
from app.store import crud
from app.store.models import Event, Person


def failing(rt: Runtime, failures: int) -> tuple[Callable[[], Session], list[int]]:
    """A session factory whose first ``failures`` sessions cannot reach the database."""
    calls = [0]

    def sessions() -> Session:
        calls[0] += 1
        if calls[0] <= failures:
            raise OperationalError("connect", {}, Exception("database restarting"))
        return rt.sessions()

    return sessions, calls


def reasons(rt: Runtime) -> list[str | None]:
    with rt.sessions() as session:
        return list(session.execute(select(Event.reason).where(Event.kind == "journal-test").order_by(Event.id)).scalars())


def test_a_failed_write_is_retried_and_nothing_is_lost(clean_runtime: Runtime) -> None:
    sessions, calls = failing(clean_runtime, failures=3)
    journal = Journal(sessions)
    for i in range(20):
        journal.submit({"kind": "journal-test", "reason": f"r{i}"})
    assert journal.flush(timeout=20)
    assert calls[0] >= 4  # three refused, then written
    assert reasons(clean_runtime) == [f"r{i}" for i in range(20)]  # all, once each, in order
    assert journal.pending == 0
    journal.close()


def test_grants_count_as_matches_in_one_update(clean_runtime: Runtime) -> None:
    with clean_runtime.sessions() as session:
        person = crud.create_person(session, name="ada", metadata={}, sample_jpeg=None)
        session.commit()
        person_id = person.id
    journal = Journal(clean_runtime.sessions)
    for _ in range(3):
        journal.submit({"kind": "journal-test", "decision": "granted"}, matched_person=person_id)
    journal.submit({"kind": "journal-test", "decision": "denied"})
    assert journal.flush()
    with clean_runtime.sessions() as session:
        row = session.get(Person, person_id)
        assert row is not None and row.search_count == 3 and row.last_matched_at is not None
    journal.close()


def test_a_full_queue_makes_the_door_wait_instead_of_dropping(clean_runtime: Runtime) -> None:
    gate = threading.Event()

    def slow_sessions() -> Session:
        gate.wait(10)
        return clean_runtime.sessions()

    journal = Journal(slow_sessions, max_pending=2)
    journal.submit({"kind": "journal-test", "reason": "a"})
    journal.submit({"kind": "journal-test", "reason": "b"})
    third = threading.Thread(target=journal.submit, args=({"kind": "journal-test", "reason": "c"},))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # waiting for room, not dropped
    gate.set()
    third.join(10)
    assert not third.is_alive()
    assert journal.flush()
    assert reasons(clean_runtime) == ["a", "b", "c"]
    journal.close()


def test_close_logs_what_the_database_would_not_take(clean_runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    sessions, _ = failing(clean_runtime, failures=10**6)
    journal = Journal(sessions)
    journal.submit({"kind": "journal-test", "reason": "kept in the log"}, matched_person=7)
    with caplog.at_level(logging.ERROR, logger="facegate.journal"):
        journal.close(timeout=0.3)
    lost = [r for r in caplog.records if "not written" in r.getMessage()]
    assert len(lost) == 1 and lost[0].fields["reason"] == "kept in the log" and lost[0].fields["matched_person"] == 7  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        journal.submit({"kind": "journal-test"})
