"""Fixtures for the gateway's integration tests: a real Redis, test inference replicas, gateway stacks, and
the box game's X server and binary."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import cast

import grpc
import numpy as np
import pytest
from desktop_game import boxgame
from gateway_doubles import FakeInference, Replica, Stack

from rtrl.local_redis import LocalRedis
from rtrl.services.env_gateway.server import Gateway, create_server
from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings
from rtrl.v1 import inference_pb2_grpc


@pytest.fixture
def serve_inference() -> Iterator[Callable[..., tuple[str, grpc.Server]]]:
    """Serves an InferenceService servicer on loopback (`port` 0: a free one); stopped after the test."""
    servers: list[grpc.Server] = []

    def serve(servicer: inference_pb2_grpc.InferenceServiceServicer, port: int = 0) -> tuple[str, grpc.Server]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", server

    yield serve
    for server in servers:
        server.stop(None).wait()


@pytest.fixture
def start_replica(serve_inference: Callable[..., tuple[str, grpc.Server]]) -> Callable[..., Replica]:
    def start(
        delay_s: float = 0.002,
        action: int = 2,
        checkpoint_version: int = 7,
        policy: Callable[[np.ndarray], int] | None = None,
        delay_of: Callable[[int], float] | None = None,
    ) -> Replica:
        servicer = FakeInference(delay_s, action, checkpoint_version, policy, delay_of)
        address, server = serve_inference(servicer)
        return Replica(address, servicer, server)

    return start


@pytest.fixture
def channel_to() -> Iterator[Callable[[str], grpc.Channel]]:
    """Opens insecure channels to gateways (closed after the test)."""
    channels: list[grpc.Channel] = []

    def open_channel(address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


@pytest.fixture(scope="module")
def local_redis() -> Iterator[LocalRedis]:
    with LocalRedis() as redis_server:
        yield redis_server


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., Stack]]:
    """Starts a gateway on the real ALE Pong backend with its gRPC server on port 0 (with `started` False,
    only its server: the test starts the gateway itself)."""
    stacks: list[Stack] = []
    stream_numbers = itertools.count()

    def start(redis_url: str, replica_addresses: list[str], started: bool = True, **overrides: object) -> Stack:
        values: dict[str, object] = {
            "port": 0,
            "gateway_id": "test-gateway",
            "env": EnvSpec.parse("ale:Pong"),
            "inference_addresses": tuple(replica_addresses),
            "redis_url": redis_url,
            "stream": f"test:gateway:{next(stream_numbers)}",
        }
        settings = replace(GatewaySettings(), **{**values, **overrides})  # type: ignore[arg-type]
        gateway = Gateway(settings)
        server, port = create_server(settings, gateway)
        server.start()
        stack = Stack(gateway, server, f"127.0.0.1:{port}", settings)
        stacks.append(stack)
        if started:
            gateway.start()
        return stack

    yield start
    for stack in stacks:
        stack.gateway.stop()
        stack.server.stop(None).wait()


@pytest.fixture(scope="module")
def x_display() -> Iterator[str]:
    """A private Xvfb for the box game; its display name."""
    server, display = boxgame.start_xvfb()
    yield display
    server.terminate()
    server.wait()


@pytest.fixture(scope="module")
def game_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The box game, built with gcc once per module."""
    return cast(Path, boxgame.build(tmp_path_factory.mktemp("boxgame")))
