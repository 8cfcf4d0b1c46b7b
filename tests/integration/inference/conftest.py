"""Fixtures for the inference integration tests: real replicas on port 0 and real published checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from inference_doubles import bench_policy_factory

from rtrl.checkpoints import Checkpoint, CheckpointStore
from rtrl.models import ModelConfig, build_model
from rtrl.services.inference.policy import Policy
from rtrl.services.inference.server import InferenceServer, create_server
from rtrl.services.inference.settings import InferenceSettings

SMALL_CONFIG = ModelConfig(arch="mlp", observation_shape=(3,), action_count=4, hidden_size=16)
SHUTDOWN_GRACE_S = 1.0


@pytest.fixture(autouse=True)
def one_torch_thread() -> None:
    # create_server sets this too; set here so that publishing in the test process also uses one core.
    torch.set_num_threads(1)


@pytest.fixture
def small_config() -> ModelConfig:
    return SMALL_CONFIG


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    return tmp_path / "checkpoints"


@pytest.fixture
def publish(checkpoint_dir: Path) -> Callable[..., Checkpoint]:
    """Publishes a real checkpoint of `config` (either head) with CheckpointStore, as the learner does."""
    store = CheckpointStore(checkpoint_dir)

    def _publish(version: int, config: ModelConfig = SMALL_CONFIG, *, epsilon: float = 0.0) -> Checkpoint:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(version)
            model = build_model(config)
        return store.publish(version, model.state_dict(), {"model": config.to_json(), "epsilon": epsilon})

    return _publish


@pytest.fixture
def make_server(checkpoint_dir: Path) -> Iterator[Callable[..., InferenceServer]]:
    """Creates (not starts) replicas bound to a free port; stops them after the test.

    `forward_ms` makes every forward pass last at least that long (the benchmark's BenchPolicy): a replica busy with a
    bigger model."""
    servers: list[InferenceServer] = []

    def _make(*, forward_ms: float = 0.0, **overrides: Any) -> InferenceServer:
        settings = InferenceSettings(
            **{
                "host": "127.0.0.1",
                "port": 0,
                "replica_id": "replica-under-test",
                "checkpoint_dir": str(checkpoint_dir),
                "checkpoint_poll_s": 0.05,
                "device": "cpu",
                "epsilon_start": 0.0,
                "workers": 8,
                **overrides,
            }
        )
        server, port = create_server(
            settings, bench_policy_factory(forward_ms, zero_cost=False) if forward_ms else Policy.from_settings
        )
        assert port > 0
        servers.append(server)
        return server

    yield _make
    for server in servers:
        server.stop(SHUTDOWN_GRACE_S).wait()


@pytest.fixture
def connect() -> Iterator[Callable[[InferenceServer], grpc.Channel]]:
    channels: list[grpc.Channel] = []

    def _connect(server: InferenceServer) -> grpc.Channel:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        channels.append(channel)
        return channel

    yield _connect
    for channel in channels:
        channel.close()
