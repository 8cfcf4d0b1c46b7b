"""Real servers on port 0 for the fuzz suite: an inference replica serving a small checkpoint, a fresh
replica with no checkpoint, a gateway on ALE Pong, and a sequential learner that has consumed data."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import torch
from fuzz_support import CONSUMED_SEQS, SERVED_CONFIG, SMALL_MESSAGE_BYTES, vector_transition

from rtrl.checkpoints import CheckpointStore
from rtrl.local_redis import LocalRedis
from rtrl.models import build_model
from rtrl.security import SecuritySettings
from rtrl.services.env_gateway.server import Gateway
from rtrl.services.env_gateway.server import create_server as create_gateway_server
from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings
from rtrl.services.inference.server import InferenceServer
from rtrl.services.inference.server import create_server as create_inference_server
from rtrl.services.inference.settings import InferenceSettings
from rtrl.services.learner.algorithms.dqn import DQNConfig
from rtrl.services.learner.loop import Learner
from rtrl.services.learner.server import create_server as create_learner_server
from rtrl.services.learner.settings import LearnerSettings
from rtrl.transitions import STREAM_FIELD, encode


@pytest.fixture(scope="session")
def fuzz_redis() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture(scope="module")
def served_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceServer]:
    checkpoint_dir = tmp_path_factory.mktemp("fuzz-checkpoints")
    torch.set_num_threads(1)
    model = build_model(SERVED_CONFIG)
    CheckpointStore(checkpoint_dir).publish(1, model.state_dict(), {"model": SERVED_CONFIG.to_json(), "epsilon": 0.0})
    yield from _replica(checkpoint_dir)


@pytest.fixture
def fresh_replica(tmp_path: Path) -> Iterator[InferenceServer]:
    """A replica with no checkpoint: it builds a fresh policy for the first request's game."""
    yield from _replica(tmp_path / "empty")


@pytest.fixture
def small_message_replica(tmp_path: Path) -> Iterator[InferenceServer]:
    """A replica configured with RTRL_GRPC_MAX_MESSAGE_BYTES of 64 KiB."""
    yield from _replica(tmp_path / "empty", SecuritySettings(max_message_bytes=SMALL_MESSAGE_BYTES))


def _replica(checkpoint_dir: Path, security: SecuritySettings | None = None) -> Iterator[InferenceServer]:
    settings = InferenceSettings(
        host="127.0.0.1",
        port=0,
        replica_id="fuzz",
        checkpoint_dir=str(checkpoint_dir),
        device="cpu",
        epsilon_start=0.0,
        redis_url="",
        security=security or SecuritySettings(),
    )
    server, _ = create_inference_server(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop(0.5).wait()


@pytest.fixture(scope="module")
def gateway(fuzz_redis: LocalRedis) -> Iterator[tuple[Gateway, str]]:
    settings = replace(
        GatewaySettings(),
        port=0,
        gateway_id="gateway-fuzz",
        env=EnvSpec.parse("ale:Pong"),
        redis_url=fuzz_redis.url,
        stream=f"fuzz:gateway:{uuid.uuid4().hex[:8]}",
        replica_registry=f"fuzz:replicas:{uuid.uuid4().hex[:8]}",
    )
    gateway = Gateway(settings)
    server, port = create_gateway_server(settings, gateway)
    server.start()
    gateway.start()
    try:
        yield gateway, f"127.0.0.1:{port}"
    finally:
        gateway.stop()
        server.stop(None).wait()


@pytest.fixture(scope="module")
def sequential_learner(
    fuzz_redis: LocalRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Learner, str]]:
    """A learner in sequential mode (Train does work there) that has consumed seqs 0..39 of FUZZ_GATEWAY."""
    stream = f"fuzz:learner:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(fuzz_redis.url)
    try:
        for seq in range(CONSUMED_SEQS):
            client.xadd(stream, {STREAM_FIELD: encode(vector_transition(seq))})
    finally:
        client.close()
    settings = LearnerSettings(
        host="127.0.0.1",
        port=0,
        redis_url=fuzz_redis.url,
        stream=stream,
        consumer_name="learner-fuzz",
        checkpoint_dir=tmp_path_factory.mktemp("fuzz-learner"),
        checkpoint_every_updates=1000,
        torch_threads=1,
        device="cpu",
        mode="sequential",
    ).with_config(DQNConfig(learning_starts=16, batch_size=8, buffer_size=1000))
    learner = Learner(settings)
    server, port = create_learner_server(settings, learner)
    server.start()
    learner.start()
    deadline = time.monotonic() + 60
    while learner.status().transitions_consumed < CONSUMED_SEQS:
        assert time.monotonic() < deadline, "the fuzz learner never consumed its transitions"
        time.sleep(0.05)
    try:
        yield learner, f"127.0.0.1:{port}"
    finally:
        learner.stop()
        server.stop(0).wait()
