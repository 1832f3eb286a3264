"""Fault injection for the service tests: a database that cannot be reached, one that goes
away mid-traffic (a TCP relay that can be cut), and commits that take a while."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from app.services.runtime import Runtime


def unreachable_engine(rt: Runtime) -> Engine:
    if rt.settings.is_sqlite:
        return create_engine("sqlite:////nonexistent-facegate-dir/none.db")
    return create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test", pool_pre_ping=True, connect_args={"connect_timeout": 2})


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "2"


class TcpProxy:
    """A loopback TCP relay that can be cut and restored: a database outage without touching it."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and break every open one, as a crashed server would."""
        assert self._server is not None
        # shutdown() wakes the thread blocked in accept(); close() alone would not on Linux.
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class SlowCommitSession(Session):
    """Commits take a while, as they do on a loaded database."""

    def commit(self) -> None:
        time.sleep(0.3)
        super().commit()
