"""The act socket on a real replica: ActStream's answers on a plain TCP connection, its bad input (a
wrong hello, an undecodable request, a frame over the limit), its share of the stream limit, shutdown,
only a hello with the token when one is on, and no socket when it is turned off.

The client here speaks the protocol of rtrl/act_socket.py byte by byte, as the gateway does."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from test_inference_act_stream import (
    DEADLINE_EXCEEDED,
    INVALID_ARGUMENT,
    TIMEOUT_MS,
    Stream,
    status,
    wait_until_computing,
)
from test_inference_server import CALL_TIMEOUT_S, Connect, MakeServer, act_request

from rtrl.act_socket import (
    HELLO,
    MAX_TOKEN_BYTES,
    ConnectionEnded,
    client_hello,
    frame,
    receive_exactly,
    receive_length,
)
from rtrl.security import SecuritySettings
from rtrl.services.inference.server import WORKERS_KEPT_FROM_STREAMS, InferenceServer
from rtrl.services.inference.settings import ACT_SOCKET_OFF
from rtrl.v1 import inference_pb2

TOKEN = "a-token-of-the-replica-32-characters"


class SocketClient:
    """One connection to a replica's act socket; every one is closed after its test."""

    opened: list[socket.socket] = []

    def __init__(self, server: InferenceServer, hello: bytes = client_hello("")) -> None:
        assert server.act_socket is not None
        self.connection = socket.create_connection(("127.0.0.1", server.act_socket.port), timeout=CALL_TIMEOUT_S)
        SocketClient.opened.append(self.connection)
        self.connection.sendall(hello)

    def handshake(self) -> bytes:
        return receive_exactly(self.connection, len(HELLO))

    def send_raw(self, data: bytes) -> None:
        self.connection.sendall(data)

    def send(self, request: inference_pb2.ActRequest, timeout_ms: float = TIMEOUT_MS) -> None:
        message = inference_pb2.ActStreamRequest(request=request, timeout_ms=timeout_ms)
        self.send_raw(frame(message.SerializeToString()))

    def answer(self) -> inference_pb2.ActStreamResponse:
        length = receive_length(self.connection)
        return inference_pb2.ActStreamResponse.FromString(receive_exactly(self.connection, length))

    def ask(self, request: inference_pb2.ActRequest, timeout_ms: float = TIMEOUT_MS) -> inference_pb2.ActStreamResponse:
        self.send(request, timeout_ms)
        return self.answer()

    def ended(self) -> bool:
        """True when the replica closed the connection (nothing more comes)."""
        try:
            return self.connection.recv(1) == b""
        except ConnectionResetError:
            return True


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while SocketClient.opened:
        SocketClient.opened.pop().close()


@pytest.fixture
def started(make_server: MakeServer, publish) -> InferenceServer:
    publish(1)
    server = make_server()
    server.start()
    return server


def test_the_socket_answers_as_act_stream_does_and_counts_as_an_open_stream(
    started: InferenceServer, connect: Connect
) -> None:
    client = SocketClient(started)
    assert client.handshake() == HELLO
    requests = [
        (act_request(frame_index=0), TIMEOUT_MS),
        (inference_pb2.ActRequest(action_count=4, frame_index=1), TIMEOUT_MS),
        (act_request(frame_index=2), 0.0),
        (act_request(frame_index=3), 1e-3),
        (act_request(frame_index=4), TIMEOUT_MS),
    ]
    for request, timeout_ms in requests:
        client.send(request, timeout_ms)
    answers = [client.answer() for _ in requests]

    assert [answer.error_code for answer in answers] == [0, INVALID_ARGUMENT, INVALID_ARGUMENT, DEADLINE_EXCEEDED, 0]
    assert answers[1].error_message.startswith("ActRequest.observation is required")
    for answer, frame_index in ((answers[0], 0), (answers[4], 4)):
        assert (answer.response.frame_index, answer.response.checkpoint_version) == (frame_index, 1)
        assert 0 <= answer.response.action < 4
    # The same observation gets the same greedy action on both ways of asking.
    stream = Stream(connect(started))
    on_stream = stream.ask(act_request(frame_index=9))
    assert on_stream.response.action == answers[0].response.action
    counts = status(started, connect)
    assert counts.act_socket_port == started.act_socket.port  # type: ignore[union-attr]
    assert counts.open_streams == 2  # the socket and the gRPC stream
    assert (counts.requests_answered, counts.requests_invalid, counts.requests_refused_deadline) == (3, 2, 1)


