"""Fixtures for the inference unit tests: a checkpoint directory, a publisher into it, and policies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from inference_doubles import BenchPolicy

from rtrl.checkpoints import Checkpoint, CheckpointStore
from rtrl.models import ActorCritic, ModelConfig, build_model
from rtrl.services.inference.policy import Policy

# A small network so that tests spend their time on behaviour, not on matrix products.
SMALL_CONFIG = ModelConfig(arch="mlp", observation_shape=(3,), action_count=4, hidden_size=16)

Publish = Callable[..., Checkpoint]


@pytest.fixture(autouse=True)
def one_torch_thread() -> None:
    # The machine's cores are shared with other work; the service does the same at start.
    torch.set_num_threads(1)


@pytest.fixture
def small_config() -> ModelConfig:
    return SMALL_CONFIG


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    return tmp_path / "checkpoints"


@pytest.fixture
def publish(checkpoint_dir: Path) -> Publish:
    """Publishes a real checkpoint with CheckpointStore, as the learner does.

    `action_value=v` publishes a network whose every action value is exactly v (zero output weights,
    bias v), so an answer shows which weights produced it; for an actor-critic config (head
    "actor_critic") the same holds for its policy logits.
    """
    # Keep every version: pruning while a test still reads an older one is not what is under test.
    store = CheckpointStore(checkpoint_dir, keep=1000)

    def _publish(
        version: int,
        config: ModelConfig = SMALL_CONFIG,
        *,
        epsilon: float | None = 0.0,
        action_value: float | None = None,
        weights: dict[str, torch.Tensor] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Checkpoint:
        if weights is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(version)
                model = build_model(config)
            if action_value is not None:
                with torch.no_grad():
                    output = model.policy_logits if isinstance(model, ActorCritic) else model.head[-1]
                    assert isinstance(output, torch.nn.Linear)
                    output.weight.zero_()
                    output.bias.fill_(action_value)
            weights = model.state_dict()
        if metadata is None:
            metadata = {"model": config.to_json()}
            if epsilon is not None:
                metadata["epsilon"] = epsilon
        return store.publish(version, weights, metadata)

    return _publish


@pytest.fixture
def make_policy(checkpoint_dir: Path) -> Iterator[Callable[..., Policy]]:
    """Builds policies on the test's checkpoint directory and closes them (watcher, batcher) afterwards.

    `forward_ms` makes every forward pass last at least that long (the benchmark's BenchPolicy): a replica busy with a
    bigger model."""
    policies: list[Policy] = []

    def _make(*, forward_ms: float = 0.0, **kwargs: Any) -> Policy:
        kwargs.setdefault("replica_id", "replica-under-test")
        kwargs.setdefault("poll_interval_s", 0.02)
        policy = BenchPolicy(checkpoint_dir, **kwargs) if forward_ms else Policy(checkpoint_dir, **kwargs)
        if isinstance(policy, BenchPolicy):
            policy.occupy_s = forward_ms / 1000.0
        policies.append(policy)
        return policy

    yield _make
    for policy in policies:
        policy.close()
