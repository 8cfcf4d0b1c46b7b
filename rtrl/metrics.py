"""Bounded windows of measurements summarised as percentiles (rtrl.v1.Distribution), and the cumulative
histograms behind the services' Prometheus metrics.

A `Window` keeps the newest measurements for percentiles and, in the same locked `add`, counts every
measurement since start into fixed buckets: a bisect and three additions, cheap enough for the clock
thread, so a scrape never makes the measuring thread do anything (docs/metrics.md).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# np.percentile imports numpy.ma on first use, holding the GIL for about 0.1 s: here, at start, instead of
# during a running game clock's first GetStats.
import numpy.ma

from rtrl.v1 import common_pb2

# Upper bounds for measurements in milliseconds (and any quantity without buckets of its own): 0.1 ms to 10 s.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0,
    150.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
)  # fmt: skip


@dataclass(frozen=True)
class HistogramSnapshot:
    """Every measurement since start (or since `set_buckets`) counted into buckets, Prometheus style."""

    upper_bounds: tuple[float, ...]
    """Finite upper bounds, ascending; the implicit last bucket is +Inf."""
    cumulative_counts: tuple[int, ...]
    """Measurements <= each bound, then the total (the +Inf bucket): len(upper_bounds) + 1 numbers."""
    count: int
    total: float
    """Sum of the measurements."""


class Window:
    """The most recent `size` measurements of one quantity, plus a histogram of all of them; thread-safe."""

    def __init__(self, size: int = 2048, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._set_buckets(buckets)

    def _set_buckets(self, buckets: Sequence[float]) -> None:
        self._bounds = tuple(sorted(float(bound) for bound in buckets))
        self._bucket_counts = [0] * (len(self._bounds) + 1)
        self._count = 0
        self._sum = 0.0

    def set_buckets(self, buckets: Sequence[float]) -> None:
        """Counts into these buckets from now on; the histogram restarts from the values the window holds."""
        with self._lock:
            held = list(self._values)
            self._set_buckets(buckets)
            for value in held:
                self._count_value(value)

    def _count_value(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (Prometheus' "le").
        self._bucket_counts[bisect.bisect_left(self._bounds, value)] += 1
        self._count += 1
        self._sum += value

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)
            self._count_value(value)

    def histogram(self) -> HistogramSnapshot:
        with self._lock:
            bounds, counts, count, total = self._bounds, list(self._bucket_counts), self._count, self._sum
        cumulative = np.cumsum(counts).tolist()
        return HistogramSnapshot(bounds, tuple(int(c) for c in cumulative), count, total)

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
