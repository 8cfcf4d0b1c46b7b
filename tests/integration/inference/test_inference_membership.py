"""Live membership over a real Redis: replicas register when ready, leave on shutdown, age out when killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from rtrl.local_redis import LocalRedis, free_port
from rtrl.registry import DEFAULT_MAX_AGE_MS, live_replicas
from rtrl.services.inference.server import InferenceServer
from rtrl.tensors import to_proto
from rtrl.v1 import inference_pb2, inference_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[3]
OBS = np.array([0.1, -0.4, 0.7], dtype=np.float32)
ACTIONS = 4
CALL_TIMEOUT_S = 10.0
# Generous bound for background work (heartbeats, process start); nothing asserts how long it took.
WAIT_BOUND_S = 30.0

MakeServer = Callable[..., InferenceServer]


@pytest.fixture(scope="module")
def local_redis() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
def client(local_redis: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(local_redis.url)
    yield client
    client.close()


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return f"test:{request.node.name}"


def wait_for_replicas(client: redis.Redis, key: str, condition: Callable[[list[str]], bool]) -> list[str]:
    give_up_at = time.monotonic() + WAIT_BOUND_S
    replicas = live_replicas(client, key, DEFAULT_MAX_AGE_MS)
    while not condition(replicas) and time.monotonic() < give_up_at:
        time.sleep(0.05)
        replicas = live_replicas(client, key, DEFAULT_MAX_AGE_MS)
    return replicas


def test_two_replicas_register_and_one_that_stops_gracefully_leaves_at_once(
    make_server: MakeServer, local_redis: LocalRedis, client: redis.Redis, key: str
) -> None:
    servers = [make_server(redis_url=local_redis.url, replica_registry=key) for _ in range(2)]
    addresses = sorted(f"127.0.0.1:{server.port}" for server in servers)
    for server in servers:
        server.start()

    assert wait_for_replicas(client, key, lambda replicas: replicas == addresses) == addresses
    servers[0].stop(1.0).wait()

    assert live_replicas(client, key) == [f"127.0.0.1:{servers[1].port}"]
    assert client.zscore(key, f"127.0.0.1:{servers[0].port}") is None


def test_replica_registers_only_once_it_is_ready(
    make_server: MakeServer, local_redis: LocalRedis, client: redis.Redis, key: str
) -> None:
    server = make_server(redis_url=local_redis.url, replica_registry=key)
    server.listen()

    assert live_replicas(client, key) == []
    server.become_ready()
    assert wait_for_replicas(client, key, bool) == [f"127.0.0.1:{server.port}"]


def test_replica_killed_without_shutting_down_ages_out(
    tmp_path: Path, local_redis: LocalRedis, client: redis.Redis, key: str
) -> None:
    env = {
        **os.environ,
        "RTRL_INFERENCE_HOST": "127.0.0.1",
        "RTRL_INFERENCE_PORT": "0",
        "RTRL_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "RTRL_INFERENCE_DEVICE": "cpu",
        "RTRL_REDIS_URL": local_redis.url,
        "RTRL_REPLICA_REGISTRY": key,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "rtrl.services.inference"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
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
        address = f"127.0.0.1:{port}"
        assert wait_for_replicas(client, key, lambda replicas: address in replicas) == [address]

        process.send_signal(signal.SIGKILL)
        process.wait(WAIT_BOUND_S)

        # Nobody unregistered it: its entry stays, and readers stop listing it once it is too old.
        assert wait_for_replicas(client, key, lambda replicas: address not in replicas) == []
        assert client.zscore(key, address) is not None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_get_status_says_where_the_replica_registered(
    make_server: MakeServer, local_redis: LocalRedis, client: redis.Redis, key: str
) -> None:
    server = make_server(redis_url=local_redis.url, replica_registry=key, advertise_address="inference-7:50061")
    server.start()
    wait_for_replicas(client, key, bool)

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        status = inference_pb2_grpc.InferenceServiceStub(channel).GetStatus(
            inference_pb2.InferenceServiceGetStatusRequest(), timeout=CALL_TIMEOUT_S
        )

    assert live_replicas(client, key) == ["inference-7:50061"]
    assert status.advertised_address == "inference-7:50061"
    assert status.registered


def test_replica_keeps_serving_while_redis_is_unreachable(make_server: MakeServer, key: str) -> None:
    server = make_server(redis_url=f"redis://127.0.0.1:{free_port()}/0", replica_registry=key)
    server.start()
    heartbeat = server.heartbeat
    assert heartbeat is not None
    give_up_at = time.monotonic() + WAIT_BOUND_S
    while heartbeat.failures < 2 and time.monotonic() < give_up_at:
        time.sleep(0.05)

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        answer = stub.Act(
            inference_pb2.ActRequest(observation=to_proto(OBS), action_count=ACTIONS), timeout=CALL_TIMEOUT_S
        )
        status = stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=CALL_TIMEOUT_S)

    assert heartbeat.failures >= 2, "the heartbeat keeps retrying"
    assert answer.checkpoint_version == 0
    assert not status.registered
