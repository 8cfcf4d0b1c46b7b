"""Shared fixtures for the learner's integration tests: a real Redis, settings, synthetic transitions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch

from rtrl.local_redis import LocalRedis
from rtrl.services.learner.algorithms.dqn import DQNConfig
from rtrl.services.learner.settings import LearnerSettings
from rtrl.services.learner.stream import TRANSITION_FIELD
from rtrl.transitions import Transition, encode

# Small enough to train fast, large enough for the Nature CNN the learner picks for image stacks.
OBS_SHAPE = (4, 36, 36)
ACTION_COUNT = 3
EPISODE_LENGTH = 25


@pytest.fixture(autouse=True)
def one_torch_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def stream_name() -> str:
    """A stream of its own per test, so tests sharing the module's Redis cannot see each other's entries."""
    return f"test:{uuid.uuid4().hex[:8]}:transitions"


def make_transition(
    seq: int,
    gateway: str = "gw-0",
    shape: tuple[int, ...] = OBS_SHAPE,
    action_count: int = ACTION_COUNT,
    episode_length: int = EPISODE_LENGTH,
) -> Transition:
    """Step `seq` of a gateway whose episodes last `episode_length` steps (the last one terminated)."""
    return Transition(
        gateway_id=gateway,
        seq=seq,
        episode=seq // episode_length,
        step=seq % episode_length,
        obs_frame=seq * 4,
        observation=np.full(shape, seq % 256, dtype=np.uint8),
        action=seq % action_count,
        action_count=action_count,
        reward=1.0 if seq % 5 == 0 else 0.0,
        terminated=seq % episode_length == episode_length - 1,
        truncated=False,
        fresh=True,
        fallback_policy=1,
        staleness_frames=2,
        policy_version=-1,
        behaviour_log_prob=0.0,
        obs_captured_unix_ns=0,
        action_applied_unix_ns=0,
        action_obs_frame=seq * 4,
    )


@pytest.fixture
def transition() -> Callable[..., Transition]:
    return make_transition


@pytest.fixture
def publish(redis_client: redis.Redis, stream_name: str) -> Callable[..., list[bytes]]:
    """XADDs transitions (encoded like a gateway does) or raw field dicts; returns the entry ids."""

    def publish(items: list[Transition | dict[bytes, bytes]], stream: str = stream_name) -> list[bytes]:
        ids = []
        for item in items:
            fields: Any = item if isinstance(item, dict) else {TRANSITION_FIELD: encode(item)}
            ids.append(redis_client.xadd(stream, fields))
        return ids

    return publish


@pytest.fixture
def make_settings(redis_server: LocalRedis, stream_name: str, tmp_path: Path) -> Callable[..., LearnerSettings]:
    """Settings for a fast learner on the test's stream and a temporary checkpoint directory."""

    def make(config: Any = None, **overrides: Any) -> LearnerSettings:
        """`config`: another algorithm's hyperparameters (that algorithm runs); `overrides`: any setting."""
        settings = LearnerSettings(
            host="127.0.0.1",
            port=0,
            redis_url=redis_server.url,
            stream=stream_name,
            consumer_name="learner-test",
            checkpoint_dir=tmp_path / "checkpoints",
            checkpoint_every_updates=5,
            # Publications by update count only, so a test knows how many updates each version holds.
            checkpoint_every_s=0.0,
            checkpoint_keep=1000,
            torch_threads=1,
            device="cpu",
        ).with_config(DQNConfig(learning_starts=16, batch_size=8, buffer_size=1000, target_network_frequency=10))
        return replace(settings if config is None else settings.with_config(config), **overrides)

    return make


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """Polls `predicate` until it returns something truthy (returned); fails after a generous bound."""

    def wait(predicate: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.02)

    return wait


@pytest.fixture
def pending_count(redis_client: redis.Redis, stream_name: str) -> Callable[..., int]:
    def count(group: str = "learner", stream: str = stream_name) -> int:
        return int(redis_client.xpending(stream, group)["pending"])

    return count
