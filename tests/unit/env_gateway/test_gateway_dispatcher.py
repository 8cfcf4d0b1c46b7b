"""The realtime dispatcher: newest sample wins, one preprocessing per sample, replies into the mailbox."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from gateway_fakes import FakeTime, wait_for

from rtrl.services.env_gateway.clock import ObservationSample
from rtrl.services.env_gateway.dispatcher import CallOutcome, Dispatcher, OnCallDone
from rtrl.services.env_gateway.mailbox import ARRIVAL_MIN, ActionMailbox, ActionReply
from rtrl.services.env_gateway.preprocess import Preprocessor, SampledFrame
from rtrl.services.env_gateway.scheduler import (
    HEDGE_AFTER_MEANS,
    WARMUP_REPLIES,
    MaxTimeScheduler,
    NextIdleScheduler,
    ReplicaView,
)


def sample(
    frame_index: int, episode: int = 0, deadline_s: float = 100.08, produced_s: float = 100.0
) -> ObservationSample:
    frames = tuple(SampledFrame(frame_index, np.full((20, 30, 3), frame_index, np.uint8)) for _ in range(2))
    return ObservationSample(episode, 0, frame_index, frames, produced_s, 0, deadline_s=deadline_s)


def settle(mailbox: ActionMailbox, staleness: int, episode: int) -> None:
    """Gives the mailbox a usual staleness D (one reply a step, each `staleness` frames old), then starts
    `episode` at frame 0."""
    for frame in range(1, ARRIVAL_MIN + 1):
        mailbox.advance(frame - 1)
        mailbox.offer(0, frame - staleness, 100.0, ActionReply(0, 0, 0.0))
        assert mailbox.take(frame) is not None
    assert mailbox.usual_staleness() == staleness
    mailbox.begin_episode(episode, 0)


class FakeReplicas:
    """A ReplicaLink that records sends and keeps their callbacks; every address is idle unless busy."""

    def __init__(self, addresses: tuple[str, ...] = ("a", "b"), accept: bool = True) -> None:
        self.addresses = addresses
        self.accept = accept
        self.busy: set[str] = set()
        self.prepared: list[tuple[np.ndarray, int]] = []
        self.sends: list[tuple[str, Any, float, OnCallDone]] = []

    def views(self, now_s: float) -> list[ReplicaView]:
        return [ReplicaView(a, int(a in self.busy), False) for a in self.addresses]

    def prepare(self, observation: np.ndarray, frame_index: int) -> Any:
        self.prepared.append((observation, frame_index))
        return ("request", frame_index)

    def send(self, address: str, request: Any, deadline_s: float, on_done: OnCallDone) -> bool:
        if not self.accept:
            return False
        self.busy.add(address)
        self.sends.append((address, request, deadline_s, on_done))
        return True

    def finish(self, index: int, reply: ActionReply | None, round_trip_s: float = 0.01) -> None:
        address, _, _, on_done = self.sends[index]
        self.busy.discard(address)
        on_done(CallOutcome(address, reply, round_trip_s))


def make(
    replicas: FakeReplicas, scheduler: Any = None, now: FakeTime | None = None
) -> tuple[Dispatcher, ActionMailbox]:
    now = now or FakeTime(100.002)
    mailbox = ActionMailbox(5, now)
    mailbox.begin_episode(0, 0)
    return Dispatcher(Preprocessor(10, 8), mailbox, replicas, scheduler, now_s=now), mailbox


def test_next_idle_sends_each_new_sample_once_with_its_deadline() -> None:
    replicas = FakeReplicas()
    dispatcher, _ = make(replicas)
    dispatcher.submit(sample(4))
    dispatcher.step()
    dispatcher.step()  # nothing new: nothing more is sent
    observation, _frame_index = replicas.prepared[0]
    assert observation.shape == (2, 8, 10) and observation.dtype == np.uint8
    assert [(s[0], s[1], s[2]) for s in replicas.sends] == [("a", ("request", 4), 100.08)]
    assert dispatcher.requests_sent == 1


def test_reply_goes_to_the_mailbox_and_failure_is_counted() -> None:
    replicas = FakeReplicas()
    dispatcher, mailbox = make(replicas)
    dispatcher.submit(sample(0))
    dispatcher.step()
    dispatcher.submit(sample(1))
    dispatcher.step()
    replicas.finish(0, ActionReply(2, 4, -0.3))
    replicas.finish(1, None)
    taken = mailbox.take(2)
    assert taken is not None and taken.reply.action == 2
    assert dispatcher.requests_failed == 1


def test_sample_replaced_before_it_was_sent_counts_as_not_sent() -> None:
    replicas = FakeReplicas(addresses=())
    dispatcher, _ = make(replicas)
    dispatcher.submit(sample(0))
    dispatcher.step()  # no replica: not sent
    dispatcher.submit(sample(4))  # sample 0 waits in the backlog
    dispatcher.submit(sample(8))  # sample 4 never reached the dispatcher thread and replaces 0 there
    assert (dispatcher.requests_sent, dispatcher.requests_not_sent) == (0, 1)
    dispatcher.submit(sample(12))
    assert (dispatcher.requests_sent, dispatcher.requests_not_sent) == (0, 2)


def test_a_new_episode_empties_the_backlog() -> None:
    replicas = FakeReplicas(addresses=())
    dispatcher, _ = make(replicas)
    dispatcher.submit(sample(0))
    dispatcher.submit(sample(1))  # 0 waits in the backlog
    dispatcher.submit(sample(0, episode=1))  # 1 is of the old episode: not kept, and 0 leaves with it
    assert dispatcher.requests_not_sent == 2
    dispatcher.submit(sample(1, episode=1))  # 0 of episode 1 waits: nothing more is counted
    assert dispatcher.requests_not_sent == 2


def test_staggered_schedulers_keep_no_backlog() -> None:
    replicas = FakeReplicas(addresses=())
    dispatcher, _ = make(replicas, MaxTimeScheduler())
    for frame in (0, 4, 8):
        dispatcher.submit(sample(frame))
    assert dispatcher.requests_not_sent == 2


def test_a_sample_replaced_while_every_replica_was_busy_goes_to_the_next_one_to_finish() -> None:
    replicas = FakeReplicas(("a", "b"))
    dispatcher, mailbox = make(replicas)
    settle(mailbox, staleness=5, episode=1)  # D = 5 frames: sample 2's own step is 83 ms after it
    for frame in (0, 1, 2, 3):
        dispatcher.submit(sample(frame, episode=1))
        dispatcher.step()
    # 0 -> a, 1 -> b; 2 found both busy and was replaced by 3, which waits too.
    assert [s[1][1] for s in replicas.sends] == [0, 1]
    replicas.finish(0, ActionReply(1, 0, 0.0))
    dispatcher.step()  # a is idle: the newest (3) first; the backlog (2) waits for another replica
    assert [(s[0], s[1][1]) for s in replicas.sends] == [("a", 0), ("b", 1), ("a", 3)]
    replicas.finish(1, ActionReply(1, 0, 0.0))
    dispatcher.step()
    assert [(s[0], s[1][1]) for s in replicas.sends] == [("a", 0), ("b", 1), ("a", 3), ("b", 2)]
    assert (dispatcher.requests_sent, dispatcher.requests_not_sent) == (4, 0)
    replicas.finish(3, ActionReply(7, 0, 0.0))  # sample 2's reply
    taken = mailbox.take(4)
    assert taken is not None and (taken.obs_frame, taken.reply.action) == (2, 7)


@pytest.mark.parametrize(
    ("staleness", "late_sample"),
    [
        # Its deadline has passed when a replica is free.
        (5, sample(2, episode=1, deadline_s=100.001)),
        # Produced 40 ms before the time (100.002): its own step (D = 2 frames, 33 ms on) has begun, so
        # a reply could only be superseded by the newer sample's.
        (2, sample(2, episode=1, produced_s=99.962)),
    ],
    ids=["past its deadline", "after its own step"],
)
def test_a_backlog_sample_whose_reply_could_not_serve_is_counted_not_sent(
    staleness: int, late_sample: ObservationSample
) -> None:
    replicas = FakeReplicas(("a", "b"))
    dispatcher, mailbox = make(replicas)
    settle(mailbox, staleness=staleness, episode=1)
    for frame in (0, 1):
        dispatcher.submit(sample(frame, episode=1))
        dispatcher.step()
    dispatcher.submit(late_sample)
    dispatcher.submit(sample(3, episode=1))
    for call in (0, 1):
        replicas.finish(call, ActionReply(1, 0, 0.0))
        dispatcher.step()
    assert [s[1][1] for s in replicas.sends] == [0, 1, 3]
    assert dispatcher.requests_not_sent == 1


def test_sample_past_its_deadline_is_not_sent() -> None:
    replicas = FakeReplicas(accept=False)
    dispatcher, _ = make(replicas)
    dispatcher.submit(sample(0))
    dispatcher.step()
    assert dispatcher.requests_sent == 0


def test_staggered_resends_the_newest_sample_prepared_once() -> None:
    now = FakeTime(100.0)
    replicas = FakeReplicas(("a", "b", "c"))
    scheduler = MaxTimeScheduler()
    dispatcher, _ = make(replicas, scheduler, now)
    dispatcher.submit(sample(0, deadline_s=101.0))
    dispatcher.step()  # T unknown: one call at a time, each replica's first reply is its warm-up
    while scheduler.period_s == 0.0:
        now.advance(0.03)
        replicas.finish(len(replicas.sends) - 1, ActionReply(1, 0, 0.0), 0.03)
        dispatcher.step()
    assert scheduler.period_s == 0.03
    now.advance(0.01)  # the spacing is 30 ms / 3 replicas
    dispatcher.step()
    assert [s[0] for s in replicas.sends] == ["a", "b", "c", "a", "b", "c"]
    assert len(replicas.prepared) == 1  # the same sample every time, preprocessed once
    assert dispatcher.requests_resent == 5


def test_inline_next_idle_sends_on_the_submitting_thread_and_an_unsent_sample_when_a_call_ends() -> None:
    replicas = FakeReplicas(("a",))
    mailbox = ActionMailbox(5, FakeTime(100.002))
    mailbox.begin_episode(0, 0)
    dispatcher = Dispatcher(Preprocessor(10, 8), mailbox, replicas, now_s=FakeTime(100.002), inline=True)
    dispatcher.start()  # no thread: nothing to start
    dispatcher.submit(sample(0))
    assert [s[1] for s in replicas.sends] == [("request", 0)]
    dispatcher.submit(sample(1))  # a is busy: sample 1 waits
    assert len(replicas.sends) == 1
    replicas.finish(0, ActionReply(3, 1, -0.1))  # a is idle again and sample 1 is still usable
    assert [s[1] for s in replicas.sends] == [("request", 0), ("request", 1)]
    assert mailbox.pending_count() == 1
    dispatcher.stop()


def inline_next_idle(
    replicas: FakeReplicas, now: FakeTime, mean_round_trip_s: float
) -> tuple[Dispatcher, ActionMailbox]:
    scheduler = NextIdleScheduler()
    for _ in range(WARMUP_REPLIES + 1):  # the first reply of a replica is its warm-up and does not count
        scheduler.on_reply("warm", mean_round_trip_s)
    mailbox = ActionMailbox(5, now)
    mailbox.begin_episode(0, 0)
    dispatcher = Dispatcher(Preprocessor(10, 8), mailbox, replicas, scheduler, now_s=now, inline=True)
    dispatcher.start()
    return dispatcher, mailbox


def test_a_call_overdue_by_several_mean_round_trips_is_hedged_once_to_another_idle_replica() -> None:
    now = FakeTime(100.002)
    replicas = FakeReplicas(("a", "b", "c"))
    dispatcher, mailbox = inline_next_idle(replicas, now, mean_round_trip_s=0.002)
    try:
        dispatcher.submit(sample(0))  # to "a", which stalls: it never answers
        assert [s[0] for s in replicas.sends] == ["a"]
        now.advance(0.002 * HEDGE_AFTER_MEANS + 0.001)
        assert wait_for(lambda: len(replicas.sends) == 2)
        hedge_address, hedge_request = replicas.sends[1][0], replicas.sends[1][1]
        assert hedge_address in ("b", "c") and hedge_request == ("request", 0)
        assert len(replicas.prepared) == 1  # the same prepared request, not preprocessed again
        assert (dispatcher.requests_hedged, dispatcher.requests_resent) == (1, 1)
        replicas.finish(1, ActionReply(4, 2, -0.2))
        taken = mailbox.take(2)
        assert taken is not None and taken.reply.action == 4
        now.advance(1.0)  # at most one hedge per sample, however long "a" stays silent
        threading.Event().wait(0.05)
        assert len(replicas.sends) == 2
    finally:
        dispatcher.stop()


def test_a_hedge_due_before_the_watchdogs_planned_wake_still_goes_out_in_time() -> None:
    """The watchdog is not woken by every sample and reply (see Dispatcher._watch): with samples 100 s
    apart it plans to sleep about 100 s. A sample that comes sooner arms a hedge due before then, which
    must wake it: here the hedge goes out at once instead of 100 s later."""
    now = FakeTime(100.0)
    replicas = FakeReplicas(("a", "b"))
    dispatcher, _ = inline_next_idle(replicas, now, mean_round_trip_s=0.002)
    try:
        for index in range(2):
            dispatcher.submit(sample(index, deadline_s=now() + 1000.0, produced_s=now()))
            replicas.finish(index, ActionReply(1, 0, 0.0), 0.002)
            threading.Event().wait(0.05)  # the watchdog wakes at the answered sample's hedge time and plans
            now.advance(100.0)
        now.advance(-99.9)  # the third sample comes 0.1 s after the second, not 100 s
        dispatcher.submit(sample(2, deadline_s=now() + 1000.0, produced_s=now()))
        assert [s[0] for s in replicas.sends] == ["a", "b", "a"]
        now.advance(0.002 * HEDGE_AFTER_MEANS + 0.001)
        assert wait_for(lambda: len(replicas.sends) == 4, timeout_s=10.0)
        assert replicas.sends[3][0] == "b" and dispatcher.requests_hedged == 1
    finally:
        dispatcher.stop()


def test_a_call_answered_in_time_is_not_hedged_and_nothing_is_hedged_before_a_round_trip_counts() -> None:
    now = FakeTime(100.002)
    replicas = FakeReplicas(("a", "b"))
    dispatcher, _ = inline_next_idle(replicas, now, mean_round_trip_s=0.002)
    try:
        dispatcher.submit(sample(0))
        replicas.finish(0, ActionReply(1, 0, 0.0), 0.002)
        now.advance(0.05)
        threading.Event().wait(0.05)
        assert len(replicas.sends) == 1 and dispatcher.requests_hedged == 0
    finally:
        dispatcher.stop()

    unmeasured = FakeReplicas(("a", "b"))
    mailbox = ActionMailbox(5, now)
    mailbox.begin_episode(0, 0)
    dispatcher = Dispatcher(Preprocessor(10, 8), mailbox, unmeasured, now_s=now, inline=True)
    dispatcher.start()
    try:
        dispatcher.submit(sample(4, deadline_s=now() + 1.0))
        now.advance(0.5)
        threading.Event().wait(0.05)
        assert len(unmeasured.sends) == 1  # no mean round trip yet: no basis for calling a call overdue
    finally:
        dispatcher.stop()


class NextIdleWithoutExtras(NextIdleScheduler):
    """next_idle as a policy that declares neither a backlog nor hedging would: the dispatcher must follow
    the hooks, whatever the scheduler's class."""

    keeps_backlog = False
    hedges = False


