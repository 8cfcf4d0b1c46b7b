"""Publishes transitions to a Redis stream from its own thread, so the clock never waits for Redis.

The clock calls `publish`, which only puts into a bounded queue (full -> the item is dropped and
counted). The publisher thread takes batches, encodes them and appends each as one stream entry
(`XADD stream MAXLEN ~ n * t <bytes>`) through one pipeline round trip.

Outages: when Redis fails (down, restarting, stopped), the batch is kept, the outage is logged once,
and the thread backs off (0.1 s doubling to 2 s) and sends the same batch again by itself, so a short
outage loses nothing. Items arriving meanwhile wait in the queue; once it is full, new ones are dropped
and counted (`dropped`), so the buffer is bounded by `queue_size` plus the one held batch. Delivery is
at least once: a batch whose reply timed out may already be in the stream and is sent again; the
learner treats such a repeat as a gap between transitions, never as a successor. `published` counts
only XADDs Redis confirmed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rtrl.redis_client import connect_redis
from rtrl.transitions import STREAM_FIELD

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_SIZE = 64
# What the gateway passes as `batch_interval_s` in async interaction: the thread then wakes at most this
# often instead of once per transition, because each wake-up and its Redis round trip compete for the
# CPU with the Act calls in flight (docs/staggering-benchmark.md). The learner does not notice 50 ms;
# sequential interaction, whose Train waits for the transition, publishes at once.
BATCH_INTERVAL_S = 0.05
# ... and, given the clock's `quiet_after`, it wakes mid-frame, away from the decisions' round trips,
# which a write overlapping them slows down (docs/staggering-benchmark.md).
MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
_POLL_S = 0.1


class TransitionPublisher(Generic[T]):
    """Bounded queue in front of a Redis stream; `encode` turns a queued item into the entry's bytes."""

    def __init__(
        self,
        redis_url: str,
        stream: str,
        maxlen: int,
        queue_size: int,
        encode: Callable[[T], bytes],
        batch_size: int = BATCH_SIZE,
        batch_interval_s: float = 0.0,
        quiet_after: Callable[[float], float] | None = None,
    ) -> None:
        self.stream = stream
        self._maxlen = maxlen
        self._encode = encode
        self._batch_size = batch_size
        self._batch_interval_s = batch_interval_s
        # Given a time, the first moment at or after it when waking disturbs least (RealtimeClock.quiet_after).
        self._quiet_after = quiet_after
        self._queue: queue.Queue[T] = queue.Queue(maxsize=queue_size)
        # Our own loop backs off between attempts, so the client must fail fast instead of retrying.
        self._client = connect_redis(
            redis_url, socket_connect_timeout=0.5, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )
        self._stop = threading.Event()
        self._flush_deadline_s = 0.0
        self._thread: threading.Thread | None = None
        # The encoded batch on its way to Redis (or refused by it); only the publisher thread changes it.
        self._held: list[bytes] = []
        self._dropped_lock = threading.Lock()
        self.published = 0
        self.dropped = 0
        self.in_outage = False

    @property
    def queued(self) -> int:
        """Transitions waiting for Redis: the queue and the batch held for another attempt."""
        return self._queue.qsize() + len(self._held)

    def publish(self, item: T) -> bool:
        """Queues `item` without blocking; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self._count_dropped(1)
            return False

    def _count_dropped(self, count: int) -> None:
        with self._dropped_lock:
            self.dropped += count

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rtrl-publisher", daemon=True)
        self._thread.start()

    def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Publishes what is queued for at most `flush_timeout_s`, counts the rest as dropped, closes."""
        self._flush_deadline_s = time.monotonic() + flush_timeout_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        leftover = len(self._held)
        self._held = []
        while True:
            try:
                self._queue.get_nowait()
                leftover += 1
            except queue.Empty:
                break
        self._count_dropped(leftover)
        self._client.close()

    def _next_batch(self) -> list[T]:
        # A stop request ends the wait (flushing starts at once); a queue half full is not left to fill.
        if self._batch_interval_s and self._queue.qsize() < self._queue.maxsize // 2:
            wake_s = time.monotonic() + self._batch_interval_s
            if self._quiet_after is not None:
                wake_s = self._quiet_after(wake_s)
            self._stop.wait(max(wake_s - time.monotonic(), 0.0))
        try:
            batch = [self._queue.get(timeout=_POLL_S)]
        except queue.Empty:
            return []
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _flushing_done(self) -> bool:
        return self._stop.is_set() and (
            (self._queue.empty() and not self._held) or time.monotonic() >= self._flush_deadline_s
        )

    def _run(self) -> None:
        backoff_s = MIN_BACKOFF_S
        while not self._flushing_done():
            # The batch stays held (and counted in `queued`) until Redis confirms it; one Redis refused is
            # sent again before anything newer, so the stream keeps its order.
            if not self._held:
                self._held = self._encoded(self._next_batch())
                if not self._held:
                    continue
            # After a failure, a PING must answer before the batch goes out again: a batch written to a
            # stopped Redis waits in its socket and still lands once it resumes, so resending on every
            # attempt would add it once per attempt. This way a stall duplicates a batch at most once.
            if (not self.in_outage or self._answers_ping()) and self._send(self._held):
                self._held = []
                backoff_s = MIN_BACKOFF_S
                continue
            # Wait before the next attempt; a stop request ends the wait, and while stopping the wait
            # never runs past the flush deadline.
            if self._stop.is_set():
                time.sleep(min(backoff_s, max(self._flush_deadline_s - time.monotonic(), 0.0)))
            else:
                self._stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)

    def _encoded(self, batch: list[T]) -> list[bytes]:
        entries: list[bytes] = []
        for item in batch:
            try:
                entries.append(self._encode(item))
            except Exception:
                log.exception("could not encode a transition; dropping it")
                self._count_dropped(1)
        return entries

    def _answers_ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            self._client.connection_pool.disconnect()
            return False

    def _send(self, entries: list[bytes]) -> bool:
        """XADDs `entries` in one round trip; False (the caller keeps them for the next attempt) on failure."""
        try:
            pipe = self._client.pipeline(transaction=False)
            for data in entries:
                pipe.xadd(self.stream, {STREAM_FIELD: data}, maxlen=self._maxlen, approximate=True)
            ids = pipe.execute()
        except redis.RedisError as error:
            if not self.in_outage:
                self.in_outage = True
                log.warning(
                    "Redis refused transitions (%s); keeping up to %d queued and retrying in the background",
                    error,
                    self._queue.maxsize,
                )
            self._client.connection_pool.disconnect()
            return False
        if self.in_outage:
            self.in_outage = False
            log.info("Redis accepts transitions again")
        self.published += sum(1 for entry_id in ids if entry_id)
        return True
