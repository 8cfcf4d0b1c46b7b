"""The gateway's requests on each replica's ActStream: one stream per replica, answers back to their
senders, a stalled stream failed at its deadline and replaced, a replica that ends its stream out of
rotation at once, and a replica that refuses ActStream out of rotation with its request failed, not lost.

The replicas are real gRPC servers on loopback; the pool is the gateway's own `ReplicaPool`.
"""

from __future__ import annotations

import functools
import logging
import queue
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from gateway_doubles import FakeInference

from rtrl.services.env_gateway.dispatcher import CallOutcome
from rtrl.services.env_gateway.replicas import STREAM_DEADLINE_CHECK_S, ReplicaPool
from rtrl.tensors import to_proto
from rtrl.v1 import inference_pb2, inference_pb2_grpc

ACTIONS = 6
ACTION = 4
# Generous bound for background work on a busy machine; not a measurement.
BOUND_S = 10.0

Serve = Callable[..., tuple[str, grpc.Server]]
Pooled = Callable[[FakeInference], tuple[str, ReplicaPool, grpc.Server]]


class CountingInference(FakeInference):
    """FakeInference that counts the ActStreams opened and the Act calls made."""

    def __init__(self) -> None:
        super().__init__(delay_s=0.0, action=ACTION, checkpoint_version=5)
        self.streams_opened = 0
        self.act_calls = 0

    def Act(self, request: inference_pb2.ActRequest, context: grpc.ServicerContext) -> inference_pb2.ActResponse:
        self.act_calls += 1
        return super().Act(request, context)

    def ActStream(
        self, requests: Iterator[inference_pb2.ActStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.ActStreamResponse]:
        self.streams_opened += 1
        return super().ActStream(requests, context)


class ActOnly(CountingInference):
    """A replica from before ActStream: the stream is UNIMPLEMENTED."""

    ActStream = inference_pb2_grpc.InferenceServiceServicer.ActStream  # type: ignore[assignment]


class FirstStreamStalls(CountingInference):
    """The first stream's first request is never answered (a stalled replica); later streams answer at once."""

    def ActStream(
        self, requests: Iterator[inference_pb2.ActStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.ActStreamResponse]:
        self.streams_opened += 1
        if self.streams_opened == 1:
            next(requests)
            self._ended(context).wait(BOUND_S)
            return
        yield from FakeInference.ActStream(self, requests, context)


def request(frame_index: int) -> inference_pb2.ActRequest:
    return inference_pb2.ActRequest(
        observation=to_proto(np.zeros((4, 84, 84), np.uint8)), frame_index=frame_index, action_count=ACTIONS
    )


@pytest.fixture
def pooled(serve_inference: Serve) -> Iterator[Pooled]:
    """Serves a servicer and gives its address, a gateway's pool of just it, and its server; closes the pools."""
    pools: list[ReplicaPool] = []

    def make(servicer: FakeInference) -> tuple[str, ReplicaPool, grpc.Server]:
        address, server = serve_inference(servicer)
        pools.append(ReplicaPool("gw", ACTIONS, [address]))
        return address, pools[-1], server

    yield make
    for pool in pools:
        pool.close()


def send(pool: ReplicaPool, address: str, frame_index: int, timeout_s: float = BOUND_S) -> CallOutcome:
    """Sends one request and waits for its outcome."""
    outcomes: queue.SimpleQueue[CallOutcome] = queue.SimpleQueue()
    assert pool.send(address, request(frame_index), time.monotonic() + timeout_s, outcomes.put)
    return outcomes.get(timeout=BOUND_S + timeout_s)


def test_requests_go_on_one_stream_and_each_answer_reaches_its_sender(pooled: Pooled) -> None:
    servicer = CountingInference()
    address, pool, _ = pooled(servicer)
    outcomes = [send(pool, address, frame_index) for frame_index in range(5)]

    assert [outcome.reply.action if outcome.reply else None for outcome in outcomes] == [ACTION] * 5
    assert servicer.frame_indices == list(range(5))
    assert (servicer.streams_opened, servicer.act_calls) == (1, 0)
    (stats,) = pool.stats()
    assert (stats.requests, stats.replies, stats.failures, stats.in_flight) == (5, 5, 0, 0)
    assert (stats.checkpoint_version, stats.transport) == (5, "ActStream")


def test_requests_sent_together_are_answered_in_their_order(pooled: Pooled) -> None:
    servicer = CountingInference()
    servicer.delay_s = 0.01
    address, pool, _ = pooled(servicer)
    outcomes: queue.SimpleQueue[tuple[int, CallOutcome]] = queue.SimpleQueue()
    for frame_index in range(4):
        assert pool.send(
            address,
            request(frame_index),
            time.monotonic() + BOUND_S,
            functools.partial(lambda index, outcome: outcomes.put((index, outcome)), frame_index),
        )
    answered = [outcomes.get(timeout=BOUND_S) for _ in range(4)]

    assert [frame_index for frame_index, _ in answered] == [0, 1, 2, 3]
    assert all(outcome.reply is not None for _, outcome in answered)
    assert servicer.frame_indices == [0, 1, 2, 3]


def test_a_replica_that_refuses_act_stream_leaves_the_rotation_and_its_request_fails_with_the_refusal(
    pooled: Pooled, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rtrl.services.env_gateway.replicas")
    servicer = ActOnly()
    address, pool, _ = pooled(servicer)
    outcome = send(pool, address, 0)

    assert outcome.reply is None
    assert pool.views(time.monotonic()) == []
    (stats,) = pool.stats()
    assert stats.excluded and (stats.requests, stats.replies, stats.failures, stats.in_flight) == (1, 0, 1, 0)
    assert servicer.act_calls == 0
    # Seen alive again (a heartbeat), it is back and tried once more.
    pool.set_addresses([address])
    assert [view.address for view in pool.views(time.monotonic())] == [address]
    assert send(pool, address, 1).reply is None
    (stats,) = pool.stats()
    assert stats.excluded and (stats.requests, stats.failures) == (2, 2)
    # A full replica tried again and again is said once, not every time it is seen alive.
    assert caplog.text.count("refused ActStream (UNIMPLEMENTED)") == 1


def test_a_stalled_stream_fails_its_request_by_its_deadline_and_a_new_stream_replaces_it(pooled: Pooled) -> None:
    servicer = FirstStreamStalls()
    address, pool, _ = pooled(servicer)
    deadline_s = 0.2
    stalled = send(pool, address, 0, timeout_s=deadline_s)
    after = send(pool, address, 1)

    assert stalled.reply is None
    # Failed after its deadline, within the pool's check interval (plus a busy machine's slack).
    assert deadline_s <= stalled.round_trip_s < deadline_s + STREAM_DEADLINE_CHECK_S + 1.0
    assert after.reply is not None and after.reply.action == ACTION
    assert servicer.streams_opened == 2
    (stats,) = pool.stats()
    assert (stats.requests, stats.replies, stats.failures, stats.in_flight) == (2, 1, 1, 0)


def test_closing_the_pool_fails_a_request_waiting_on_a_stream_at_once(pooled: Pooled) -> None:
    servicer = FirstStreamStalls()
    address, pool, _ = pooled(servicer)
    outcomes: queue.SimpleQueue[CallOutcome] = queue.SimpleQueue()
    assert pool.send(address, request(0), time.monotonic() + BOUND_S, outcomes.put)
    while servicer.streams_opened == 0:
        time.sleep(0.01)

    pool.close()

    # Delivered by close() itself, long before the request's deadline.
    outcome = outcomes.get_nowait()
    assert outcome.reply is None
    (stats,) = pool.stats()
    assert (stats.failures, stats.in_flight) == (1, 0)


def test_a_replica_that_ends_its_stream_leaves_the_rotation_before_a_request_is_lost_to_it(pooled: Pooled) -> None:
    servicer = CountingInference()
    address, pool, server = pooled(servicer)
    assert send(pool, address, 0).reply is not None
    assert [view.address for view in pool.views(time.monotonic())] == [address]

    server.stop(None).wait()

    give_up_at = time.monotonic() + BOUND_S
    while pool.views(time.monotonic()):
        assert time.monotonic() < give_up_at, "the replica stayed in rotation"
        time.sleep(0.01)
    (stats,) = pool.stats()
    assert stats.excluded
    assert (stats.requests, stats.failures) == (1, 0)
