"""Tests of the DynamicBatcher and its cost model: grouping, batch limits, deadlines, errors, shutdown.

The batches run a recording function instead of a network, so every test can say exactly which items
were computed together. A `Gate` holds the worker inside a batch for as long as a test needs the
model to be busy; nothing here asserts how long anything took.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtrl.grpc_util import DeadlineTooShort, InvalidArgument, Unavailable
from rtrl.services.inference.batcher import BatchCostModel, DynamicBatcher

# Generous bound for something that should happen within milliseconds; never asserted on.
WAIT_BOUND_S = 10.0


class RecordingModel:
    """Stands in for a network: answers item x with 10 * x and records every batch it ran.

    While `gate` is closed, a batch that starts waits inside the "forward pass" until it opens.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: list[str] = []
        """The thread that ran each batch."""
        self.running = 0
        self.most_running = 0
        """The most batches ever inside the "forward pass" at once."""
        self._count = threading.Lock()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_with: Exception | None = None

    def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        with self._count:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            self.batches.append(list(items))
            self.threads.append(threading.current_thread().name)
            self.entered.set()
            assert self.gate.wait(WAIT_BOUND_S), "the test never opened the gate"
            if self.fail_with is not None:
                raise self.fail_with
            return [InvalidArgument(f"item {item} is negative") if item < 0 else 10 * item for item in items]
        finally:
            with self._count:
                self.running -= 1

    @property
    def computed(self) -> list[int]:
        return [item for batch in self.batches for item in batch]


@pytest.fixture
def model() -> RecordingModel:
    return RecordingModel()


@pytest.fixture
def make_batcher(model: RecordingModel) -> Iterator[Callable[..., DynamicBatcher[int, int]]]:
    batchers: list[DynamicBatcher[int, int]] = []

    def _make(**kwargs: object) -> DynamicBatcher[int, int]:
        kwargs.setdefault("max_batch_size", 8)
        kwargs.setdefault("max_wait_s", 0.001)
        batcher: DynamicBatcher[int, int] = DynamicBatcher(model, **kwargs)  # type: ignore[arg-type]
        batchers.append(batcher)
        return batcher

    yield _make
    model.gate.set()
    for batcher in batchers:
        batcher.close(WAIT_BOUND_S)


class Calls:
    """Submits items from threads and collects each one's result or error."""

    def __init__(self, batcher: DynamicBatcher[int, int]) -> None:
        self.batcher = batcher
        self.results: dict[int, int | BaseException] = {}
        self.threads: list[threading.Thread] = []

    def submit(self, item: int, deadline: float | None = None, key: object = None) -> None:
        def call() -> None:
            try:
                self.results[item] = self.batcher.submit(item, deadline, key)
            except BaseException as error:
                self.results[item] = error

        thread = threading.Thread(target=call)
        self.threads.append(thread)
        thread.start()

    def join(self) -> dict[int, int | BaseException]:
        for thread in self.threads:
            thread.join(WAIT_BOUND_S)
        return self.results


def wait_until(condition: Callable[[], bool]) -> None:
    give_up_at = time.monotonic() + WAIT_BOUND_S
    while not condition():
        assert time.monotonic() < give_up_at, "the condition never came true"
        time.sleep(0.001)


def hold_the_model(batcher: DynamicBatcher[int, int], model: RecordingModel, calls: Calls, item: int = 0) -> None:
    """Starts a batch of `item` that stays in its forward pass until `model.gate` is set."""
    model.gate.clear()
    calls.submit(item)
    assert model.entered.wait(WAIT_BOUND_S)


def estimate(**seconds_by_size: float) -> BatchCostModel:
    """A cost model that trusts one sample per size, given as n1=seconds, n2=seconds, ..."""
    cost = BatchCostModel(min_samples=1)
    for size, seconds in seconds_by_size.items():
        cost.record(int(size.removeprefix("n")), seconds)
    return cost


# -- the cost model ------------------------------------------------------------------------------


def test_cost_model_assumes_nothing_before_any_measurement() -> None:
    assert BatchCostModel().estimate_s(1) == 0.0
    assert BatchCostModel().estimate_s(8) == 0.0


