"""A whole stack in this process for the observability tests (metrics, `rtrl status`): a real Redis, a real
inference replica, a real learner and a real gateway on ALE Pong, each with its gRPC server on port 0 and
its /metrics on a free port.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import torch

from rtrl.local_redis import LocalRedis
from rtrl.services.env_gateway import metrics as gateway_metrics
from rtrl.services.env_gateway.server import Gateway
from rtrl.services.env_gateway.server import create_server as create_gateway_server
from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings
from rtrl.services.inference import metrics as inference_metrics
from rtrl.services.inference.server import create_server as create_inference_server
from rtrl.services.inference.settings import InferenceSettings
from rtrl.services.learner import metrics as learner_metrics
from rtrl.services.learner.algorithms.dqn import DQNConfig
from rtrl.services.learner.loop import Learner
from rtrl.services.learner.server import create_server as create_learner_server
from rtrl.services.learner.settings import LearnerSettings
from rtrl.v1 import (
    env_gateway_pb2,
    env_gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    learner_pb2,
    learner_pb2_grpc,
)


@dataclass
class Running:
    gateway: Gateway
    gateway_stub: env_gateway_pb2_grpc.EnvGatewayServiceStub
    replica_stub: inference_pb2_grpc.InferenceServiceStub
    learner: Learner
    learner_stub: learner_pb2_grpc.LearnerServiceStub
    urls: dict[str, str]
    replica_address: str
    gateway_address: str
    learner_address: str
    redis_url: str


@contextlib.contextmanager
def running_stack(tmp_path: Path) -> Iterator[Running]:
    torch.set_num_threads(1)
    closers = []
    with LocalRedis() as redis_server:
        try:
            stream = "test:metrics:transitions"
            replica, replica_port = create_inference_server(
                InferenceSettings(
                    port=0, replica_id="replica-m", checkpoint_dir=str(tmp_path / "ckpt"), device="cpu", epsilon_start=0
                )
            )
            replica_metrics = inference_metrics.start_metrics(replica, "127.0.0.1", 0)
            assert replica_metrics is not None
            closers += [lambda: replica.stop(1.0).wait(), replica_metrics.close]
            replica.start()

            learner_settings = LearnerSettings(
                port=0,
                redis_url=redis_server.url,
                stream=stream,
                checkpoint_dir=tmp_path / "ckpt",
                checkpoint_every_updates=5,
                torch_threads=1,
                device="cpu",
            ).with_config(DQNConfig(learning_starts=8, batch_size=4, buffer_size=1000))
            learner = Learner(learner_settings)
            learner_server, learner_port = create_learner_server(learner_settings, learner)
            learner_metrics_server = learner_metrics.start_metrics(learner, "127.0.0.1", 0)
            assert learner_metrics_server is not None
            closers += [learner.stop, lambda: learner_server.stop(None).wait(), learner_metrics_server.close]
            learner.start()
            learner_server.start()

            replica_address = f"127.0.0.1:{replica_port}"
            gateway_settings = replace(
                GatewaySettings(),
                port=0,
                gateway_id="gateway-m",
                env=EnvSpec.parse("ale:Pong"),
                inference_addresses=(replica_address,),
                redis_url=redis_server.url,
                stream=stream,
            )
            gateway = Gateway(gateway_settings)
            gateway_server, gateway_port = create_gateway_server(gateway_settings, gateway)
            gateway_metrics_server = gateway_metrics.start_metrics(gateway, "127.0.0.1", 0)
            assert gateway_metrics_server is not None
            closers += [gateway.stop, lambda: gateway_server.stop(None).wait(), gateway_metrics_server.close]
            gateway_server.start()
            gateway.start()

            channels = [
                grpc.insecure_channel(f"127.0.0.1:{port}") for port in (gateway_port, replica_port, learner_port)
            ]
            closers += [channel.close for channel in channels]
            yield Running(
                gateway=gateway,
                gateway_stub=env_gateway_pb2_grpc.EnvGatewayServiceStub(channels[0]),
                replica_stub=inference_pb2_grpc.InferenceServiceStub(channels[1]),
                learner=learner,
                learner_stub=learner_pb2_grpc.LearnerServiceStub(channels[2]),
                urls={
                    "gateway": gateway_metrics_server.url,
                    "inference": replica_metrics.url,
                    "learner": learner_metrics_server.url,
                },
                replica_address=replica_address,
                gateway_address=f"127.0.0.1:{gateway_port}",
                learner_address=f"127.0.0.1:{learner_port}",
                redis_url=redis_server.url,
            )
        finally:
            for close in reversed(closers):
                close()


def gateway_stats(stack: Running) -> env_gateway_pb2.GetStatsResponse:
    return stack.gateway_stub.GetStats(env_gateway_pb2.GetStatsRequest(), timeout=5)


def replica_status(stack: Running) -> inference_pb2.InferenceServiceGetStatusResponse:
    return stack.replica_stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=5)


def learner_status(stack: Running) -> learner_pb2.LearnerServiceGetStatusResponse:
    return stack.learner_stub.GetStatus(learner_pb2.LearnerServiceGetStatusRequest(), timeout=5)


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
