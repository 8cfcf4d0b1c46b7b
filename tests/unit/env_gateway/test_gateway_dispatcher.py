"""The dispatcher: newest-wins handoff, preprocessing, and replies into the mailbox."""

from __future__ import annotations

import numpy as np
from gateway_fakes import FakeTime

from services.env_gateway.clock import ActionMailbox, ActionReply, ObservationSample
from services.env_gateway.dispatcher import Dispatcher, OnReply
from services.env_gateway.preprocess import Preprocessor, SampledFrame


def sample(frame_index: int, episode: int = 0) -> ObservationSample:
    frames = tuple(SampledFrame(frame_index, np.full((20, 30, 3), frame_index, np.uint8)) for _ in range(2))
    return ObservationSample(episode, 0, frame_index, frames, 100.0, 0, deadline_s=100.08)


class Requests:
    """A request_action that records calls and keeps their callbacks; `sent` decides its answer."""

    def __init__(self, sent: bool = True) -> None:
        self.sent = sent
        self.calls: list[tuple[np.ndarray, int, float, OnReply]] = []

    def __call__(self, observation: np.ndarray, frame_index: int, deadline_s: float, on_reply: OnReply) -> bool:
        self.calls.append((observation, frame_index, deadline_s, on_reply))
        return self.sent


def make(requests: Requests) -> tuple[Dispatcher, ActionMailbox]:
    mailbox = ActionMailbox(5, FakeTime(100.002))
    mailbox.begin_episode(0, 0)
    return Dispatcher(Preprocessor(10, 8), mailbox, requests), mailbox


def test_dispatch_sends_the_preprocessed_observation_with_its_deadline() -> None:
    requests = Requests()
    dispatcher, _ = make(requests)
    dispatcher.dispatch(sample(4))
    observation, frame_index, deadline_s, _ = requests.calls[0]
    assert observation.shape == (2, 8, 10) and observation.dtype == np.uint8
    assert (frame_index, deadline_s) == (4, 100.08)
    assert dispatcher.requests_sent == 1


def test_reply_goes_to_the_mailbox_and_failure_is_counted() -> None:
    requests = Requests()
    dispatcher, mailbox = make(requests)
    dispatcher.dispatch(sample(0))
    dispatcher.dispatch(sample(0))
    requests.calls[0][3](ActionReply(2, 4, -0.3))
    requests.calls[1][3](None)
    taken = mailbox.take(1)
    assert taken is not None and taken.reply.action == 2
    assert dispatcher.requests_failed == 1


def test_no_idle_replica_counts_as_not_sent() -> None:
    dispatcher, _ = make(Requests(sent=False))
    dispatcher.dispatch(sample(0))
    assert (dispatcher.requests_sent, dispatcher.requests_not_sent) == (0, 1)


def test_newer_sample_replaces_one_the_dispatcher_has_not_taken() -> None:
    requests = Requests()
    dispatcher, _ = make(requests)
    dispatcher.submit(sample(0))
    dispatcher.submit(sample(4))  # the thread is not running, so sample 0 is still waiting
    assert dispatcher.samples_skipped == 1
    assert dispatcher.requests_not_sent == 1
    dispatcher.start()
    dispatcher.stop()
    # Stopping may win the race against the waiting sample; either way sample 0 was never sent.
    assert all(call[1] == 4 for call in requests.calls)