def test_measured_size_is_estimated_by_a_high_percentile_of_its_recent_times() -> None:
    cost = BatchCostModel(window=10, percentile=90, min_samples=1)
    for seconds in [0.001] * 8 + [0.005, 0.050]:
        cost.record(1, seconds)

    assert cost.estimate_s(1) == 0.005
    for _ in range(10):
        cost.record(1, 0.002)
    assert cost.estimate_s(1) == 0.002, "measurements older than the window no longer count"


def test_one_measured_size_extends_flat_to_bigger_batches() -> None:
    cost = estimate(n1=0.020)

    assert cost.estimate_s(4) == pytest.approx(0.020)


def test_unmeasured_sizes_follow_the_line_through_the_measured_ones() -> None:
    cost = estimate(n1=0.010, n3=0.014)

    assert cost.estimate_s(2) == pytest.approx(0.012)
    assert cost.estimate_s(8) == pytest.approx(0.024)
    assert cost.estimate_s(3) == pytest.approx(0.014)


def test_a_bigger_batch_is_never_estimated_cheaper_than_a_smaller_measured_one() -> None:
    cost = estimate(n1=0.030, n2=0.010)

    assert cost.estimate_s(4) == pytest.approx(0.030)


def test_a_size_with_few_samples_follows_the_line_not_its_slow_first_pass() -> None:
    # The first pass at a new batch shape is slow; had it defined the size's estimate, the size
    # would never be admitted again and so never measured again.
    cost = BatchCostModel(min_samples=3)
    for _ in range(3):
        cost.record(1, 0.010)
    cost.record(2, 0.500)

    assert cost.estimate_s(2) == pytest.approx(0.010)
    cost.record(2, 0.011)
    cost.record(2, 0.011)
    assert cost.estimate_s(2) == pytest.approx(0.500), "three samples make it trusted, slow one included"


def test_old_samples_expire_so_a_size_measured_during_a_load_spike_is_retried() -> None:
    cost = BatchCostModel(min_samples=1, max_age_s=30.0)
    cost.record(2, 0.500, now=0.0)
    cost.record(1, 0.010, now=10.0)
    assert cost.estimate_s(2) == pytest.approx(0.500)

    cost.record(1, 0.010, now=40.0)

    assert cost.estimate_s(2) == pytest.approx(0.010)
    assert set(cost.measured_sizes()) == {1}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.floats(0.0001, 1.0), st.floats(0.0, 20.0)),
        min_size=1,
        max_size=60,
    )
)
def test_the_estimates_are_those_of_a_fresh_sort_of_each_sizes_recent_samples(
    records: list[tuple[int, float, float]],
) -> None:
    # The model keeps each size's samples sorted as they come and go; this recomputes every estimate
    # from scratch after each record: the last `window` samples of the size, none older than max_age_s.
    cost = BatchCostModel(window=5, percentile=90, min_samples=3, max_age_s=30.0)
    history: list[tuple[int, float, float]] = []
    now = 0.0
    for size, seconds, step in records:
        now += step
        cost.record(size, seconds, now=now)
        history.append((size, seconds, now))
        expected: dict[int, float] = {}
        for measured in {s for s, _, _ in history}:
            recent = [t for s, t, at in history if s == measured][-5:]
            times = [at for s, _, at in history if s == measured][-5:]
            recent = [t for t, at in zip(recent, times, strict=True) if at >= now - 30.0]
            if recent:
                expected[measured] = sorted(recent)[max(math.ceil(0.9 * len(recent)) - 1, 0)]
        assert cost.measured_sizes() == expected


# -- grouping ------------------------------------------------------------------------------------------


def test_calls_waiting_while_the_model_is_busy_share_the_next_forward_pass(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=8)
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)
    for item in range(1, 6):
        calls.submit(item)
    wait_until(lambda: batcher.counts().queued == 5)

    model.gate.set()
    results = calls.join()

    assert model.batches == [[0], [1, 2, 3, 4, 5]]
    assert results == {item: 10 * item for item in range(6)}
    assert batcher.counts().batches_run == 2
    assert list(batcher.batch_sizes.values()) == [1, 5]


