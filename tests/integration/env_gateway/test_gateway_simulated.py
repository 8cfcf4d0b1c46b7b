"""RTRL_CLOCK=simulated through the real gateway: real ALE Pong, a real Redis, two replicas over gRPC whose
answers take a random time. Every transition in the stream must carry the action of its own observation,
applied exactly d frames later, whatever the replies' latency, and none may be dropped."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import cast

import grpc
import pytest
import redis
from gateway_doubles import Stack
from inference_doubles import ActStreamByAct

from rtrl.local_redis import LocalRedis
from rtrl.transitions import STREAM_FIELD as FIELD
from rtrl.transitions import Transition, decode
from rtrl.v1 import env_gateway_pb2, env_gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

RUN_S = 2.0


def encoded_action(frame_index: int) -> int:
    """Pong has 6 actions; 1..5 name the observation's frame, so a noop fallback (0) is never mistaken for one."""
    return 1 + frame_index % 5


class FrameEncodingInference(ActStreamByAct):
    """A real InferenceService servicer answering after 0-3 ms with an action that encodes the frame index."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def Act(self, request: inference_pb2.ActRequest, context: grpc.ServicerContext) -> inference_pb2.ActResponse:
        with self._lock:
            delay_s = self._rng.uniform(0.0, 0.003)
        time.sleep(delay_s)
        return inference_pb2.ActResponse(
            action=encoded_action(request.frame_index), behaviour_log_prob=-0.1, checkpoint_version=3
        )


@pytest.fixture
def encoding_replicas() -> list[str]:
    servers: list[grpc.Server] = []
    addresses = []
    for seed in (1, 2):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(FrameEncodingInference(seed), server)
        addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        server.start()
        servers.append(server)
    yield addresses
    for server in servers:
        server.stop(None).wait()


def run_and_read(stack: Stack, redis_url: str) -> tuple[env_gateway_pb2.GetStatsResponse, list[Transition]]:
    with grpc.insecure_channel(stack.address) as channel:
        stub = env_gateway_pb2_grpc.EnvGatewayServiceStub(channel)
        spec = stub.GetSpec(env_gateway_pb2.GetSpecRequest(), timeout=5)
        time.sleep(RUN_S)
    stack.gateway.stop()
    stats = stack.gateway.stats()
    client = redis.Redis.from_url(redis_url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stack.settings.stream))
    finally:
        client.close()
    assert spec.lead_frames == stack.settings.simulated_delay_frames
    assert spec.max_staleness_frames == stack.settings.simulated_delay_frames
    return stats, [decode(fields[FIELD.encode()]) for _, fields in entries]


@pytest.mark.parametrize("interaction", ["async", "sequential"])
def test_simulated_gateway_applies_each_action_exactly_d_frames_after_its_observation(
    start_gateway: Callable[..., Stack],
    local_redis: LocalRedis,
    encoding_replicas: list[str],
    interaction: str,
) -> None:
    delay = 3
    stack = start_gateway(
        local_redis.url,
        encoding_replicas,
        clock="simulated",
        simulated_delay_frames=delay,
        interaction=interaction,
        frame_stack=1,
        # A small queue makes the clock wait for the publisher instead of dropping transitions.
        publish_queue_size=8,
        stream_maxlen=1_000_000,
        stream=f"test:simulated:{interaction}",
    )
    stats, transitions = run_and_read(stack, local_redis.url)

    assert stats.transitions_dropped == 0
    assert len(transitions) == stats.transitions_published == stats.decisions > 100
    assert [t.seq for t in transitions] == list(range(len(transitions)))
    assert stats.coverage == 1.0 and stats.decisions_fallback == 0
    assert all(t.fresh and t.staleness_frames == delay and t.policy_version == 3 for t in transitions)
    assert all(t.action == encoded_action(t.obs_frame) for t in transitions)
    spacing = 1 if interaction == "async" else delay + 1
    first_episode = [t.obs_frame for t in transitions if t.episode == 0]
    assert first_episode == list(range(0, spacing * len(first_episode), spacing))
    assert stats.scheduler == "simulated"