def test_an_inline_scheduler_that_does_not_hedge_or_keep_a_backlog_gets_neither() -> None:
    now = FakeTime(100.002)
    replicas = FakeReplicas(("a", "b"))
    scheduler = NextIdleWithoutExtras()
    for _ in range(WARMUP_REPLIES + 1):
        scheduler.on_reply("warm", 0.002)
    mailbox = ActionMailbox(5, now)
    mailbox.begin_episode(0, 0)
    dispatcher = Dispatcher(Preprocessor(10, 8), mailbox, replicas, scheduler, now_s=now, inline=True)
    dispatcher.start()
    try:
        dispatcher.submit(sample(0))  # to "a", which never answers
        now.advance(0.002 * HEDGE_AFTER_MEANS + 0.001)  # overdue: next_idle would hedge it to "b" now
        threading.Event().wait(0.05)
        assert [s[0] for s in replicas.sends] == ["a"] and dispatcher.requests_hedged == 0
        dispatcher.submit(sample(1))  # to "b"
        dispatcher.submit(sample(2))  # both busy: waits
        dispatcher.submit(sample(3))  # replaces 2, which is not kept for later: counted at once
        assert dispatcher.requests_not_sent == 1
        replicas.finish(1, ActionReply(1, 0, 0.0))
        assert [s[1][1] for s in replicas.sends] == [0, 1, 3]  # 2 never goes, though "b" is idle now
    finally:
        dispatcher.stop()


def test_a_scheduler_that_asks_to_be_woken_is_refused_inline_dispatch() -> None:
    mailbox = ActionMailbox(5, FakeTime(100.0))
    with pytest.raises(ValueError, match="max_time scheduler asks to be woken"):
        Dispatcher(Preprocessor(10, 8), mailbox, FakeReplicas(), MaxTimeScheduler(), inline=True)


def test_dispatcher_thread_sends_what_the_clock_submits() -> None:
    replicas = FakeReplicas()
    dispatcher, _ = make(replicas)
    dispatcher.start()
    try:
        dispatcher.submit(sample(0))
        assert wait_for(lambda: len(replicas.sends) == 1)
    finally:
        dispatcher.stop()
