"""Property-based fuzzing of every RPC's requests against real servers on port 0.

Random field values (negative-looking, huge, empty, unknown enum values), observations of the wrong
shape, dtype and size, NaN and infinite values, tiny and huge deadlines, messages over the size limit,
bytes that are not a message at all, and frame streams opened and abandoned over and over. Every reply
is OK or a clear refusal (conftest.check_reply), and the server answers normally afterwards.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from fuzz_support import CLEAR_CODES, CONSUMED_SEQS, FUZZ_GATEWAY, SERVED_CONFIG, check_reply
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rtrl.act_socket import HELLO, LENGTH, MAX_TOKEN_BYTES, client_hello, frame, receive_exactly, receive_length
from rtrl.grpc_util import MAX_MESSAGE_BYTES
from rtrl.services.inference.server import InferenceServer
from rtrl.tensors import to_proto
from rtrl.v1 import (
    common_pb2,
    env_gateway_pb2,
    env_gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    learner_pb2,
    learner_pb2_grpc,
)

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
UINT32 = st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1))
UINT64 = st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1))
DEADLINES_S = st.one_of(st.floats(0.0005, 1.0), st.just(1e6))

# Any tensor: arbitrary shapes, unknown dtypes, data of any size.
any_tensor = st.builds(
    common_pb2.Tensor,
    shape=st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), max_size=5),
    dtype=st.integers(0, 7),
    data=st.binary(max_size=256),
)


@st.composite
def consistent_tensor(draw: st.DrawFn) -> common_pb2.Tensor:
    """Shape, dtype and data that agree (so validation goes past the codec), with NaN and infinities."""
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    size = int(np.prod(shape))
    if draw(st.booleans()):
        values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=size, max_size=size))
        return to_proto(np.array(values, dtype=np.float32).reshape(shape))
    values = draw(st.lists(st.integers(0, 255), min_size=size, max_size=size))
    return to_proto(np.array(values, dtype=np.uint8).reshape(shape))


@st.composite
def served_shape_tensor(draw: st.DrawFn) -> common_pb2.Tensor:
    """The served model's shape (3,), float32, with any values including NaN and infinities."""
    values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=3, max_size=3))
    return to_proto(np.array(values, dtype=np.float32))


act_requests = st.builds(
    inference_pb2.ActRequest,
    observation=st.one_of(st.none(), any_tensor, consistent_tensor(), served_shape_tensor()),
    gateway_id=st.text(max_size=40),
    frame_index=UINT64,
    action_count=st.one_of(UINT32, st.just(SERVED_CONFIG.action_count)),
)


def healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return response.status == health_pb2.HealthCheckResponse.SERVING


def act_normally(address: str) -> inference_pb2.ActResponse:
    observation = to_proto(np.zeros(SERVED_CONFIG.observation_shape, dtype=np.float32))
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.ActRequest(observation=observation, action_count=SERVED_CONFIG.action_count)
        return stub.Act(request, timeout=5)


# -- inference --------------------------------------------------------------------------------------


def test_act_answers_every_request_clearly(served_replica, resilience_ledger) -> None:
    address = f"127.0.0.1:{served_replica.port}"
    channel = grpc.insecure_channel(address)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    codes: set[grpc.StatusCode] = set()

    # A well-formed request among the generated ones, so the success path is always exercised: random
    # draws rarely make one (the served shape, a matching action count, and no NaN or infinity).
    valid = inference_pb2.ActRequest(
        observation=to_proto(np.zeros(SERVED_CONFIG.observation_shape, dtype=np.float32)),
        action_count=SERVED_CONFIG.action_count,
    )

    @FUZZ
    @given(request=act_requests, deadline_s=DEADLINES_S)
    @example(request=valid, deadline_s=5.0)
    def act(request: inference_pb2.ActRequest, deadline_s: float) -> None:
        resilience_ledger.inputs["inference Act"] += 1
        codes.add(check_reply(lambda t: stub.Act(request, timeout=t), deadline_s))

    try:
        act()
    finally:
        channel.close()
    assert grpc.StatusCode.INVALID_ARGUMENT in codes and grpc.StatusCode.OK in codes, codes
    assert healthy(address)
    assert act_normally(address).checkpoint_version == 1


