"""What the gateway measures of each inference replica's calls: GetStats' ReplicaStats, /metrics' round trips.

The pool (replicas.py) records each call here under its own lock, on the transports' threads; the
windows summarise for readers off the clock's thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rtrl.metrics import Window
from rtrl.v1 import env_gateway_pb2, inference_pb2


@dataclass(eq=False)
class ReplicaMeasures:
    """One replica's calls as this gateway saw them, since it joined."""

    requests: int = 0
    replies: int = 0
    failures: int = 0
    checkpoint_version: int = -1
    """As its latest answer named it."""
    latency_ms: Window = field(default_factory=Window)
    """Each answered call's round trip."""
    batch_size: Window = field(default_factory=Window)
    inference_ms: Window = field(default_factory=Window)
    """As the replica reported each answer's."""

    def answered(self, response: inference_pb2.ActResponse, round_trip_s: float) -> None:
        self.replies += 1
        self.latency_ms.add(round_trip_s * 1000.0)
        self.checkpoint_version = response.checkpoint_version
        self.batch_size.add(response.batch_size)
        self.inference_ms.add(response.inference_ms)

    def to_proto(
        self, address: str, in_flight: int, excluded: bool, warming_up: bool, transport: str
    ) -> env_gateway_pb2.ReplicaStats:
        return env_gateway_pb2.ReplicaStats(
            address=address,
            requests=self.requests,
            replies=self.replies,
            failures=self.failures,
            in_flight=in_flight,
            latency_ms=self.latency_ms.summary(),
            checkpoint_version=self.checkpoint_version,
            batch_size=self.batch_size.summary(),
            inference_ms=self.inference_ms.summary(),
            excluded=excluded,
            warming_up=warming_up,
            transport=transport,
        )
