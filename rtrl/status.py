"""Reading every service's status over gRPC and condensing it into one line (used by `rtrl up`); with
several gateways the line adds up their frame rates, decisions and episodes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from rtrl.grpc_util import create_channel
from rtrl.security import SecuritySettings
from rtrl.v1 import (
    env_gateway_pb2,
    env_gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    learner_pb2,
    learner_pb2_grpc,
)

STATUS_TIMEOUT_S = 1.0


@dataclass
class StackStatus:
    """The latest answer of each service; None where the service did not answer."""

    gateways: dict[str, env_gateway_pb2.GetStatsResponse | None] = field(default_factory=dict)
    learner: learner_pb2.LearnerServiceGetStatusResponse | None = None
    replicas: dict[str, inference_pb2.InferenceServiceGetStatusResponse | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "gateways": {address: message_json(stats) for address, stats in self.gateways.items()},
            "learner": message_json(self.learner),
            "replicas": {address: message_json(status) for address, status in self.replicas.items()},
        }


def message_json(message: Message | None) -> dict[str, Any] | None:
    """A status message as JSON-ready data with proto field names and every field present (None: no answer)."""
    if message is None:
        return None
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class StackClient:
    """Channels to the gateways, the learner and the replicas, kept open between polls."""

    def __init__(
        self, gateways: list[str], learner: str, replicas: list[str], security: SecuritySettings | None = None
    ) -> None:
        self._security = security
        self._channels: list[grpc.Channel] = []
        self.gateways = {
            address: env_gateway_pb2_grpc.EnvGatewayServiceStub(self._open(address)) for address in gateways
        }
        self.learner = learner_pb2_grpc.LearnerServiceStub(self._open(learner))
        self.replicas = {address: inference_pb2_grpc.InferenceServiceStub(self._open(address)) for address in replicas}

    def _open(self, address: str) -> grpc.Channel:
        channel = create_channel(address, self._security)
        self._channels.append(channel)
        return channel

    def poll(self) -> StackStatus:
        status = StackStatus()
        for address, gateway in self.gateways.items():
            try:
                status.gateways[address] = gateway.GetStats(env_gateway_pb2.GetStatsRequest(), timeout=STATUS_TIMEOUT_S)
            except grpc.RpcError:
                status.gateways[address] = None
        with contextlib.suppress(grpc.RpcError):
            status.learner = self.learner.GetStatus(
                learner_pb2.LearnerServiceGetStatusRequest(), timeout=STATUS_TIMEOUT_S
            )
        for address, stub in self.replicas.items():
            try:
                status.replicas[address] = stub.GetStatus(
                    inference_pb2.InferenceServiceGetStatusRequest(), timeout=STATUS_TIMEOUT_S
                )
            except grpc.RpcError:
                status.replicas[address] = None
        return status

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def status_line(status: StackStatus) -> str:
    """fps, coverage, staleness, checkpoint versions, learner throughput and returns in one line."""
    parts = []
    answered = [g for g in status.gateways.values() if g is not None]
    silent = len(status.gateways) - len(answered)
    if len(status.gateways) > 1:
        parts.append(f"{len(answered)}/{len(status.gateways)} gateways")
    if not answered:
        parts.append("gateway: no answer")
    else:
        g = answered[0]
        decisions = sum(a.decisions for a in answered)
        coverage = sum(a.coverage * a.decisions for a in answered) / decisions if decisions else g.coverage
        fps = sum(a.measured_frame_rate_hz for a in answered)
        parts.append(f"{max(a.uptime_s for a in answered):5.0f}s {fps:5.1f} fps")
        parts.append(f"coverage {100 * coverage:6.2f}% of {decisions}")
        p50 = max(a.staleness_frames.p50 for a in answered)
        p99 = max(a.staleness_frames.p99 for a in answered)
        parts.append(f"staleness p50 {p50:.0f} p99 {p99:.0f} fr")
        parts.append(f"overhead p99 {max(a.decision_overhead_ms.p99 for a in answered):.2f} ms")
        if g.interaction == "sequential":
            parts.append(f"sequential: {g.sequential_cycles} act-learn cycles, train p50 {g.train_ms.p50:.0f} ms")
        else:
            parts.append(f"{g.replica_count} replicas ({g.scheduler})")
        episodes = sum(a.episodes for a in answered)
        text = f"episodes {episodes}"
        if episodes:
            mean = sum(a.mean_episode_return * a.episodes for a in answered) / episodes
            text += (f" last {g.last_episode_return:+.0f}" if len(answered) == 1 else "") + f" mean {mean:+.1f}"
        parts.append(text)
        if silent:
            parts.append(f"{silent} gateway{'s' if silent > 1 else ''}: no answer")
    served = [str(r.checkpoint_version) if r is not None else "-" for r in status.replicas.values()]
    lr = status.learner
    if lr is None:
        parts.append("learner: no answer")
    else:
        parts.append(f"ckpt v{lr.checkpoint_version} served [{','.join(served)}]")
        parts.append(f"learner {lr.updates_per_s:5.1f} upd/s ({lr.updates} total, {lr.transitions_consumed} consumed)")
    return " | ".join(parts)