@pytest.mark.parametrize(
    ("shape", "action_count"),
    [((3,), 4_000_000_000), ((1, 1_000_000), 4), ((0,), 4), ((4, 2048, 8), 4)],
    ids=["huge-action-count", "huge-mlp-input", "empty-axis", "huge-image"],
)
def test_a_fresh_replica_refuses_to_build_a_model_no_memory_could_hold(
    fresh_replica, resilience_ledger, shape: tuple[int, ...], action_count: int
) -> None:
    """Before any checkpoint the first request's game decides the network: a hostile first request must
    be refused, not make the replica allocate gigabytes."""
    resilience_ledger.inputs["inference Act (first request of a fresh replica)"] += 1
    address = f"127.0.0.1:{fresh_replica.port}"
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.ActRequest(
            observation=to_proto(np.zeros(shape, dtype=np.uint8)), action_count=action_count
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.Act(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "no network can be built" in refused.value.details()
    assert healthy(address)


def test_inference_get_status_with_any_deadline(served_replica, resilience_ledger) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served_replica.port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        @FUZZ
        @given(deadline_s=DEADLINES_S)
        def status(deadline_s: float) -> None:
            resilience_ledger.inputs["inference GetStatus"] += 1
            check_reply(
                lambda t: stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=t), deadline_s
            )

        status()


def test_a_message_over_the_size_limit_is_resource_exhausted(served_replica, resilience_ledger) -> None:
    resilience_ledger.inputs["inference Act (over the message size limit)"] += 1
    address = f"127.0.0.1:{served_replica.port}"
    oversized = inference_pb2.ActRequest(
        observation=common_pb2.Tensor(
            shape=[MAX_MESSAGE_BYTES + 1], dtype=common_pb2.D_TYPE_UINT8, data=bytes(MAX_MESSAGE_BYTES + 1)
        ),
        action_count=4,
    )
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Act(oversized, timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details()
    assert act_normally(address).checkpoint_version == 1


def test_a_configured_max_message_size_refuses_bigger_requests_and_serves_smaller_ones(
    small_message_replica, resilience_ledger
) -> None:
    """RTRL_GRPC_MAX_MESSAGE_BYTES set to 64 KiB: 65 KiB is RESOURCE_EXHAUSTED before any servicer runs,
    60 KiB reaches the replica (and is answered, here with a clear INVALID_ARGUMENT for its shape)."""
    address = f"127.0.0.1:{small_message_replica.port}"
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for size, expected in [(65 * 1024, grpc.StatusCode.RESOURCE_EXHAUSTED), (60 * 1024, None)]:
            resilience_ledger.inputs["inference Act (configured max message size)"] += 1
            request = inference_pb2.ActRequest(
                observation=to_proto(np.zeros((1, 1, size), dtype=np.uint8)), action_count=4
            )
            if expected is None:
                code = check_reply(lambda t, r=request: stub.Act(r, timeout=t), 10.0)
                assert code != grpc.StatusCode.RESOURCE_EXHAUSTED
            else:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Act(request, timeout=10)
                assert refused.value.code() == expected and refused.value.details()
    assert healthy(address)


@FUZZ
@given(junk=st.binary(min_size=1, max_size=200))
def test_bytes_that_are_not_a_message_are_refused_clearly(served_replica, resilience_ledger, junk: bytes) -> None:
    resilience_ledger.inputs["inference Act (raw bytes)"] += 1
    with grpc.insecure_channel(f"127.0.0.1:{served_replica.port}") as channel:
        raw = channel.unary_unary(
            "/rtrl.v1.InferenceService/Act", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        check_reply(lambda t: raw(junk, timeout=t), 5.0)


def test_act_stream_answers_every_request_clearly_and_stays_open(served_replica, resilience_ledger) -> None:
    address = f"127.0.0.1:{served_replica.port}"
    channel = grpc.insecure_channel(address)
    requests: queue.SimpleQueue[inference_pb2.ActStreamRequest | None] = queue.SimpleQueue()
    # One deadline for the whole stream, so that a hang fails the test instead of holding it.
    answers = inference_pb2_grpc.InferenceServiceStub(channel).ActStream(iter(requests.get, None), timeout=600)
    codes: set[int] = set()
    clear = {code.value[0] for code in CLEAR_CODES}
    valid = inference_pb2.ActRequest(
        observation=to_proto(np.zeros(SERVED_CONFIG.observation_shape, dtype=np.float32)),
        action_count=SERVED_CONFIG.action_count,
    )

    @FUZZ
    @given(request=act_requests, timeout_ms=st.floats(allow_nan=True, allow_infinity=True))
    @example(request=valid, timeout_ms=5000.0)
    def act(request: inference_pb2.ActRequest, timeout_ms: float) -> None:
        resilience_ledger.inputs["inference ActStream"] += 1
        requests.put(inference_pb2.ActStreamRequest(request=request, timeout_ms=timeout_ms))
        answer = next(answers)
        codes.add(answer.error_code)
        if answer.error_code:
            assert answer.error_code in clear and answer.error_message, answer
            assert not answer.HasField("response")
        else:
            assert 0 <= answer.response.action < SERVED_CONFIG.action_count

    try:
        act()
        requests.put(inference_pb2.ActStreamRequest(request=valid, timeout_ms=5000.0))
        after = next(answers)  # the same stream still answers
    finally:
        requests.put(None)
        answers.cancel()
        channel.close()
    assert (after.error_code, after.response.checkpoint_version) == (0, 1)
    assert grpc.StatusCode.INVALID_ARGUMENT.value[0] in codes and 0 in codes, codes
    assert healthy(address)


@FUZZ
@given(junk=st.binary(min_size=1, max_size=200))
def test_junk_bytes_end_an_act_stream_clearly(served_replica, resilience_ledger, junk: bytes) -> None:
    resilience_ledger.inputs["inference ActStream (raw bytes)"] += 1
    with grpc.insecure_channel(f"127.0.0.1:{served_replica.port}") as channel:
        raw = channel.stream_stream(
            "/rtrl.v1.InferenceService/ActStream", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        # Bytes that happen to decode are answered like any request; the others end the stream clearly.
        check_reply(lambda t: next(raw(iter([junk]), timeout=t)), 5.0)


def act_socket(replica: InferenceServer, hello: bytes = client_hello("")) -> socket.socket:
    assert replica.act_socket is not None
    connection = socket.create_connection(("127.0.0.1", replica.act_socket.port), timeout=10.0)
    connection.sendall(hello)
    return connection


def test_the_act_socket_answers_every_request_clearly_and_stays_open(served_replica, resilience_ledger) -> None:
    clear = {code.value[0] for code in CLEAR_CODES}
    codes: set[int] = set()
    with act_socket(served_replica) as connection:
        assert receive_exactly(connection, len(HELLO)) == HELLO

        def ask(message: inference_pb2.ActStreamRequest) -> inference_pb2.ActStreamResponse:
            connection.sendall(frame(message.SerializeToString()))
            return inference_pb2.ActStreamResponse.FromString(receive_exactly(connection, receive_length(connection)))

        @FUZZ
        @given(request=act_requests, timeout_ms=st.floats(allow_nan=True, allow_infinity=True))
        def act(request: inference_pb2.ActRequest, timeout_ms: float) -> None:
            resilience_ledger.inputs["inference act socket"] += 1
            answer = ask(inference_pb2.ActStreamRequest(request=request, timeout_ms=timeout_ms))
            codes.add(answer.error_code)
            if answer.error_code:
                assert answer.error_code in clear and answer.error_message, answer
            else:
                assert 0 <= answer.response.action < SERVED_CONFIG.action_count

        act()
        valid = inference_pb2.ActRequest(
            observation=to_proto(np.zeros(SERVED_CONFIG.observation_shape, dtype=np.float32)),
            action_count=SERVED_CONFIG.action_count,
        )
        after = ask(inference_pb2.ActStreamRequest(request=valid, timeout_ms=5000.0))  # the same connection
    assert (after.error_code, after.response.checkpoint_version) == (0, 1)
    assert grpc.StatusCode.INVALID_ARGUMENT.value[0] in codes, codes


def whole_hello(data: bytes) -> bool:
    """`data` starts with a whole client hello that a replica without a token accepts (any token goes)."""
    prefix = len(HELLO) + LENGTH.size
    if data[: len(HELLO)] != HELLO or len(data) < prefix:
        return False
    (length,) = LENGTH.unpack(data[len(HELLO) : prefix])
    return length <= MAX_TOKEN_BYTES and len(data) >= prefix + length


@FUZZ
@given(junk=st.binary(min_size=1, max_size=200), after_hello=st.booleans())
def test_junk_on_the_act_socket_gets_clear_answers_or_a_closed_connection_never_a_hang(
    served_replica, resilience_ledger, junk: bytes, after_hello: bool
) -> None:
    """Junk in place of the hello, or after it: once the client has sent all it will, the replica
    answers every whole frame clearly and closes the connection; it never waits for more."""
    resilience_ledger.inputs["inference act socket (raw bytes)"] += 1
    says_hello = after_hello or whole_hello(junk)
    with act_socket(served_replica, client_hello("") + junk if after_hello else junk) as connection:
        received = b""
        try:
            connection.shutdown(socket.SHUT_WR)
            while chunk := connection.recv(65536):  # a hang fails with the socket's 10 s timeout
                received += chunk
        except (ConnectionResetError, OSError) as error:
            # Reset, or already gone (ENOTCONN), with bytes of ours unread: only when they were not the protocol.
            assert not isinstance(error, TimeoutError) and not says_hello, error
    if not says_hello:
        assert received == b""  # no whole hello: closed without a word
        return
    assert received[: len(HELLO)] == HELLO
    clear = {code.value[0] for code in CLEAR_CODES}
    answers = received[len(HELLO) :]
    while answers:
        (length,) = LENGTH.unpack(answers[: LENGTH.size])
        answer = inference_pb2.ActStreamResponse.FromString(answers[LENGTH.size : LENGTH.size + length])
        assert answer.error_code == 0 or (answer.error_code in clear and answer.error_message), answer
        answers = answers[LENGTH.size + length :]


# -- gateway ----------------------------------------------------------------------------------------


def test_gateway_unary_calls_with_any_deadline(gateway, resilience_ledger) -> None:
    _, address = gateway
    with grpc.insecure_channel(address) as channel:
        stub = env_gateway_pb2_grpc.EnvGatewayServiceStub(channel)

        @FUZZ
        @given(deadline_s=DEADLINES_S, which=st.sampled_from(["GetSpec", "GetStats"]))
        def call(deadline_s: float, which: str) -> None:
            resilience_ledger.inputs[f"gateway {which}"] += 1
            if which == "GetSpec":
                check_reply(lambda t: stub.GetSpec(env_gateway_pb2.GetSpecRequest(), timeout=t), deadline_s)
            else:
                check_reply(lambda t: stub.GetStats(env_gateway_pb2.GetStatsRequest(), timeout=t), deadline_s)

        call()
    assert healthy(address)


def test_frame_streams_opened_and_abandoned_leave_no_viewer_and_no_thread(gateway, resilience_ledger) -> None:
    gateway_object, address = gateway
    threads_before = set(threading.enumerate())
    with grpc.insecure_channel(address) as channel:
        stub = env_gateway_pb2_grpc.EnvGatewayServiceStub(channel)

        @settings(max_examples=40, deadline=None)
        @given(every_nth_frame=UINT32, frames_read=st.integers(0, 3))
        def stream(every_nth_frame: int, frames_read: int) -> None:
            resilience_ledger.inputs["gateway StreamFrames (opened and abandoned)"] += 1
            call = stub.StreamFrames(env_gateway_pb2.StreamFramesRequest(every_nth_frame=every_nth_frame), timeout=1)
            try:
                for _, frame in zip(range(frames_read), call, strict=False):
                    assert frame.rgb
            except grpc.RpcError as error:
                # A huge every_nth_frame yields nothing before the deadline; that is the caller's choice.
                assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
            call.cancel()

        stream()
    give_up_s = time.monotonic() + 5
    while len(gateway_object.frames) and time.monotonic() < give_up_s:
        time.sleep(0.05)
    assert len(gateway_object.frames) == 0
    # The gRPC server's pool starts its worker threads as streams need them and keeps them (bounded by
    # its size, whatever the number of streams): seen here 2 or 3 new ones. Any other new thread would
    # be one left behind by a stream.
    new_threads = [t.name for t in set(threading.enumerate()) - threads_before]
    assert len([name for name in new_threads if not name.startswith("ThreadPoolExecutor-")]) <= 2, new_threads
    assert healthy(address)


def test_more_viewers_than_the_gateway_serves_are_refused_and_the_gateway_still_answers(
    gateway, resilience_ledger
) -> None:
    from rtrl.services.env_gateway.server import MAX_VIEWERS

    gateway_object, address = gateway
    with grpc.insecure_channel(address) as channel:
        stub = env_gateway_pb2_grpc.EnvGatewayServiceStub(channel)
        calls = [stub.StreamFrames(env_gateway_pb2.StreamFramesRequest(), timeout=30) for _ in range(MAX_VIEWERS)]
        try:
            for call in calls:
                next(call)
            resilience_ledger.inputs["gateway StreamFrames (one viewer too many)"] += 1
            extra = stub.StreamFrames(env_gateway_pb2.StreamFramesRequest(), timeout=10)
            with pytest.raises(grpc.RpcError) as refused:
                next(extra)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert str(MAX_VIEWERS) in refused.value.details()
            assert stub.GetStats(env_gateway_pb2.GetStatsRequest(), timeout=5).frames > 0
        finally:
            for call in calls:
                call.cancel()
    give_up_s = time.monotonic() + 5
    while len(gateway_object.frames) and time.monotonic() < give_up_s:
        time.sleep(0.05)
    assert len(gateway_object.frames) == 0


# -- learner ----------------------------------------------------------------------------------------

train_requests = st.builds(
    learner_pb2.TrainRequest,
    gateway_id=st.one_of(st.just(FUZZ_GATEWAY), st.text(max_size=30)),
    through_seq=st.one_of(st.integers(0, CONSUMED_SEQS + 5), UINT64),
    updates=st.one_of(st.integers(0, 4), UINT32),
)


def test_train_answers_every_request_clearly_and_never_holds_the_learner(sequential_learner, resilience_ledger) -> None:
    learner, address = sequential_learner
    with grpc.insecure_channel(address) as channel:
        stub = learner_pb2_grpc.LearnerServiceStub(channel)

        @FUZZ
        @given(request=train_requests, deadline_s=st.floats(0.0005, 0.5))
        def train(request: learner_pb2.TrainRequest, deadline_s: float) -> None:
            resilience_ledger.inputs["learner Train"] += 1
            check_reply(lambda t: stub.Train(request, timeout=t), deadline_s)

        @FUZZ
        @given(deadline_s=DEADLINES_S)
        def status(deadline_s: float) -> None:
            resilience_ledger.inputs["learner GetStatus"] += 1
            check_reply(lambda t: stub.GetStatus(learner_pb2.LearnerServiceGetStatusRequest(), timeout=t), deadline_s)

        train()
        status()
        # Afterwards it still trains when asked properly, promptly.
        request = learner_pb2.TrainRequest(gateway_id=FUZZ_GATEWAY, through_seq=0, updates=1)
        assert stub.Train(request, timeout=10).updates == 1
    assert learner.failure is None
    assert healthy(address)


def test_train_with_more_updates_than_one_call_may_run_is_invalid_argument(sequential_learner) -> None:
    _, address = sequential_learner
    with grpc.insecure_channel(address) as channel:
        stub = learner_pb2_grpc.LearnerServiceStub(channel)
        request = learner_pb2.TrainRequest(gateway_id=FUZZ_GATEWAY, through_seq=0, updates=2**32 - 1)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Train(request, timeout=1e6)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most" in refused.value.details()
