"""The sequential baseline's dispatcher: act, wait for the step that applied the action, train, repeat."""

from __future__ import annotations

import threading
from collections.abc import Callable

from gateway_fakes import FakeTime, wait_for
from test_gateway_dispatcher import FakeReplicas, sample

from rtrl.services.env_gateway.clock import StepRecord
from rtrl.services.env_gateway.mailbox import ActionMailbox, ActionReply
from rtrl.services.env_gateway.preprocess import Preprocessor
from rtrl.services.env_gateway.sequential import SequentialDispatcher, TrainError, TrainResult


class FakeTrain:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[int] = []

    def __call__(self, through_seq: int) -> TrainResult:
        self.calls.append(through_seq)
        if self.fail:
            raise TrainError("the learner is away")
        return TrainResult(1, 12.5, 3)


def record(seq: int, action_obs_frame: int, episode: int = 0) -> StepRecord:
    return StepRecord(
        "gw", seq, episode, seq, seq, (), 1, 4, 0.0, False, False, True, 1, 1, 0, 0.0, 0, 0, action_obs_frame
    )


def run_cycle(dispatcher: SequentialDispatcher) -> threading.Thread:
    thread = threading.Thread(target=dispatcher.cycle)
    thread.start()
    return thread


def make_sequential(replicas: FakeReplicas, train: Callable[[int], TrainResult]) -> SequentialDispatcher:
    mailbox = ActionMailbox(5, FakeTime(100.002))
    mailbox.begin_episode(0, 0)
    return SequentialDispatcher(
        Preprocessor(10, 8),
        mailbox,
        replicas,
        train,
        frame_period_s=1 / 60,
        max_staleness_frames=5,
        decision_interval_frames=1,
    )


def test_sequential_cycle_acts_then_trains_through_the_step_that_applied_the_action() -> None:
    replicas = FakeReplicas()
    train = FakeTrain()
    dispatcher = make_sequential(replicas, train)
    dispatcher.submit(sample(7))
    cycle = run_cycle(dispatcher)
    assert wait_for(lambda: len(replicas.sends) == 1)
    dispatcher.submit(sample(8))  # the clock goes on meanwhile; this sample is never acted on
    replicas.finish(0, ActionReply(2, 4, -0.3))
    dispatcher.on_record(record(seq=40, action_obs_frame=3))  # another step: not ours
    dispatcher.on_record(record(seq=41, action_obs_frame=7))
    cycle.join(5)
    assert not cycle.is_alive()
    assert train.calls == [41]
    assert (dispatcher.cycles, dispatcher.requests_sent, dispatcher.requests_not_sent) == (1, 1, 1)
    assert dispatcher.train_ms.summary().p50 == 12.5


def test_sequential_cycle_without_a_learner_counts_the_failure_and_goes_on() -> None:
    replicas = FakeReplicas()
    dispatcher = make_sequential(replicas, FakeTrain(fail=True))
    dispatcher.submit(sample(7))
    cycle = run_cycle(dispatcher)
    assert wait_for(lambda: len(replicas.sends) == 1)
    replicas.finish(0, ActionReply(2, 4, -0.3))
    dispatcher.on_record(record(seq=41, action_obs_frame=7))
    cycle.join(5)
    assert (dispatcher.cycles, dispatcher.train_failures) == (0, 1)
