"""The gateway's requests on a replica's act socket: used when the replica offers one, ActStream instead
when it cannot be used (nothing listening, not the protocol), a stalled socket failed at its deadline
and replaced, a replica that closes its socket out of rotation at once, and the token in the hello.

The replica is a real gRPC server whose GetStatus offers a real act socket (rtrl/services/inference's
`ActSocketServer`); the pool is the gateway's own `ReplicaPool`, warming replicas up as the gateway does.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from gateway_doubles import FakeInference
from test_gateway_act_stream import ACTION, ACTIONS, BOUND_S, CountingInference, Serve, request, send

from rtrl.act_socket import HELLO, frame, receive_exactly, receive_length
from rtrl.security import SecuritySettings
from rtrl.services.env_gateway.dispatcher import CallOutcome
from rtrl.services.env_gateway.replicas import STREAM_DEADLINE_CHECK_S, ReplicaPool
from rtrl.services.inference.act_socket import ActSocketServer
from rtrl.services.inference.streams import OpenStreams
from rtrl.v1 import inference_pb2

SHAPE = (4, 84, 84)
TOKEN = "a-token-of-the-pool-32-characters"


class SocketInference(CountingInference):
    """A replica that offers an act socket answering as its ActStream does; counts the socket's answers.
    `offered_port` overrides the port GetStatus names (a socket that cannot be used)."""

    def __init__(self, token: str = "") -> None:
        super().__init__()
        self.streams = OpenStreams(limit=4)
        self.socket = ActSocketServer(self.answer, self.streams, "127.0.0.1", 0, 1 << 22, lambda: None, token)
        self.socket.start()
        self.offered_port = self.socket.port
        self.socket_answers = 0
        self.hold_first_answer = threading.Event()
        """Set by a test to make the socket's first answer wait (a stalled replica) until `release`."""
        self.release = threading.Event()

    def answer(self, message: inference_pb2.ActStreamRequest) -> inference_pb2.ActStreamResponse:
        self.socket_answers += 1
        if self.hold_first_answer.is_set() and self.socket_answers == 1:
            self.release.wait(BOUND_S)
        return inference_pb2.ActStreamResponse(response=self._answer(message.request, threading.Event()))

    def GetStatus(
        self, request: inference_pb2.InferenceServiceGetStatusRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferenceServiceGetStatusResponse:
        return inference_pb2.InferenceServiceGetStatusResponse(act_socket_port=self.offered_port)

    def stop(self) -> None:
        self.release.set()
        self.streams.stop()
        self.socket.stop()


Pooled = Callable[..., tuple[str, ReplicaPool, grpc.Server]]


@pytest.fixture
def pooled(serve_inference: Serve) -> Iterator[Pooled]:
    """Serves a servicer; gives its address, a warmed-up pool of just it, and its server; closes them."""
    pools: list[ReplicaPool] = []
    servicers: list[FakeInference] = []

    def make(servicer: FakeInference, security: SecuritySettings | None = None) -> tuple[str, ReplicaPool, grpc.Server]:
        address, server = serve_inference(servicer)
        servicers.append(servicer)
        pool = ReplicaPool("gw", ACTIONS, [address], security=security or SecuritySettings(), observation_shape=SHAPE)
        pools.append(pool)
        wait_until(lambda: bool(pool.views(time.monotonic())), "the replica never entered the rotation")
        return address, pool, server

    yield make
    for pool in pools:
        pool.close()
    for servicer in servicers:
        if isinstance(servicer, SocketInference):
            servicer.stop()


def wait_until(condition: Callable[[], bool], why: str) -> None:
    give_up_at = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < give_up_at, why
        time.sleep(0.005)


def test_requests_go_on_the_act_socket_when_the_replica_offers_one(pooled: Pooled) -> None:
    servicer = SocketInference()
    address, pool, _ = pooled(servicer)

    outcomes = [send(pool, address, frame_index) for frame_index in range(5)]

    assert [outcome.reply.action if outcome.reply else None for outcome in outcomes] == [ACTION] * 5
    # The warm-up went by Act, the five requests by the socket, none by ActStream.
    assert (servicer.socket_answers, servicer.streams_opened, servicer.act_calls) == (5, 0, 1)
    assert servicer.frame_indices[1:] == list(range(5))
    assert servicer.observation_shapes == {SHAPE}
    (stats,) = pool.stats()
    assert (stats.requests, stats.replies, stats.failures, stats.in_flight) == (5, 5, 0, 0)
    assert stats.transport == "act socket"


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def not_the_protocol() -> int:
    """A listener that answers every connection with an HTTP error, as a wrong port would; late enough
    that the test's requests are already waiting on the socket, so they must go again on ActStream."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            connection, _ = listener.accept()
            with connection:
                time.sleep(0.3)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


@pytest.mark.parametrize("port", [unused_port, not_the_protocol], ids=["nothing listening", "not the protocol"])
def test_a_socket_that_cannot_be_used_gives_the_replica_act_stream_and_loses_no_request(
    pooled: Pooled, port: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    servicer = SocketInference()
    servicer.offered_port = port()
    address, pool, _ = pooled(servicer)

    waiting: queue.SimpleQueue[CallOutcome] = queue.SimpleQueue()
    for frame_index in range(3):
        assert pool.send(address, request(frame_index), time.monotonic() + BOUND_S, waiting.put)
    outcomes = [waiting.get(timeout=2 * BOUND_S) for _ in range(3)]
    outcomes.append(send(pool, address, 3))

    assert all(outcome.reply is not None for outcome in outcomes)
    # One ActStream: the replica's transport is replaced under the pool's lock, so no request finds it
    # without one and opens a second.
    assert (servicer.socket_answers, servicer.streams_opened) == (0, 1)
    assert servicer.frame_indices[1:] == [0, 1, 2, 3]
    assert "offers an act socket that cannot be used" in caplog.text
    (stats,) = pool.stats()
    assert (stats.replies, stats.failures, stats.transport) == (4, 0, "ActStream")


def breaks_the_protocol_after_the_hello() -> int:
    """A listener that answers the hello as a replica does, then answers the first request with bytes that
    are no ActStreamResponse."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            connection, _ = listener.accept()
            with connection:
                receive_exactly(connection, len(HELLO))
                receive_exactly(connection, receive_length(connection))  # the token
                connection.sendall(HELLO)
                receive_exactly(connection, receive_length(connection))  # the first request
                connection.sendall(frame(b"\xff" * 16))
                time.sleep(BOUND_S)

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


def test_a_socket_that_breaks_the_protocol_fails_its_request_and_the_replica_goes_on_with_act_stream(
    pooled: Pooled, caplog: pytest.LogCaptureFixture
) -> None:
    servicer = SocketInference()
    servicer.offered_port = breaks_the_protocol_after_the_hello()
    address, pool, _ = pooled(servicer)

    broken = send(pool, address, 0)
    after = [send(pool, address, frame_index) for frame_index in (1, 2)]

    # Whether the replica acted on a request the socket carried cannot be known: it fails, and is not sent
    # again; the next requests go on ActStream, and the socket is not tried again.
    assert broken.reply is None
    assert all(outcome.reply is not None for outcome in after)
    assert (servicer.socket_answers, servicer.streams_opened) == (0, 1)
    assert servicer.frame_indices[1:] == [1, 2]
    assert caplog.text.count("offers an act socket that cannot be used (it broke the protocol") == 1
    (stats,) = pool.stats()
    assert (stats.requests, stats.replies, stats.failures, stats.transport) == (3, 2, 1, "ActStream")


def test_a_stalled_socket_fails_its_request_by_its_deadline_and_a_new_one_replaces_it(pooled: Pooled) -> None:
    servicer = SocketInference()
    servicer.hold_first_answer.set()
    address, pool, _ = pooled(servicer)
    deadline_s = 0.2

    stalled = send(pool, address, 0, timeout_s=deadline_s)
    servicer.release.set()
    after = send(pool, address, 1)

    assert stalled.reply is None
    assert deadline_s <= stalled.round_trip_s < deadline_s + STREAM_DEADLINE_CHECK_S + 1.0
    assert after.reply is not None and after.reply.action == ACTION
    assert servicer.streams_opened == 0
    (stats,) = pool.stats()
    assert (stats.requests, stats.replies, stats.failures, stats.in_flight) == (2, 1, 1, 0)


def test_a_replica_that_closes_its_socket_leaves_the_rotation_before_a_request_is_lost_to_it(pooled: Pooled) -> None:
    servicer = SocketInference()
    address, pool, _ = pooled(servicer)
    assert send(pool, address, 0).reply is not None

    servicer.stop()

    wait_until(lambda: not pool.views(time.monotonic()), "the replica stayed in rotation")
    (stats,) = pool.stats()
    assert stats.excluded
    assert (stats.requests, stats.failures) == (1, 0)


@pytest.mark.parametrize(("socket_token", "transport"), [(TOKEN, "act socket"), ("another-" + TOKEN, "ActStream")])
def test_the_pool_s_token_opens_a_socket_that_asks_for_it_and_only_that_one(
    pooled: Pooled, socket_token: str, transport: str
) -> None:
    # The replica's gRPC server here asks for no token, so ActStream serves the pool whatever it sends.
    servicer = SocketInference(token=socket_token)
    address, pool, _ = pooled(servicer, security=SecuritySettings(token=TOKEN))

    outcomes = [send(pool, address, frame_index) for frame_index in range(3)]

    assert all(outcome.reply is not None for outcome in outcomes)
    if transport == "act socket":
        assert (servicer.socket_answers, servicer.streams_opened) == (3, 0)
    else:
        assert (servicer.socket_answers, servicer.streams_opened) == (0, 1)
    assert pool.stats()[0].transport == transport
