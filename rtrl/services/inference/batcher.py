"""Dynamic batching with deadlines: concurrent requests that wait for the model share one forward pass.

A `DynamicBatcher` owns the model's one worker thread. Callers `submit` an item with their deadline
and block until its result. Requests queue in batches (FIFO); only the last batch accepts newcomers,
and one joins it only when the batch's expected finish, with the newcomer in it, is before every
member's deadline (the newcomer's included); otherwise the newcomer opens a new batch behind it if
that one can finish in time, or is refused at once with DeadlineTooShort and nothing is computed.

The first request of a batch (its leader) waits at most `max_wait_s` for company, counted from when
the batch opened; the worker stops waiting earlier when the batch is full, when another batch queues
behind it, or when the tightest deadline in the batch leaves no more time than the batch needs. Just
before a batch runs, members that can no longer make it (the model was busy for longer than
expected) are refused, tightest deadline first; a request still waiting when too little of its
deadline is left withdraws itself the same way. A request is therefore never started when its
answer would come late, only answered late when a forward pass overran its estimate.

The expected finish comes from a `BatchCostModel`: the forward time of each batch size, measured.
Because estimates only change when batches run, an idle worker that refused a call re-measures the
model now and then with a probe (see `DynamicBatcher._probe_due_at`), so one slow pass cannot make
a replica refuse everything for ever.

Errors: DeadlineTooShort (refused, nothing computed) and Unavailable (the batcher was closed) come
from rtrl.grpc_util; whatever `run_batch` raises or returns as an exception reaches the caller as is.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from rtrl.grpc_util import DeadlineTooShort, Unavailable
from rtrl.metrics import Window

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# The worker stops waiting for company this much before the last moment a batch can start and still
# meet its tightest deadline: on a busy machine a thread wakes from a timed wait late by a few
# milliseconds (scheduler, GIL hand-over), and a batch that starts late is refused. Starting earlier
# only costs company the batch might have found in those last milliseconds.
DISPATCH_MARGIN_S = 0.002
# A high percentile of recent forward times per batch size: recent so that the estimate follows load
# changes within a few dozen batches, high so that refusals err on the side of answering in time.
COST_WINDOW = 64
COST_PERCENTILE = 90
# Ten samples before a size's own percentile is believed, so one slow first pass does not define it.
COST_MIN_SAMPLES = 10
COST_MAX_AGE_S = 30.0
# Least time between two probes of an idle replica that refused calls (see DynamicBatcher._probe_due_at);
# probes also take at most this share of the replica's time.
PROBE_MIN_INTERVAL_S = 2.0
PROBE_MAX_SHARE = 0.1
# How often a caller that waits for the worker checks that the worker thread is still alive.
WORKER_CHECK_S = 1.0
WORKER_DIED = "this inference replica's batcher stopped; send the call to another replica"


class BatchCostModel:
    """Expected seconds a forward pass over a batch of n takes, from measured forward passes.

    Each batch size keeps its recent measurements (the last `window`, none older than `max_age_s`).
    A size with at least `min_samples` of them is trusted and estimated by their 90th percentile.
    Any other size is estimated by a straight line cost(n) = a + b*n fitted by least squares to the
    trusted sizes' estimates (b >= 0), and never below the estimate of a smaller trusted size:
    batching amortises a fixed cost (Python, kernel launches, an accelerator's occupancy) over a
    per-row cost, and the line is the simplest model of that.

    Why a size's first few samples are not trusted on their own: the first forward pass at a new batch
    shape is slow (kernels are chosen per shape), and a size estimated too high is never admitted
    again, so it would never be measured again. Samples expire for the same reason: a size measured
    during a load spike is retried through the line once the spike's samples are gone. With one
    trusted size the slope is unknown and taken as 0, so a bigger batch is first admitted at the cost
    of a smaller one and then measured; that is what lets batches grow at all. Before any size is
    trusted the line is fitted to what was measured; before any measurement every estimate is 0.

    Not thread-safe: the batcher calls it under its own lock.
    """

    def __init__(
        self,
        window: int = COST_WINDOW,
        percentile: float = COST_PERCENTILE,
        min_samples: int = COST_MIN_SAMPLES,
        max_age_s: float = COST_MAX_AGE_S,
    ) -> None:
        self.window = window
        self.percentile = percentile
        self.min_samples = min_samples
        self.max_age_s = max_age_s
        self._samples: dict[int, deque[tuple[float, float]]] = {}
        """Per batch size: (perf_counter() when measured, seconds), oldest first."""
        self._sorted_s: dict[int, list[float]] = {}
        """Per batch size: the same seconds in ascending order, so that a percentile is one lookup."""
        self._line: tuple[float, float, dict[int, float]] | None = None
        """(intercept, slope, the trusted sizes' estimates), fitted when first needed after a change."""
        self._estimates_s: dict[int, float] = {}
        """Estimates given since the last change: a call asks for the same few several times."""

    def record(self, batch_size: int, seconds: float, now: float | None = None) -> None:
        # Once per batch, on the answer path: it only files the sample; estimates are read when asked for.
        now = time.perf_counter() if now is None else now
        samples = self._samples.setdefault(batch_size, deque())
        if len(samples) == self.window:
            self._forget_oldest(batch_size)
        samples.append((now, seconds))
        bisect.insort(self._sorted_s.setdefault(batch_size, []), seconds)
        for size, kept in list(self._samples.items()):
            while kept and kept[0][0] < now - self.max_age_s:
                self._forget_oldest(size)
        self._line = None
        self._estimates_s.clear()

    def _forget_oldest(self, batch_size: int) -> None:
        samples, ordered = self._samples[batch_size], self._sorted_s[batch_size]
        _, seconds = samples.popleft()
        del ordered[bisect.bisect_left(ordered, seconds)]
        if not samples:
            del self._samples[batch_size], self._sorted_s[batch_size]

    def _percentile_s(self, batch_size: int) -> float:
        ordered = self._sorted_s[batch_size]
        return ordered[max(math.ceil(self.percentile / 100 * len(ordered)) - 1, 0)]

    def _fit(self) -> tuple[float, float, dict[int, float]]:
        trusted = {
            size: self._percentile_s(size) for size, kept in self._samples.items() if len(kept) >= self.min_samples
        }
        points = trusted or self.measured_sizes()
        sizes, costs = list(points), list(points.values())
        mean_n, mean_cost = sum(sizes) / len(sizes), sum(costs) / len(costs)
        spread = sum((n - mean_n) ** 2 for n in sizes)
        slope = 0.0
        if spread > 0:
            slope = sum((n - mean_n) * (c - mean_cost) for n, c in zip(sizes, costs, strict=True)) / spread
        # Measurement noise can tilt the line downwards; a bigger batch is never assumed cheaper.
        slope = max(slope, 0.0)
        return max(mean_cost - slope * mean_n, 0.0), slope, trusted

    def estimate_s(self, batch_size: int) -> float:
        estimate = self._estimates_s.get(batch_size)
        if estimate is None:
            estimate = self._estimates_s[batch_size] = self._estimate_s(batch_size)
        return estimate

    def _estimate_s(self, batch_size: int) -> float:
        samples = self._samples.get(batch_size)
        if samples is not None and len(samples) >= self.min_samples:
            return self._percentile_s(batch_size)
        if not self._samples:
            return 0.0
        if self._line is None:
            self._line = self._fit()
        intercept_s, slope_s, trusted = self._line
        floor = max((cost for n, cost in trusted.items() if n < batch_size), default=0.0)
        return max(intercept_s + slope_s * batch_size, floor)

    def reset(self) -> None:
        """Forgets every measurement."""
        self._samples.clear()
        self._sorted_s.clear()
        self._line = None
        self._estimates_s.clear()

    def measured_sizes(self) -> dict[int, float]:
        """The 90th percentile of every batch size with recent measurements, in seconds."""
        return {size: self._percentile_s(size) for size in self._samples}


class _State(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False)
class _Request(Generic[ItemT, ResultT]):
    item: ItemT
    deadline: float
    """perf_counter() time by which the answer must be ready; inf for none."""
    state: _State = _State.WAITING
    result: ResultT | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Batch(Generic[ItemT, ResultT]):
    key: Hashable
    opened_at: float
    requests: list[_Request[ItemT, ResultT]] = field(default_factory=list)
    probe: bool = False
    """Run only to measure the model (see DynamicBatcher); its answer goes to no one."""

    def tightest_deadline(self) -> float:
        return min((request.deadline for request in self.requests), default=math.inf)


@dataclass(frozen=True)
class BatcherCounts:
    """What the batcher did since it started, read at one moment."""

    batches_run: int
    requests_batched: int
    refused_on_arrival: int
    refused_while_waiting: int
    probes: int
    """Forward passes run only to re-measure the model after it refused calls while idle."""
    queued: int
    """Requests waiting for a batch to start right now."""
    running: int
    """Requests in the forward pass running right now."""


class DynamicBatcher(Generic[ItemT, ResultT]):
    """Groups concurrent `submit` calls into calls of `run_batch`, never past a request's deadline.

    `run_batch(items)` runs on the batcher's one worker thread, one batch at a time, and returns one
    result per item in order, or an exception instance for an item that cannot be answered (it is
    raised to that caller alone); an exception it raises reaches every caller in the batch. Items
    only share a batch when their `key` is equal (e.g. same shape and dtype, so they can be stacked).
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[ItemT]], Sequence[ResultT | BaseException]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        cost: BatchCostModel | None = None,
        dispatch_margin_s: float = DISPATCH_MARGIN_S,
        probe_interval_s: float = PROBE_MIN_INTERVAL_S,
        name: str = "batcher",
    ) -> None:
        assert max_batch_size >= 1, f"max_batch_size must be at least 1, got {max_batch_size}"
        assert max_wait_s >= 0, f"max_wait_s must not be negative, got {max_wait_s}"
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.cost = cost or BatchCostModel()
        self.dispatch_margin_s = dispatch_margin_s
        self.batch_sizes = Window()
        """Size of every batch run (the most recent ones)."""
        self.forward_ms = Window()
        """Measured time of every batch run, in milliseconds."""

        # One condition guards everything below and wakes both the worker and the waiting callers.
        self._cond = threading.Condition()
        self._queue: deque[_Batch[ItemT, ResultT]] = deque()
        self._running: _Batch[ItemT, ResultT] | None = None
        self._running_expected_finish = 0.0
        self._closed = False
        self._batches_run = 0
        self._requests_batched = 0
        self._refused_on_arrival = 0
        self._refused_while_waiting = 0
        self._probes = 0
        self.probe_interval_s = probe_interval_s
        # The newest call refused on arrival, kept as the input of a probe, and when the model last ran.
        self._probe_input: tuple[ItemT, Hashable] | None = None
        self._last_run_ended = time.perf_counter()
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()

    # -- callers -------------------------------------------------------------------------------------

    def submit(self, item: ItemT, deadline: float | None, key: Hashable = None) -> ResultT:
        """Blocks until `item` was computed in some batch and returns its result.

        `deadline` is a time.perf_counter() value (None: no deadline). Raises DeadlineTooShort when the
        answer could not be ready by then (nothing is computed for it), Unavailable after `close()`.
        """
        with self._cond:
            if self._closed:
                raise Unavailable("this inference replica is shutting down; send the call to another replica")
            request: _Request[ItemT, ResultT] = _Request(item, math.inf if deadline is None else deadline)
            now = time.perf_counter()
            batch = self._admit(request, key, now)
            inline = self._due_now(batch, now) and self._start(batch, now)
            if not inline:
                self._cond.notify_all()
        if inline:
            # The model was idle and the batch due at once: this thread runs it, sparing the two thread
            # hand-overs to the worker and back (a zero-cost call's round trip, docs/transports.md). Its
            # own request is then done: answered, or refused by `_start`.
            self._finish(batch, self._run(batch), now, ran_by=request)
            return self._outcome(request)
        with self._cond:
            while request.state is _State.WAITING:
                give_up_at = request.deadline - self.cost.estimate_s(len(batch.requests))
                # An idle worker takes the head batch next and refuses its late members itself with the
                # same rule; giving up here too would only race it.
                next_to_run = self._running is None and self._queue[0] is batch
                now = time.perf_counter()
                if next_to_run:
                    if not self._cond.wait(WORKER_CHECK_S) and not self._worker.is_alive():
                        raise Unavailable(WORKER_DIED)
                    continue
                if now >= give_up_at:
                    ahead, size = self._requests_ahead_of(batch), len(batch.requests)
                    self._withdraw(batch, request)
                    self._refused_while_waiting += 1
                    self._cond.notify_all()
                    raise DeadlineTooShort(
                        f"the call waited behind {ahead} calls ahead of it until too little of its deadline "
                        f"was left for its batch of {size} (about {self.cost.estimate_s(size) * 1e3:.2f} ms); "
                        "call Act with a longer deadline or add inference replicas"
                    )
                self._cond.wait(None if math.isinf(give_up_at) else give_up_at - now)
            # Running: the forward pass has started and the worker delivers its outcome, an exception
            # included. The timed wait only guards against the worker itself having died.
            while request.state is not _State.DONE:
                if not self._cond.wait(WORKER_CHECK_S) and not self._worker.is_alive():
                    raise Unavailable(WORKER_DIED)
        return self._outcome(request)

    @staticmethod
    def _outcome(request: _Request[ItemT, ResultT]) -> ResultT:
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]  # set whenever error is None

    def _admit(self, request: _Request[ItemT, ResultT], key: Hashable, now: float) -> _Batch[ItemT, ResultT]:
        """Puts `request` in the last batch or a new one, or refuses it; called under the lock."""
        estimate = self.cost.estimate_s
        # When the model frees up: the running batch's expected end, then each queued batch in turn.
        start = max(now, self._running_expected_finish) if self._running is not None else now
        for queued in list(self._queue)[:-1]:
            start += estimate(len(queued.requests))
        if self._queue:
            last = self._queue[-1]
            size = len(last.requests)
            if last.key == key and size < self.max_batch_size:
                finish = start + estimate(size + 1)
                if finish <= min(last.tightest_deadline(), request.deadline):
                    last.requests.append(request)
                    return last
            # Full, of another key, or a member (the newcomer included) would be late in a bigger
            # batch: the newcomer opens the next batch, and this one then runs as soon as it can.
            start += estimate(size)
        finish = start + estimate(1)
        if finish > request.deadline:
            self._refuse_on_arrival(request, key, finish - now)
        batch: _Batch[ItemT, ResultT] = _Batch(key, now, [request])
        self._queue.append(batch)
        return batch

    def _refuse_on_arrival(self, request: _Request[ItemT, ResultT], key: Hashable, needed_s: float) -> None:
        self._refused_on_arrival += 1
        self._probe_input = (request.item, key)
        self._cond.notify_all()  # an idle worker now has a probe to schedule
        remaining_s = request.deadline - time.perf_counter()
        running = len(self._running.requests) if self._running is not None else 0
        ahead = running + sum(len(batch.requests) for batch in self._queue)
        raise DeadlineTooShort(
            f"the call had {remaining_s * 1e3:.2f} ms left but an answer needs about {needed_s * 1e3:.2f} ms "
            f"({ahead} calls ahead of it, {self.cost.estimate_s(1) * 1e3:.2f} ms per forward pass of one); "
            "call Act with a longer deadline or add inference replicas"
        )

    def _withdraw(self, batch: _Batch[ItemT, ResultT], request: _Request[ItemT, ResultT]) -> None:
        batch.requests.remove(request)
        request.state = _State.DONE
        if not batch.requests:
            self._queue.remove(batch)

    def _requests_ahead_of(self, batch: _Batch[ItemT, ResultT]) -> int:
        ahead = len(self._running.requests) if self._running is not None else 0
        for queued in self._queue:
            if queued is batch:
                break
            ahead += len(queued.requests)
        return ahead

    # -- the worker ----------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                started = time.perf_counter()
                if not self._start(batch, started):
                    continue
            self._finish(batch, self._run(batch), started)

    def _due_now(self, batch: _Batch[ItemT, ResultT], now: float) -> bool:
        """`batch` is the only one queued, the model is idle, and the worker would run it now; lock held."""
        if self._running is not None or len(self._queue) != 1 or self._queue[0] is not batch:
            return False
        size = len(batch.requests)
        run_at = min(
            batch.opened_at + self.max_wait_s,
            batch.tightest_deadline() - self.cost.estimate_s(size) - self.dispatch_margin_s,
        )
        return size >= self.max_batch_size or now >= run_at

    def _start(self, batch: _Batch[ItemT, ResultT], now: float) -> bool:
        """Takes `batch` (the head of the queue, or already taken off it) to run now, after refusing the
        members it would answer late; False when none is left. Lock held."""
        if self._queue and self._queue[0] is batch:
            self._queue.popleft()
        if self._refuse_late_members(batch, now):
            self._cond.notify_all()
        if not batch.requests:
            return False
        for request in batch.requests:
            request.state = _State.RUNNING
        self._running = batch
        self._running_expected_finish = now + self.cost.estimate_s(len(batch.requests))
        return True

    def _finish(
        self,
        batch: _Batch[ItemT, ResultT],
        outcomes: Sequence[ResultT | BaseException],
        started: float,
        ran_by: _Request[ItemT, ResultT] | None = None,
    ) -> None:
        """Records the run and hands each member its outcome; the model is free again. `ran_by`: the request
        whose caller ran the batch itself, which needs no waking."""
        elapsed_s = time.perf_counter() - started
        with self._cond:
            self._running = None
            self._last_run_ended = time.perf_counter()
            if batch.probe:
                self._probes += 1
                # The measurements that made it refuse everything are replaced by the newest one.
                self.cost.reset()
                self.cost.record(1, elapsed_s)
            else:
                self._deliver(batch, outcomes, elapsed_s)
            # Nobody else to wake after a lone caller's own batch while the batcher runs: the worker has
            # nothing queued to take and no probe to schedule, so it sleeps on (waking it would cost every
            # such call a thread switch). Once closed, the worker must see that the model is free and stop.
            others = any(request is not ran_by for request in batch.requests)
            if others or self._queue or self._probe_input is not None or self._closed:
                self._cond.notify_all()

    def _deliver(
        self, batch: _Batch[ItemT, ResultT], outcomes: Sequence[ResultT | BaseException], elapsed_s: float
    ) -> None:
        size = len(batch.requests)
        self.cost.record(size, elapsed_s)
        self.batch_sizes.add(size)
        self.forward_ms.add(elapsed_s * 1000.0)
        self._batches_run += 1
        self._requests_batched += size
        for request, outcome in zip(batch.requests, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                request.error = outcome
            else:
                request.result = outcome
            request.state = _State.DONE

    def _next_batch(self) -> _Batch[ItemT, ResultT] | None:
        """Waits until the model is free and the head batch should run, and takes it off the queue; None once
        closed and drained."""
        while True:
            if self._running is not None:
                # A caller runs a batch itself (see `submit`); one batch at a time.
                self._cond.wait()
                continue
            if not self._queue:
                if self._closed:
                    return None
                probe_at = self._probe_due_at()
                now = time.perf_counter()
                if probe_at is not None and now >= probe_at:
                    return self._take_probe(now)
                self._cond.wait(None if probe_at is None else probe_at - now)
                continue
            head = self._queue[0]
            size = len(head.requests)
            now = time.perf_counter()
            run_at = min(
                head.opened_at + self.max_wait_s,
                head.tightest_deadline() - self.cost.estimate_s(size) - self.dispatch_margin_s,
            )
            # Only the last batch takes newcomers, so a batch with another behind it has no company to wait for.
            if size >= self.max_batch_size or len(self._queue) > 1 or self._closed or now >= run_at:
                self._queue.popleft()
                return head
            self._cond.wait(run_at - now)

    def _probe_due_at(self) -> float | None:
        """When an idle worker should re-measure the model: only after a call was refused on arrival.

        Estimates only change when batches run, so a replica whose estimate grew past every caller's
        deadline (a load spike, one slow pass) would refuse everything for ever. Once idle for a while
        after such a refusal, it runs the last refused call's input once, result discarded, and
        starts its measurements afresh from that pass. Probes at most every `probe_interval_s`, and
        at most 10% of the time, so a model that really is too slow wastes little.
        """
        if self._probe_input is None:
            return None
        return self._last_run_ended + max(self.probe_interval_s, self.cost.estimate_s(1) / PROBE_MAX_SHARE)

    def _take_probe(self, now: float) -> _Batch[ItemT, ResultT]:
        assert self._probe_input is not None
        item, key = self._probe_input
        self._probe_input = None
        return _Batch(key, now, [_Request(item, math.inf)], probe=True)

    def _refuse_late_members(self, batch: _Batch[ItemT, ResultT], now: float) -> int:
        """Refuses, tightest deadline first, the members this batch would answer late; returns how many."""
        refused = 0
        while batch.requests:
            tightest = min(batch.requests, key=lambda request: request.deadline)
            expected_finish = now + self.cost.estimate_s(len(batch.requests))
            if tightest.deadline >= expected_finish:
                break
            batch.requests.remove(tightest)
            tightest.error = DeadlineTooShort(
                f"the call's deadline passed {max(expected_finish - tightest.deadline, 0.0) * 1e3:.2f} ms before "
                "its batch could finish, because the calls ahead of it took longer than expected; call Act "
                "with a longer deadline or add inference replicas"
            )
            tightest.state = _State.DONE
            self._refused_while_waiting += 1
            refused += 1
        return refused

    def _run(self, batch: _Batch[ItemT, ResultT]) -> Sequence[ResultT | BaseException]:
        items = [request.item for request in batch.requests]
        try:
            outcomes = self.run_batch(items)
        except Exception as error:
            # Delivered to every caller of the batch; the worker must survive to serve the next one.
            return [error] * len(items)
        if len(outcomes) != len(items):
            mismatch = RuntimeError(f"run_batch returned {len(outcomes)} results for {len(items)} items")
            log.error("%s", mismatch)
            return [mismatch] * len(items)
        return outcomes

    # -- lifecycle and status --------------------------------------------------------------------------

    def close(self, timeout_s: float | None = None) -> None:
        """Refuses new requests, lets the queued ones run, and stops the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout_s)

    @property
    def closed(self) -> bool:
        return self._closed

    def expected_forward_s(self, batch_size: int = 1) -> float:
        with self._cond:
            return self.cost.estimate_s(batch_size)

    def counts(self) -> BatcherCounts:
        with self._cond:
            return BatcherCounts(
                batches_run=self._batches_run,
                requests_batched=self._requests_batched,
                refused_on_arrival=self._refused_on_arrival,
                refused_while_waiting=self._refused_while_waiting,
                probes=self._probes,
                queued=sum(len(batch.requests) for batch in self._queue),
                running=len(self._running.requests) if self._running is not None else 0,
            )
