"""ActStream on a real replica: answers in order, errors in the answers without ending the stream,
batching across streams, the limit of one stream per spare worker thread, and shutdown."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from test_inference_server import CALL_TIMEOUT_S, Connect, MakeServer, act_request

from rtrl.services.inference.server import WORKERS_KEPT_FROM_STREAMS, InferenceServer
from rtrl.v1 import inference_pb2, inference_pb2_grpc

TIMEOUT_MS = CALL_TIMEOUT_S * 1000.0
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


class Stream:
    """A client's ActStream: `send` one request, `answer` the next response."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.SimpleQueue[inference_pb2.ActStreamRequest | None] = queue.SimpleQueue()
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        self.answers: Iterator[inference_pb2.ActStreamResponse] = stub.ActStream(
            iter(self._requests.get, None), timeout=60.0
        )

    def send(self, request: inference_pb2.ActRequest, timeout_ms: float = TIMEOUT_MS) -> None:
        self._requests.put(inference_pb2.ActStreamRequest(request=request, timeout_ms=timeout_ms))

    def answer(self) -> inference_pb2.ActStreamResponse:
        return next(self.answers)

    def end(self) -> grpc.StatusCode:
        """Reads the stream to its end (no answer may come); the status it ended with."""
        try:
            assert list(self.answers) == []
        except grpc.RpcError as error:
            return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        return grpc.StatusCode.OK

    def ask(self, request: inference_pb2.ActRequest, timeout_ms: float = TIMEOUT_MS) -> inference_pb2.ActStreamResponse:
        self.send(request, timeout_ms)
        return self.answer()


def wait_until_computing(server: InferenceServer) -> None:
    """Returns once one request is in the replica's policy (computing its answer)."""
    give_up_at = time.monotonic() + CALL_TIMEOUT_S
    while server.policy.status().in_flight != 1:
        assert time.monotonic() < give_up_at, "the request never reached the policy"
        time.sleep(0.005)


def status(server: InferenceServer, connect: Connect) -> inference_pb2.InferenceServiceGetStatusResponse:
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))
    return stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=CALL_TIMEOUT_S)


def test_each_request_is_answered_in_order_and_a_refused_one_does_not_end_the_stream(
    make_server: MakeServer, connect: Connect, publish: Callable
) -> None:
    publish(1)
    server = make_server()
    server.start()
    stream = Stream(connect(server))

    requests = [
        (act_request(frame_index=0), TIMEOUT_MS),
        (inference_pb2.ActRequest(action_count=4, frame_index=1), TIMEOUT_MS),
        (act_request(frame_index=2), 0.0),
        (act_request(np.zeros((2, 2), dtype=np.float32), frame_index=3), TIMEOUT_MS),
        (act_request(frame_index=4), 1e-3),
        (act_request(frame_index=5), TIMEOUT_MS),
    ]
    for request, timeout_ms in requests:
        stream.send(request, timeout_ms)
    answers = [stream.answer() for _ in requests]

    assert [answer.error_code for answer in answers] == [0, INVALID_ARGUMENT, INVALID_ARGUMENT, INVALID_ARGUMENT,
                                                        DEADLINE_EXCEEDED, 0]  # fmt: skip
    assert answers[1].error_message.startswith("ActRequest.observation is required")
    assert "timeout_ms is 0.0" in answers[2].error_message
    assert "[2, 2] does not match the shape [3]" in answers[3].error_message
    for answer, frame_index in ((answers[0], 0), (answers[5], 5)):
        assert answer.response.frame_index == frame_index
        assert answer.response.checkpoint_version == 1
        assert 0 <= answer.response.action < 4
    assert not answers[1].HasField("response")
    counts = status(server, connect)
    assert (counts.requests_answered, counts.requests_invalid, counts.requests_refused_deadline) == (2, 3, 1)
    assert counts.open_streams == 1


def test_requests_on_concurrent_streams_share_batches(
    make_server: MakeServer, connect: Connect, publish: Callable
) -> None:
    publish(1)
    server = make_server(forward_ms=20.0, max_batch_size=8)
    server.start()
    streams = [Stream(connect(server)) for _ in range(6)]

    for frame_index, stream in enumerate(streams):
        stream.send(act_request(np.full(3, frame_index, dtype=np.float32), frame_index=frame_index))
    answers = [stream.answer() for stream in streams]

    assert [answer.response.frame_index for answer in answers] == list(range(6))
    counts = status(server, connect)
    assert counts.requests_answered == 6
    assert counts.batches_run < 6
    assert max(answer.response.batch_size for answer in answers) > 1


def test_a_stream_beyond_the_spare_worker_threads_is_refused_and_act_still_answers(
    make_server: MakeServer, connect: Connect
) -> None:
    workers = 4
    server = make_server(workers=workers, max_batch_size=2)
    server.start()
    limit = workers - WORKERS_KEPT_FROM_STREAMS
    open_streams = [Stream(connect(server)) for _ in range(limit)]
    for stream in open_streams:
        assert stream.ask(act_request()).error_code == 0

    refused = Stream(connect(server))
    refused.send(act_request())
    with pytest.raises(grpc.RpcError) as error:
        refused.answer()

    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "RTRL_INFERENCE_WORKERS" in error.value.details()
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))
    assert stub.Act(act_request(frame_index=9), timeout=CALL_TIMEOUT_S).frame_index == 9
    counts = status(server, connect)
    assert (counts.open_streams, counts.max_open_streams) == (limit, limit)


def test_stopping_the_replica_ends_an_idle_stream_without_waiting_out_the_grace(
    make_server: MakeServer, connect: Connect
) -> None:
    server = make_server()
    server.start()
    stream = Stream(connect(server))
    assert stream.ask(act_request()).error_code == 0

    stopped = server.stop(grace=60.0)

    assert stopped.wait(CALL_TIMEOUT_S)
    # Which of the two the client sees depends on whether the cancel or the handler's return reaches it first.
    assert stream.end() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.OK)


def test_a_stream_computing_an_answer_when_the_replica_stops_sends_it_and_then_ends(
    make_server: MakeServer, connect: Connect, publish: Callable
) -> None:
    publish(1)
    server = make_server(forward_ms=300.0)
    server.start()
    stream = Stream(connect(server))
    stream.send(act_request(frame_index=7))
    wait_until_computing(server)

    stopped = server.stop(grace=60.0)
    answer = stream.answer()

    assert (answer.error_code, answer.response.frame_index) == (0, 7)
    assert stream.end() == grpc.StatusCode.OK
    assert stopped.wait(CALL_TIMEOUT_S)
