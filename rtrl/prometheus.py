"""Prometheus exposition for the services: a /metrics HTTP endpoint per process and metric family helpers.

Each service registers one custom collector in a registry of its own (never prometheus_client's global
default, so tests can run several services in one process) and serves it on RTRL_<SERVICE>_METRICS_PORT.
The collectors read the services' existing counters and `Window` histograms when Prometheus scrapes, so
a scrape costs the measuring threads (the gateway's clock above all) nothing: names, units and where
each number comes from are in docs/metrics.md.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from rtrl.metrics import HistogramSnapshot

log = logging.getLogger(__name__)

MS_PER_S = 1000.0


class MetricsServer:
    """prometheus_client's HTTP server for one collector on host:port (0 picks a free port); `close()` stops it."""

    def __init__(self, host: str, port: int, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise OSError(
                f"cannot serve Prometheus metrics on {host}:{port} ({e}); free that port or set the service's "
                "RTRL_*_METRICS_PORT to another one (0 picks a free port, -1 turns metrics off)"
            ) from e
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.host = host
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def serve_metrics(host: str, port: int, collector: Collector, service: str) -> MetricsServer | None:
    """Starts the endpoint unless `port` is negative (metrics off); logs where it listens."""
    if port < 0:
        log.info("%s: Prometheus metrics are off (set RTRL_*_METRICS_PORT to serve them)", service)
        return None
    server = MetricsServer(host, port, collector)
    log.info("%s: Prometheus metrics on %s", service, server.url)
    return server


def counter(name: str, documentation: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def gauge(name: str, documentation: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def histogram(
    name: str,
    documentation: str,
    series: Iterable[tuple[dict[str, str], HistogramSnapshot]],
    scale: float = 1.0,
    label_names: Sequence[str] = (),
) -> Metric:
    """One histogram family; `scale` divides bounds and sums (MS_PER_S turns milliseconds into seconds)."""
    family = HistogramMetricFamily(name, documentation, labels=list(label_names))
    for labels, snapshot in series:
        buckets = [
            (_bound_text(bound / scale), count)
            for bound, count in zip(snapshot.upper_bounds, snapshot.cumulative_counts, strict=False)
        ]
        buckets.append(("+Inf", snapshot.cumulative_counts[-1]))
        family.add_metric([labels[n] for n in label_names], buckets, snapshot.total / scale)
    return family


def _bound_text(bound: float) -> str:
    # Shortest exact text ("0.0001", "2.0"), so that the same bucket reads the same in every scrape.
    return repr(float(bound)) if math.isfinite(bound) else "+Inf"
