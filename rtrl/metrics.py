"""Bounded windows of measurements summarised as percentiles (rtrl.v1.Distribution), and the cumulative
histograms behind the services' Prometheus metrics.

Adding a measurement takes no lock: it appends to a deque (atomic under the GIL), so the threads that
measure (the game clock, an answering replica) do as little as possible. Whoever reads does the rest
under the window's lock: the values added since the last read join the window and are counted into
the histogram's buckets. A window nobody reads does that every `FOLD_EVERY` adds (docs/metrics.md).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# np.percentile imports numpy.ma on first use, holding the GIL for about 0.1 s: here, at start, instead of
# during a running game clock's first GetStats.
import numpy.ma

from rtrl.v1 import common_pb2

# A window folds in the values added since it was last read at the latest after this many adds, so that
# one nobody reads keeps a bounded backlog (and its adding thread a short fold: tens of microseconds).
FOLD_EVERY = 256

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
        self._added: deque[float] = deque()
        """Added since the last fold: adds append on the right, `_fold` takes from the left."""
        self._values: deque[float] = deque(maxlen=size)
        """The newest folded values; read and written under the lock only."""
        self._lock = threading.Lock()
        self._set_buckets(buckets)

    def _set_buckets(self, buckets: Sequence[float]) -> None:
        self._bounds = np.array(sorted(float(bound) for bound in buckets))
        self._bucket_counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)
        self._count = 0
        self._sum = 0.0

    def set_buckets(self, buckets: Sequence[float]) -> None:
        """Counts into these buckets from now on; the histogram restarts from the values the window holds."""
        with self._lock:
            self._fold()
            self._set_buckets(buckets)
            self._count_values(list(self._values))

    def add(self, value: float) -> None:
        self._added.append(value)
        if len(self._added) >= FOLD_EVERY:
            with self._lock:
                self._fold()

    def _fold(self) -> None:
        """Moves the values added since the last fold into the window and the buckets; lock held."""
        added = self._added
        values = [added.popleft() for _ in range(len(added))]
        if values:
            self._values.extend(values)
            self._count_values(values)

    def _count_values(self, values: list[float]) -> None:
        # side="left": a value equal to a bound belongs to that bound's bucket (Prometheus' "le").
        buckets = np.searchsorted(self._bounds, values, side="left")
        self._bucket_counts += np.bincount(buckets, minlength=len(self._bucket_counts))
        self._count += len(values)
        self._sum += sum(values)

    def histogram(self) -> HistogramSnapshot:
        with self._lock:
            self._fold()
            cumulative = np.cumsum(self._bucket_counts).tolist()
            bounds = tuple(self._bounds.tolist())
            return HistogramSnapshot(bounds, tuple(cumulative), self._count, self._sum)

    def values(self) -> np.ndarray:
        with self._lock:
            self._fold()
            return np.array(self._values, dtype=np.float64)

    def __len__(self) -> int:
        with self._lock:
            self._fold()
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
    """Events per second over a sliding time window; adding takes no lock, reading drops what is too old."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self._adds_since_drop = 0
        """Only spaces the drops out (racy by design: two adds may count as one)."""

    def add(self, now_s: float, count: int = 1) -> None:
        self._events.append((now_s, count))
        self._adds_since_drop += 1
        if self._adds_since_drop >= FOLD_EVERY:
            self._adds_since_drop = 0
            with self._lock:
                self._drop_older_than(now_s - self.window_s)

    def _drop_older_than(self, oldest_s: float) -> None:
        """Lock held; adds only append, so the left end is this reader's alone."""
        events = self._events
        while events and events[0][0] < oldest_s:
            events.popleft()

    def rate(self, now_s: float) -> float:
        with self._lock:
            self._drop_older_than(now_s - self.window_s)
            events = list(self._events)
        if not events:
            return 0.0
        span = max(now_s - events[0][0], 1e-9)
        total = sum(count for _, count in events)
        return total / span if len(events) > 1 else 0.0
