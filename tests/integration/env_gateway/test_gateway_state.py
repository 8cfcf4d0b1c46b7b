"""The whole gateway on gym:CartPole-v1 played from its state vector, over gRPC with a real Redis and test
inference replicas: what GetSpec says, what replicas are asked, what the stream carries, what viewers see."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import grpc
import numpy as np
import pytest
import redis
from gateway_doubles import Replica, Stack

from rtrl.local_redis import LocalRedis
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.transitions import STREAM_FIELD as FIELD
from rtrl.transitions import Transition, decode
from rtrl.v1 import common_pb2, env_gateway_pb2, env_gateway_pb2_grpc

FRAME_STACK = 4
CARTPOLE_STATE_SIZE = 4
RUN_S = 2.0


def start_cartpole(
    start_gateway: Callable[..., Stack], redis_url: str, replicas: list[str], **overrides: object
) -> Stack:
    """A gateway on gym:CartPole-v1 with what from_env resolves for it: state observations, k = 1, L = 1, S = 2."""
    settings = GatewaySettings.from_env({"RTRL_ENV": "gym:CartPole-v1"})
    resolved = {
        "env": settings.env,
        "observation": settings.observation,
        "decision_interval_frames": settings.decision_interval_frames,
        "lead_frames": settings.lead_frames,
        "max_staleness_frames": settings.max_staleness_frames,
        "jitter_reserve_frames": settings.jitter_reserve_frames,
        "frame_stack": FRAME_STACK,
    }
    return start_gateway(redis_url, replicas, **{**resolved, **overrides})


def published(redis_url: str, stream: str) -> list[Transition]:
    client = redis.Redis.from_url(redis_url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream))
    finally:
        client.close()
    return [decode(fields[FIELD.encode()]) for _, fields in entries]


def test_cartpole_from_its_state_is_specified_asked_and_published_as_float32(
    local_redis: LocalRedis,
    start_replica: Callable[..., Replica],
    start_gateway: Callable[..., Stack],
    channel_to: Callable[[str], grpc.Channel],
) -> None:
    replica = start_replica(delay_s=0.002, action=1, checkpoint_version=4)
    stack = start_cartpole(start_gateway, local_redis.url, [replica.address], stream="test:state:realtime")
    stub = env_gateway_pb2_grpc.EnvGatewayServiceStub(channel_to(stack.address))
    spec = stub.GetSpec(env_gateway_pb2.GetSpecRequest(), timeout=5)
    time.sleep(RUN_S)
    stack.gateway.stop()
    stats = stack.gateway.stats()

    assert list(spec.observation_shape) == [FRAME_STACK, CARTPOLE_STATE_SIZE]
    assert spec.observation_dtype == common_pb2.D_TYPE_FLOAT32
    assert (spec.action_count, spec.frame_rate_hz) == (2, 50.0)
    assert (spec.decision_interval_frames, spec.lead_frames, spec.max_staleness_frames) == (1, 1, 2)
    # The warm-up call and every decision's request alike.
    assert replica.servicer.observation_shapes == {(FRAME_STACK, CARTPOLE_STATE_SIZE)}
    assert replica.servicer.observation_dtypes == {np.dtype(np.float32)}

    transitions = published(local_redis.url, stack.settings.stream)
    assert stats.transitions_dropped == 0
    assert len(transitions) == stats.transitions_published > 20
    assert all(t.observation.shape == (FRAME_STACK, CARTPOLE_STATE_SIZE) for t in transitions)
    assert all(t.observation.dtype == np.float32 for t in transitions)
    # An episode's first observation is its first state, repeated; each next one drops the oldest state.
    first, second = transitions[0], transitions[1]
    assert (first.episode, first.step, second.step) == (0, 0, 1)
    assert all((row == first.observation[0]).all() for row in first.observation)
    assert (second.observation[:-1] == first.observation[1:]).all()
    assert not (second.observation[-1] == first.observation[-1]).all()
    fresh = [t for t in transitions if t.fresh]
    assert fresh and all((t.action, t.policy_version) == (1, 4) for t in fresh)
    assert stats.coverage >= 0.9


def test_viewers_of_cartpole_played_from_its_state_get_rendered_pictures(
    local_redis: LocalRedis, start_gateway: Callable[..., Stack], channel_to: Callable[[str], grpc.Channel]
) -> None:
    stack = start_cartpole(start_gateway, local_redis.url, [])
    stub = env_gateway_pb2_grpc.EnvGatewayServiceStub(channel_to(stack.address))

    stream = stub.StreamFrames(env_gateway_pb2.StreamFramesRequest(), timeout=30)
    frames = [next(stream) for _ in range(5)]
    stream.cancel()
    indices = [f.frame_index for f in frames]
    assert indices == sorted(set(indices))
    for frame in frames:
        assert len(frame.rgb) == frame.height * frame.width * 3 > 0
        picture = np.frombuffer(frame.rgb, np.uint8)
        assert picture.min() < picture.max()  # a cart on a white background


@pytest.mark.parametrize("interaction", ["async", "sequential"])
def test_the_simulated_clock_plays_cartpole_from_its_state(
    local_redis: LocalRedis,
    start_replica: Callable[..., Replica],
    start_gateway: Callable[..., Stack],
    interaction: str,
) -> None:
    replica = start_replica(delay_s=0.0, action=1)
    stack = start_cartpole(
        start_gateway,
        local_redis.url,
        [replica.address],
        clock="simulated",
        interaction=interaction,
        stream=f"test:state:simulated:{interaction}",
        stream_maxlen=1_000_000,
    )
    time.sleep(0.5)
    stack.gateway.stop()
    stats = stack.gateway.stats()

    transitions = published(local_redis.url, stack.settings.stream)
    assert stats.transitions_dropped == 0
    assert len(transitions) == stats.transitions_published > 20
    assert all(t.observation.shape == (FRAME_STACK, CARTPOLE_STATE_SIZE) for t in transitions)
    assert all(t.observation.dtype == np.float32 for t in transitions)
    assert replica.servicer.observation_dtypes == {np.dtype(np.float32)}
    assert all(t.fresh and t.action == 1 for t in transitions)
