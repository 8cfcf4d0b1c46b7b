"""An inference replica's Prometheus metrics, read from its policy's counters and windows at scrape time.

The histograms (batch sizes, forward time per batch, compute time and latency per answer) are the
cumulative buckets the policy's and batcher's `Window`s count as they record, so a scrape takes nothing
from the request path. Names and units: docs/metrics.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from rtrl.prometheus import MS_PER_S, MetricsServer, counter, gauge, histogram, serve_metrics

if TYPE_CHECKING:
    from rtrl.services.inference.server import InferenceServer

# Calls per forward pass: powers of two up to far beyond any RTRL_INFERENCE_MAX_BATCH in use.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ReplicaCollector:
    """Collects one replica's metrics; create it before the replica serves so the histograms miss nothing."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        server.policy.batcher.batch_sizes.set_buckets(BATCH_SIZE_BUCKETS)

    def collect(self) -> Iterator[Metric]:
        server = self.server
        policy = server.policy
        status = policy.status()
        labels = {"replica_id": status.replica_id}
        counters: tuple[tuple[str, str, float], ...] = (
            ("requests_answered", "Act calls answered.", status.requests_answered),
            ("requests_answered_late", "Act calls answered after their deadline.", status.requests_answered_late),
            (
                "requests_refused_deadline",
                "Act calls refused: the deadline could not be met.",
                status.requests_refused_deadline,
            ),
            ("requests_invalid", "Act calls rejected for bad input.", status.requests_invalid),
            ("batches", "Forward passes run.", status.batches_run),
            ("checkpoints_loaded", "Checkpoints loaded since start.", status.checkpoints_loaded),
            ("checkpoint_load_failures", "Checkpoint loads that failed.", status.checkpoint_load_failures),
        )
        for name, documentation, value in counters:
            yield counter(f"rtrl_inference_{name}", documentation, value, labels)
        registered = server.heartbeat is not None and server.heartbeat.registered
        gauges: tuple[tuple[str, str, float], ...] = (
            ("checkpoint_version", "Checkpoint version served (0: the fresh policy).", status.checkpoint_version),
            ("in_flight", "Act calls in progress.", status.in_flight),
            ("epsilon", "Exploration rate in force.", status.epsilon),
            (
                "requests_per_second",
                "Answers per second over the last seconds.",
                policy.answer_rate.rate(time.monotonic()),
            ),
            ("registered", "1 while registered in the replica registry.", float(registered)),
            ("open_streams", "ActStreams open; each holds a worker thread.", len(server.streams)),
        )
        for name, documentation, value in gauges:
            yield gauge(f"rtrl_inference_{name}", documentation, value, labels)
        batcher = policy.batcher
        yield histogram(
            "rtrl_inference_batch_size",
            "Act calls answered by one forward pass.",
            [(labels, batcher.batch_sizes.histogram())],
            label_names=["replica_id"],
        )
        yield histogram(
            "rtrl_inference_forward_seconds",
            "Time of one batch's forward pass.",
            [(labels, batcher.forward_ms.histogram())],
            scale=MS_PER_S,
            label_names=["replica_id"],
        )
        yield histogram(
            "rtrl_inference_compute_seconds",
            "Time to compute one answer: its batch's forward pass and exploration.",
            [(labels, policy.inference_ms.histogram())],
            scale=MS_PER_S,
            label_names=["replica_id"],
        )
        yield histogram(
            "rtrl_inference_latency_seconds",
            "From an Act call reaching the policy to its answer, waiting for a batch included.",
            [(labels, policy.latency_ms.histogram())],
            scale=MS_PER_S,
            label_names=["replica_id"],
        )


def start_metrics(server: InferenceServer, host: str, port: int) -> MetricsServer | None:
    """Serves the replica's /metrics on host:port (0: a free port; negative: off)."""
    return serve_metrics(host, port, ReplicaCollector(server), "inference replica")