def test_no_batch_is_larger_than_the_maximum(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=3)
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)
    for item in range(1, 8):
        calls.submit(item)
    wait_until(lambda: batcher.counts().queued == 7)

    model.gate.set()
    results = calls.join()

    assert [len(batch) for batch in model.batches] == [1, 3, 3, 1]
    assert sorted(model.computed) == list(range(8))
    assert results == {item: 10 * item for item in range(8)}


def test_calls_with_different_keys_never_share_a_batch(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher()
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)

    def queued_is(count: int) -> Callable[[], bool]:
        return lambda: batcher.counts().queued == count

    for item, key in [(1, "uint8"), (2, "uint8"), (3, "float32"), (4, "float32")]:
        calls.submit(item, key=key)
        wait_until(queued_is(item))

    model.gate.set()
    calls.join()

    assert model.batches == [[0], [1, 2], [3, 4]]


def test_a_lone_call_is_answered_after_waiting_for_company(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher(max_wait_s=0.005)

    assert batcher.submit(7, None) == 70
    assert model.batches == [[7]]


def test_a_call_due_at_once_on_an_idle_model_runs_on_its_own_thread_and_batches_still_run_one_at_a_time(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher(max_wait_s=0.0, name="the worker")
    assert batcher.submit(7, None) == 70
    assert model.threads == [threading.current_thread().name]

    # Held inside the first batch (on its caller's thread), the others queue and run together after it.
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls, item=1)
    for item in range(2, 5):
        calls.submit(item)
    wait_until(lambda: batcher.counts().queued == 3)
    model.gate.set()
    results = calls.join()

    assert model.batches == [[7], [1], [2, 3, 4]]
    assert results == {item: 10 * item for item in range(1, 5)}
    assert model.most_running == 1
    assert model.threads[1] != "the worker" and model.threads[2] == "the worker"


def test_close_while_a_caller_runs_its_own_batch_stops_the_worker_once_the_batch_ends(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher(max_wait_s=0.0, name="the closing worker")
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls, item=3)
    closing = threading.Thread(target=batcher.close, args=(WAIT_BOUND_S,))
    closing.start()
    wait_until(lambda: batcher.closed)

    model.gate.set()
    closing.join(WAIT_BOUND_S)

    assert calls.join() == {3: 30}
    assert not closing.is_alive()
    assert "the closing worker" not in [thread.name for thread in threading.enumerate()]


# -- deadlines ----------------------------------------------------------------------------------------


def test_call_that_cannot_finish_behind_the_busy_model_is_refused_on_arrival_and_never_computed(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher(cost=estimate(n1=0.200))
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)

    with pytest.raises(DeadlineTooShort, match=r"1 calls ahead.*longer deadline or add inference replicas"):
        batcher.submit(1, time.perf_counter() + 0.100)
    model.gate.set()
    calls.join()

    assert model.computed == [0]
    assert batcher.counts().refused_on_arrival == 1


def test_call_still_waiting_when_too_little_of_its_deadline_is_left_withdraws_and_is_never_computed(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    # The model is estimated at 10 ms but the running batch is held far longer, as a stalled
    # accelerator would be: the waiting call must give up rather than be answered late.
    batcher = make_batcher(cost=estimate(n1=0.010))
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)

    with pytest.raises(DeadlineTooShort, match=r"waited behind 1 calls ahead"):
        batcher.submit(1, time.perf_counter() + 0.100)
    model.gate.set()
    calls.join()

    assert model.computed == [0]
    assert batcher.counts().refused_while_waiting == 1
    assert batcher.counts().queued == 0


def test_newcomer_that_would_make_a_member_late_opens_the_next_batch_instead(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    # A batch of two is estimated to take far longer than the first member's deadline allows,
    # while either call alone fits: they must run one after the other, both in time.
    batcher = make_batcher(cost=estimate(n1=0.001, n2=5.0))
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)
    calls.submit(1, time.perf_counter() + 2.0)
    wait_until(lambda: batcher.counts().queued == 1)
    calls.submit(2)
    wait_until(lambda: batcher.counts().queued == 2)

    model.gate.set()
    results = calls.join()

    assert model.batches == [[0], [1], [2]]
    assert results == {0: 0, 1: 10, 2: 20}


def test_leader_stops_waiting_for_company_when_its_deadline_requires_it(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    # It may wait for company for far longer than its deadline; it must run in time instead. Had
    # it waited, it would have been refused with DeadlineTooShort. (The wide dispatch margin keeps
    # a slow wake-up on a loaded test machine from turning into a correct but unwanted refusal.)
    cost = estimate(n1=0.010)
    batcher = make_batcher(max_wait_s=WAIT_BOUND_S, cost=cost, dispatch_margin_s=0.100)

    assert batcher.submit(3, time.perf_counter() + 0.300) == 30
    assert batcher.counts().refused_while_waiting == 0


def test_members_that_became_late_while_queued_are_refused_tightest_first(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    # Both are admitted against a 1 ms estimate, then the running batch overruns by 200 ms and its
    # measured time raises the estimate: when the next batch starts, the member whose deadline no
    # longer allows it is refused (by the worker, or by itself if it notices first) and never
    # computed, and the other is answered.
    batcher = make_batcher(cost=estimate(n1=0.001))
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)
    now = time.perf_counter()
    calls.submit(1, now + 0.300)
    calls.submit(2, now + WAIT_BOUND_S)
    wait_until(lambda: batcher.counts().queued == 2)
    time.sleep(0.200)

    model.gate.set()
    results = calls.join()

    assert isinstance(results[1], DeadlineTooShort)
    assert results[2] == 20
    assert model.computed == [0, 2]


def test_idle_replica_that_refused_everything_remeasures_itself_and_answers_again(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    # One slow pass made the estimate exceed every deadline; since estimates only change when
    # batches run, only a probe can show that the model is fast again.
    batcher = make_batcher(cost=estimate(n1=0.060), probe_interval_s=0.01)
    with pytest.raises(DeadlineTooShort):
        batcher.submit(1, time.perf_counter() + 0.050)

    wait_until(lambda: batcher.counts().probes == 1)

    assert batcher.submit(2, time.perf_counter() + 0.050) == 20
    assert model.batches == [[1], [2]], "the probe ran the refused call's input once"
    assert (batcher.counts().batches_run, list(batcher.batch_sizes.values())) == (1, [1])


def test_call_without_deadline_waits_as_long_as_it_takes(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher(cost=estimate(n1=0.001))
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)
    calls.submit(1)
    wait_until(lambda: batcher.counts().queued == 1)
    time.sleep(0.05)  # far longer than the estimate; nothing is asserted on it

    model.gate.set()

    assert calls.join() == {0: 0, 1: 10}


# -- errors and shutdown ------------------------------------------------------------------------------


def test_an_item_error_reaches_only_its_caller(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher()
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)
    calls.submit(-1)
    calls.submit(2)
    wait_until(lambda: batcher.counts().queued == 2)

    model.gate.set()
    results = calls.join()

    assert model.batches[1] == [-1, 2]
    assert isinstance(results[-1], InvalidArgument)
    assert results[2] == 20


def test_a_failed_forward_pass_reaches_every_caller_of_its_batch_and_the_next_batch_is_served(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher()
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)
    calls.submit(1)
    calls.submit(2)
    wait_until(lambda: batcher.counts().queued == 2)
    model.fail_with = Unavailable("the accelerator is gone")

    model.gate.set()
    results = calls.join()
    model.fail_with = None

    assert all(isinstance(results[item], Unavailable) for item in (0, 1, 2))
    assert batcher.submit(5, None) == 50


def test_close_answers_the_queued_calls_and_refuses_new_ones(
    make_batcher: Callable[..., DynamicBatcher[int, int]], model: RecordingModel
) -> None:
    batcher = make_batcher()
    calls = Calls(batcher)
    hold_the_model(batcher, model, calls)
    calls.submit(1)
    wait_until(lambda: batcher.counts().queued == 1)
    closing = threading.Thread(target=batcher.close)
    closing.start()
    wait_until(lambda: batcher.closed)

    with pytest.raises(Unavailable, match="shutting down"):
        batcher.submit(2, None)
    model.gate.set()
    closing.join(WAIT_BOUND_S)

    assert calls.join() == {0: 0, 1: 10}
    assert not closing.is_alive()