def test_a_connection_that_does_not_say_the_hello_is_closed_and_counted(
    started: InferenceServer, connect: Connect
) -> None:
    client = SocketClient(started, hello=b"GET / HTTP/1.1\r\n")

    assert client.ended()
    assert status(started, connect).requests_invalid == 1


def test_an_undecodable_request_gets_an_error_answer_and_the_connection_goes_on(started: InferenceServer) -> None:
    client = SocketClient(started)
    client.handshake()

    client.send_raw(frame(b"\xff\xff\xff\xff not a protobuf"))
    refused = client.answer()
    answered = client.ask(act_request(frame_index=5))

    assert refused.error_code == INVALID_ARGUMENT
    assert "not a serialized rtrl.v1.ActStreamRequest" in refused.error_message
    assert (answered.error_code, answered.response.frame_index) == (0, 5)


def test_a_frame_over_the_size_limit_gets_an_error_answer_and_the_connection_is_closed(
    make_server: MakeServer,
) -> None:
    server = make_server(security=SecuritySettings(max_message_bytes=4096))
    server.start()
    client = SocketClient(server)
    client.handshake()

    client.send_raw((1 << 30).to_bytes(4, "big"))
    answer = client.answer()

    assert answer.error_code == INVALID_ARGUMENT
    assert "1073741824 bytes is over this replica's limit of 4096 bytes" in answer.error_message
    assert client.ended()


def test_sockets_and_grpc_streams_share_the_limit_of_open_streams(make_server: MakeServer, connect: Connect) -> None:
    workers = 4
    server = make_server(workers=workers, max_batch_size=2)
    server.start()
    limit = workers - WORKERS_KEPT_FROM_STREAMS
    on_grpc = Stream(connect(server))
    assert on_grpc.ask(act_request()).error_code == 0
    admitted = [SocketClient(server) for _ in range(limit - 1)]
    for client in admitted:
        assert client.handshake() == HELLO

    refused = SocketClient(server)

    with pytest.raises(ConnectionEnded):
        refused.handshake()
    assert admitted[0].ask(act_request(frame_index=3)).response.frame_index == 3
    assert status(server, connect).open_streams == limit


def test_stopping_the_replica_closes_an_idle_connection_at_once(started: InferenceServer) -> None:
    client = SocketClient(started)
    client.handshake()
    assert client.ask(act_request()).error_code == 0

    stopped = started.stop(grace=60.0)

    assert stopped.wait(CALL_TIMEOUT_S)
    assert client.ended()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", started.act_socket.port), timeout=1.0)  # type: ignore[union-attr]


def test_a_connection_computing_an_answer_when_the_replica_stops_sends_it_and_then_closes(
    make_server: MakeServer, publish
) -> None:
    publish(1)
    server = make_server(forward_ms=300.0)
    server.start()
    client = SocketClient(server)
    client.handshake()
    client.send(act_request(frame_index=7))
    wait_until_computing(server)

    stopped = server.stop(grace=60.0)
    answer = client.answer()

    assert (answer.error_code, answer.response.frame_index) == (0, 7)
    assert client.ended()
    assert stopped.wait(CALL_TIMEOUT_S)


def test_no_socket_is_offered_when_it_is_turned_off(make_server: MakeServer, connect: Connect) -> None:
    server = make_server(act_socket_port=ACT_SOCKET_OFF)
    server.start()

    assert server.act_socket is None
    assert status(server, connect).act_socket_port == 0


@pytest.mark.parametrize(
    "hello",
    [client_hello(""), client_hello("another-" + TOKEN), HELLO + frame(b"x" * (MAX_TOKEN_BYTES + 1))],
    ids=["no token", "a wrong token", "a token over the limit"],
)
def test_with_a_token_on_only_a_hello_carrying_it_is_answered(make_server: MakeServer, hello: bytes) -> None:
    server = make_server(security=SecuritySettings(token=TOKEN))
    server.start()

    refused = SocketClient(server, hello=hello)
    assert refused.ended()
    assert server.policy.status().requests_invalid == 1
    served = SocketClient(server, hello=client_hello(TOKEN))
    assert served.handshake() == HELLO
    assert served.ask(act_request(frame_index=0)).error_code == 0


def test_an_act_socket_port_in_use_fails_the_start_with_a_sentence(make_server: MakeServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(
            OSError,
            match=rf"cannot listen for the act socket on 127.0.0.1:{port} .*; set "
            "RTRL_INFERENCE_ACT_SOCKET_PORT to a free port",
        ):
            make_server(act_socket_port=port)
