"""Fixtures of the fault suite: a real Redis, real service processes, an in-process gateway on port 0.

Faults are real: processes are SIGKILLed, SIGSTOPped and restarted, Redis is stopped and restarted on
its port, checkpoint files are corrupted on disk and the checkpoint directory fills up. Runs are short
(seconds), so the suite stays within a few minutes of CI on two cores.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from fault_processes import ProcessGroup

from rtrl.local_redis import LocalRedis
from rtrl.services.env_gateway.server import Gateway, create_server
from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings


@pytest.fixture(scope="module")
def local_redis() -> Iterator[LocalRedis]:
    with LocalRedis() as redis_server:
        yield redis_server


@pytest.fixture
def registry_key() -> str:
    return f"faults:replicas:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stream_name() -> str:
    return f"faults:transitions:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path)
    yield group
    group.stop_all()


InProcessGateway = tuple[Gateway, grpc.Server, str]


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., InProcessGateway]]:
    """A gateway on the real ALE Pong backend, in this process (its stats read directly), gRPC on port 0."""
    started: list[InProcessGateway] = []

    def start(redis_url: str, **overrides: object) -> InProcessGateway:
        values: dict[str, object] = {
            "port": 0,
            "gateway_id": "gateway-faults",
            "env": EnvSpec.parse("ale:Pong"),
            "redis_url": redis_url,
            "stream": f"faults:gateway:{uuid.uuid4().hex[:8]}",
        }
        settings = replace(GatewaySettings(), **{**values, **overrides})  # type: ignore[arg-type]
        gateway = Gateway(settings)
        server, port = create_server(settings, gateway)
        server.start()
        gateway.start()
        started.append((gateway, server, f"127.0.0.1:{port}"))
        return started[-1]

    yield start
    for gateway, server, _ in started:
        gateway.stop()
        server.stop(None).wait()
