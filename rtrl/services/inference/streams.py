"""The replica's open ActStreams, on gRPC or on the act socket: how many there may be, and their end.

Each open stream holds a thread for its whole life (a gRPC worker, or the act socket's thread for its
connection), so at most `limit` are open at once, and `stop` ends them: an idle one at once, one
computing an answer after sending it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

import grpc


class StreamRefused(Exception):
    """No place for another stream (RESOURCE_EXHAUSTED), or the replica is stopping (UNAVAILABLE)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OpenStreams:
    """The open streams, each known by a key (its gRPC context, or its connection) and whether it is busy."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._busy: dict[Hashable, bool] = {}
        """Each open stream, and whether it is computing an answer."""
        self._cancel: dict[Hashable, Callable[[], None]] = {}
        self._stopping = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._busy)

    @contextmanager
    def open(self, key: Hashable, cancel: Callable[[], None]) -> Iterator[None]:
        """Holds one of the `limit` places for the stream `key`; raises StreamRefused when none is left.

        `cancel` ends the stream while it waits for a request (`stop` calls it)."""
        with self._lock:
            if self._stopping:
                raise StreamRefused(grpc.StatusCode.UNAVAILABLE, "this replica is shutting down; use another replica")
            if len(self._busy) >= self.limit:
                raise StreamRefused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this replica already holds {self.limit} open ActStreams, one per worker thread it can "
                    "spare; call Act instead, or raise RTRL_INFERENCE_WORKERS",
                )
            self._busy[key] = False
            self._cancel[key] = cancel
        try:
            yield
        finally:
            with self._lock:
                self._busy.pop(key, None)
                self._cancel.pop(key, None)

    def busy(self, key: Hashable) -> None:
        """The stream has a request to answer: `stop` lets it send that answer."""
        with self._lock:
            self._busy[key] = True

    def idle(self, key: Hashable) -> bool:
        """The stream's answer went out; False when the replica is stopping and the stream must end."""
        with self._lock:
            self._busy[key] = False
            return not self._stopping

    def stop(self) -> None:
        """Refuses new streams and ends the open ones (those waiting for a request are cancelled now)."""
        with self._lock:
            self._stopping = True
            idle = [self._cancel[key] for key, busy in self._busy.items() if not busy]
        for cancel in idle:
            cancel()
