"""Bounded windows of measurements summarised as percentiles (rtrl.v1.Distribution)."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from rtrl.v1 import common_pb2


class Window:
    """The most recent `size` measurements of one quantity; safe to add from any thread."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)

    def values(self) -> np.ndarray:
        with self._lock:
            return np.fromiter(self._values, dtype=np.float64, count=len(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def summary(self) -> common_pb2.Distribution:
        values = self.values()
        if values.size == 0:
            return common_pb2.Distribution()
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return common_pb2.Distribution(
            count=int(values.size),
            mean=float(values.mean()),
            p50=float(p50),
            p90=float(p90),
            p99=float(p99),
            max=float(values.max()),
        )


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, now_s: float, count: int = 1) -> None:
        with self._lock:
            self._events.append((now_s, count))
            while self._events and self._events[0][0] < now_s - self.window_s:
                self._events.popleft()

    def rate(self, now_s: float) -> float:
        with self._lock:
            while self._events and self._events[0][0] < now_s - self.window_s:
                self._events.popleft()
            if not self._events:
                return 0.0
            span = max(now_s - self._events[0][0], 1e-9)
            total = sum(count for _, count in self._events)
            return total / span if len(self._events) > 1 else 0.0
