"""Tests of a real inference replica over gRPC: health, Act, errors, GetStatus, reflection, the entry point."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from rtrl.models import ModelConfig, QNetwork, parameter_count
from rtrl.services.inference.server import SERVICE_NAME, InferenceServer
from rtrl.tensors import to_proto
from rtrl.v1 import inference_pb2, inference_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[3]
OBS = np.array([0.1, -0.4, 0.7], dtype=np.float32)
ACTIONS = 4
CALL_TIMEOUT_S = 10.0
# Generous bound for background work (hot reload, process start); nothing asserts how long it took.
WAIT_BOUND_S = 30.0

MakeServer = Callable[..., InferenceServer]
Connect = Callable[[InferenceServer], grpc.Channel]


def act_request(
    observation: np.ndarray = OBS, action_count: int = ACTIONS, frame_index: int = 0
) -> inference_pb2.ActRequest:
    return inference_pb2.ActRequest(
        observation=to_proto(observation), gateway_id="test-gateway", frame_index=frame_index, action_count=action_count
    )


def health_of(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S).status


def test_health_is_not_serving_until_the_initial_load_finished(
    make_server: MakeServer, connect: Connect, publish: Callable
) -> None:
    publish(1)
    server = make_server()
    server.listen()
    channel = connect(server)

    assert health_of(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_of(channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
    server.become_ready()
    assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
    assert health_of(channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING


def test_act_answers_with_the_checkpoint_version_and_a_valid_action(
    make_server: MakeServer, connect: Connect, publish: Callable
) -> None:
    publish(1)
    server = make_server()
    server.start()
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))

    answer = stub.Act(act_request(frame_index=1234), timeout=CALL_TIMEOUT_S)

    assert answer.checkpoint_version == 1
    assert 0 <= answer.action < ACTIONS
    assert len(answer.action_values) == ACTIONS
    assert answer.action == int(np.argmax(answer.action_values))
    assert (answer.epsilon, answer.explored, answer.behaviour_log_prob) == (0.0, False, 0.0)
    assert answer.frame_index == 1234
    assert answer.inference_ms > 0


def test_act_before_any_checkpoint_is_answered_by_the_fresh_policy(make_server: MakeServer, connect: Connect) -> None:
    server = make_server(epsilon_start=1.0)
    server.start()
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))

    answer = stub.Act(act_request(), timeout=CALL_TIMEOUT_S)

    assert (answer.checkpoint_version, answer.epsilon, answer.explored) == (0, 1.0, True)
    assert answer.behaviour_log_prob == pytest.approx(np.log(1 / ACTIONS))


def test_wrong_shaped_observation_is_invalid_argument_naming_the_expected_shape(
    make_server: MakeServer, connect: Connect, publish: Callable
) -> None:
    publish(1)
    server = make_server()
    server.start()
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))

    with pytest.raises(grpc.RpcError) as error:
        stub.Act(act_request(np.zeros((2, 2), dtype=np.float32)), timeout=CALL_TIMEOUT_S)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[2, 2] does not match the shape [3]" in error.value.details()


def test_missing_observation_is_invalid_argument(make_server: MakeServer, connect: Connect) -> None:
    server = make_server()
    server.start()
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))

    with pytest.raises(grpc.RpcError) as error:
        stub.Act(inference_pb2.ActRequest(action_count=ACTIONS), timeout=CALL_TIMEOUT_S)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("ActRequest.observation is required")


def test_act_with_a_microsecond_deadline_is_deadline_exceeded(make_server: MakeServer, connect: Connect) -> None:
    server = make_server()
    server.start()
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))

    with pytest.raises(grpc.RpcError) as error:
        stub.Act(act_request(), timeout=1e-6)

    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_get_status_reflects_counters_and_the_served_version(
    make_server: MakeServer, connect: Connect, publish: Callable, small_config: ModelConfig
) -> None:
    publish(1)
    server = make_server()
    server.start()
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))
    for frame in range(3):
        stub.Act(act_request(frame_index=frame), timeout=CALL_TIMEOUT_S)
    with pytest.raises(grpc.RpcError):
        stub.Act(act_request(action_count=ACTIONS + 1), timeout=CALL_TIMEOUT_S)

    # A forward pass made slow by a real torch hook gives the replica a measured forward time far
    # longer than the next call's deadline, which it must then refuse on arrival.
    slow_forward_s, short_deadline_s = 1.0, 0.5
    served = server.policy.served
    assert served is not None
    handle = served.model.register_forward_pre_hook(lambda module, inputs: time.sleep(slow_forward_s))
    stub.Act(act_request(), timeout=CALL_TIMEOUT_S)
    handle.remove()
    with pytest.raises(grpc.RpcError) as refused:
        stub.Act(act_request(), timeout=short_deadline_s)
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    publish(2)
    give_up_at = time.monotonic() + WAIT_BOUND_S
    status = stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=CALL_TIMEOUT_S)
    while status.checkpoint_version != 2 and time.monotonic() < give_up_at:
        time.sleep(0.02)
        status = stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=CALL_TIMEOUT_S)

    assert status.replica_id == "replica-under-test"
    assert status.checkpoint_version == 2
    assert (status.requests_answered, status.requests_refused_deadline, status.requests_invalid) == (4, 1, 1)
    assert status.in_flight == 0
    assert status.inference_ms.count == 4
    assert (status.checkpoints_loaded, status.checkpoint_load_failures) == (2, 0)
    assert status.model_arch == "mlp"
    assert list(status.observation_shape) == [3]
    assert status.action_count == ACTIONS
    assert status.parameter_count == parameter_count(QNetwork(small_config))
    assert status.epsilon == 0.0
    assert status.model_width == 1
    # Every answered call is in the latency window, every forward pass in the batch-size window.
    assert status.latency_ms.count == 4
    assert status.batch_size.count == status.batches_run == 4
    assert (status.max_batch_size, status.max_wait_ms) == (8, 0.0)
    assert status.expected_forward_ms >= slow_forward_s * 1000.0
    assert status.requests_answered_late == 0
    assert status.requests_per_second > 0
    # Without RTRL_REDIS_URL the replica registers nowhere.
    assert (status.advertised_address, status.registered) == ("", False)


def test_concurrent_act_calls_are_answered_in_shared_batches(
    make_server: MakeServer, connect: Connect, publish: Callable
) -> None:
    calls = 6
    publish(1)
    server = make_server(forward_ms=20.0, max_batch_size=8)
    server.start()
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))
    observations = [np.full(3, call, dtype=np.float32) for call in range(calls)]

    futures = [
        stub.Act.future(act_request(observation, frame_index=call), timeout=CALL_TIMEOUT_S)
        for call, observation in enumerate(observations)
    ]
    answers = [future.result() for future in futures]
    status = stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=CALL_TIMEOUT_S)

    assert [answer.frame_index for answer in answers] == list(range(calls))
    assert status.requests_answered == calls
    assert status.batches_run < calls
    assert status.batch_size.max > 1
    assert max(answer.batch_size for answer in answers) == status.batch_size.max
    # Each answer holds the values of its own observation.
    served = server.policy.served
    assert served is not None
    for observation, answer in zip(observations, answers, strict=True):
        expected = served.model(torch.from_numpy(observation[None].copy()))[0].tolist()
        assert list(answer.action_values) == pytest.approx(expected, abs=1e-6)


def test_reflection_lists_the_inference_service(make_server: MakeServer, connect: Connect) -> None:
    server = make_server()
    server.start()

    services = ProtoReflectionDescriptorDatabase(connect(server)).get_services()

    assert "rtrl.v1.InferenceService" in services
    assert "grpc.health.v1.Health" in services


def test_entry_point_with_an_invalid_port_exits_2_naming_the_variable() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "rtrl.services.inference"],
        cwd=REPO_ROOT,
        env={**os.environ, "RTRL_INFERENCE_PORT": "notaport"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 2
    assert "RTRL_INFERENCE_PORT" in completed.stderr
    assert "set it to" in completed.stderr


def test_entry_point_serves_until_sigterm_and_then_exits_cleanly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RTRL_INFERENCE_PORT": "0",
        "RTRL_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "RTRL_INFERENCE_DEVICE": "cpu",
        "RTRL_EPSILON_START": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "rtrl.services.inference"],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port is not None, "the replica never said where it listens"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            give_up_at = time.monotonic() + WAIT_BOUND_S
            while health_of(channel) != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < give_up_at:
                time.sleep(0.05)
            answer = inference_pb2_grpc.InferenceServiceStub(channel).Act(act_request(), timeout=CALL_TIMEOUT_S)
            assert answer.checkpoint_version == 0
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=WAIT_BOUND_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "stopped" in rest
