"""Each action is paired with the observation it was computed from, through the real gateway clock.

The game's state is its own step counter, and the test replica answers with that counter modulo the
action count after a delay that sometimes makes its reply miss the step it was meant for. So every
action says which observation chose it: the transitions on the stream must name that observation's
frame in `action_obs_frame`, and the learner's replay and unrolls must hand the algorithms that same
observation with the action, also for the steps a late reply served.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
import redis
from gateway_doubles import Replica, Stack

from rtrl.local_redis import LocalRedis
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.services.learner.replay import ReplayBuffer
from rtrl.services.learner.trajectories import UnrollBuffer
from rtrl.transitions import STREAM_FIELD, decode

ACTIONS = 16
EPISODE_STEPS = 120
ENV_ID = "rtrl-test/StepCounter-v0"
RUN_S = 6.0


class StepCounter(gym.Env[np.ndarray, int]):
    """Observation [steps since reset]; no reward; truncated after EPISODE_STEPS steps; 50 fps."""

    metadata = {"render_fps": 50, "render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(0.0, 1e6, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(ACTIONS)
        self.render_mode = render_mode
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._steps = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._steps += 1
        return np.array([self._steps], dtype=np.float32), 0.0, False, self._steps >= EPISODE_STEPS, {}

    def render(self) -> np.ndarray:
        return np.zeros((8, 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module", autouse=True)
def step_counter_env() -> Iterator[None]:
    gym.register(ENV_ID, entry_point=StepCounter)
    yield
    del gym.registry[ENV_ID]


def encoded(step: int) -> int:
    """The action that encodes a step count: 1 .. ACTIONS - 1, never the fallback's action 0."""
    return 1 + step % (ACTIONS - 1)


def counted(observation: np.ndarray) -> int:
    """The test replica's policy: the action that encodes the observation's newest step count."""
    return encoded(int(observation.reshape(-1)[-1]))


def late_now_and_then(frame_index: int) -> float:
    """Mostly quick; two calls in a row out of every six slower than a frame (20 ms): the first one's reply
    then serves the next step, whose own reply is not there yet."""
    return 0.03 if frame_index % 6 in (0, 1) else 0.002


def test_every_action_names_the_observation_it_came_from_and_the_learner_pairs_them(
    local_redis: LocalRedis, start_replica: Callable[..., Replica], start_gateway: Callable[..., Stack]
) -> None:
    replicas = [start_replica(policy=counted, delay_of=late_now_and_then) for _ in range(2)]
    resolved = GatewaySettings.from_env({"RTRL_ENV": f"gym:{ENV_ID}"})
    stack = start_gateway(
        local_redis.url,
        [replica.address for replica in replicas],
        env=resolved.env,
        observation=resolved.observation,
        decision_interval_frames=1,
        lead_frames=1,
        max_staleness_frames=3,
        jitter_reserve_frames=0,
        frame_stack=2,
        stream="test:pairing",
        stream_maxlen=1_000_000,
    )
    time.sleep(RUN_S)
    stack.gateway.stop()

    client = redis.Redis.from_url(local_redis.url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stack.settings.stream))
    finally:
        client.close()
    transitions = [decode(fields[STREAM_FIELD.encode()]) for _, fields in entries]
    episode_start = {t.episode: t.obs_frame for t in transitions if t.step == 0}
    fresh = [t for t in transitions if t.fresh and t.episode in episode_start]

    # The stream: each fresh action names the frame of the observation whose counter it encodes.
    assert len(fresh) > 100
    assert all(t.action == encoded(t.action_obs_frame - episode_start[t.episode]) for t in fresh)
    late = [t for t in fresh if t.action_obs_frame < t.obs_frame]
    assert late, "some replies should have served the step after their own"
    assert all(t.action_obs_frame == -1 for t in transitions if not t.fresh)

    # The replay: the observation sampled with each action is the one that chose it (action 0: a fallback).
    replay = ReplayBuffer(10_000, (2, 1), np.dtype(np.float32), seed=0)
    unrolls = UnrollBuffer(8, 1000, (2, 1), np.dtype(np.float32), seed=0)
    for transition in transitions:
        replay.add(transition)
        unrolls.add(transition)
    # With a lead of one frame no reply can overtake: every late one finds its observation.
    assert (replay.decisions_elsewhere, replay.decisions_unpaired) == (len(late), 0)
    batch = replay.sample(2000)
    pairs = [(obs, int(action)) for obs, action in zip(batch.obs, batch.actions, strict=True) if action != 0]
    assert len(pairs) > 1000 and all(action == counted(obs) for obs, action in pairs)

    # The unrolls: each learnable fresh step's decision index points at the observation that chose it.
    checked = 0
    for unroll in list(unrolls._unrolls):
        for t in range(len(unroll.actions)):
            index = int(unroll.decision_index[t])
            if unroll.fresh[t] and index >= 0:
                assert int(unroll.actions[t]) == counted(unroll.obs[index])
                checked += 1
    assert checked > 100
    assert unrolls.decisions_elsewhere > 0
