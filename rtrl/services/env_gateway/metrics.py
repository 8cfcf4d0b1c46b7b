"""The gateway's Prometheus metrics: a collector that reads GetStats and the clock's histograms at scrape time.

Nothing here runs on the clock thread: the counters are the ones GetStats reports, and the histograms
(staleness, decision overhead, act round trip per replica) are the cumulative buckets the existing
`Window`s already count as they record (rtrl/metrics.py). Names and units: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rtrl.prometheus import MS_PER_S, MetricsServer, counter, gauge, histogram, serve_metrics

if TYPE_CHECKING:
    from rtrl.services.env_gateway.server import Gateway

# Staleness is a whole number of frames; one bucket per frame up to this many (S is usually below 16).
STALENESS_BUCKET_FRAMES = 32


class GatewayCollector:
    """Collects one gateway's metrics; create it before the clock starts so the histograms miss nothing."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        # Whole frames: the default millisecond buckets would lump 2..5 frames together.
        limit = max(STALENESS_BUCKET_FRAMES, gateway.settings.max_staleness_frames)
        gateway.clock.staleness_frames.set_buckets(range(limit + 1))

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        s = gateway.stats()
        labels = {"gateway_id": s.gateway_id}
        info = GaugeMetricFamily(
            "rtrl_gateway_info",
            "Always 1; the labels say what this gateway runs.",
            labels=["gateway_id", "env", "scheduler", "interaction"],
        )
        info.add_metric([s.gateway_id, gateway.settings.env.spec, s.scheduler, s.interaction], 1.0)
        yield info
        counters: tuple[tuple[str, str, float], ...] = (
            ("frames", "Frames the clock produced.", s.frames),
            ("frames_late", "Frames that started more than one frame period after they were due.", s.frames_late),
            ("decisions", "Decision steps executed.", s.decisions),
            ("decisions_fresh", "Decision steps executed with a fresh inference reply.", s.decisions_fresh),
            ("decisions_fallback", "Decision steps the fallback policy acted on.", s.decisions_fallback),
            ("requests_sent", "Act calls sent to replicas.", s.requests_sent),
            ("requests_not_sent", "Observations no idle replica could take in time.", s.requests_not_sent),
            ("requests_failed", "Act calls that failed (error or deadline).", s.requests_failed),
            ("requests_resent", "Act calls carrying an observation already sent.", s.requests_resent),
            ("replies_late", "Replies that arrived too late to be applied.", s.replies_late),
            ("replies_superseded", "Replies replaced by a newer one before being applied.", s.replies_superseded),
            ("transitions_published", "Transitions appended to the Redis stream.", s.transitions_published),
            ("transitions_dropped", "Transitions dropped (queue full or Redis down).", s.transitions_dropped),
            ("episodes", "Episodes finished.", s.episodes),
            ("scheduler_turns_passed", "Replicas passed over because busy at their turn.", s.scheduler_turns_passed),
            ("scheduler_slots_waited", "Calls that waited for an idle replica.", s.scheduler_slots_waited),
            (
                "unknown_variable_frames",
                "Profile games: frames with a variable unreadable or not a finite number.",
                s.unknown_variable_frames,
            ),
            (
                "unknown_variable_truncations",
                "Profile games: episodes truncated because a variable stayed unknown.",
                s.unknown_variable_truncations,
            ),
        )
        for name, documentation, value in counters:
            yield counter(f"rtrl_gateway_{name}", documentation, value, labels)
        gauges: tuple[tuple[str, str, float], ...] = (
            ("uptime_seconds", "Seconds since the clock started.", s.uptime_s),
            ("frame_rate_hertz", "Frames per second over the last seconds.", s.measured_frame_rate_hz),
            ("coverage_ratio", "Decisions with a fresh action / all decisions since start.", s.coverage),
            ("transitions_queued", "Transitions waiting for the publisher.", s.transitions_queued),
            ("replicas", "Inference replicas in the rotation.", s.replica_count),
            ("lead_frames", "L: frames from a step's observation to its first applied frame.", s.lead_frames),
            ("last_episode_return", "Return of the newest finished episode.", s.last_episode_return),
            ("mean_episode_return", "Mean return of the recent finished episodes.", s.mean_episode_return),
        )
        for name, documentation, value in gauges:
            yield gauge(f"rtrl_gateway_{name}", documentation, value, labels)
        yield histogram(
            "rtrl_gateway_staleness_frames",
            "Frames from the observation an action was computed from to the frame it was first applied.",
            [(labels, gateway.clock.staleness_frames.histogram())],
            label_names=["gateway_id"],
        )
        yield histogram(
            "rtrl_gateway_decision_overhead_seconds",
            "From an observation being produced to its action being ready to apply.",
            [(labels, gateway.mailbox.decision_overhead_ms.histogram())],
            scale=MS_PER_S,
            label_names=["gateway_id"],
        )
        yield from self._replica_metrics(s.gateway_id)

    def _replica_metrics(self, gateway_id: str) -> Iterator[Metric]:
        replica_stats = self.gateway.replicas.stats()
        names = ["gateway_id", "replica"]
        families = {
            "requests": ("Act calls sent to this replica.", "counter"),
            "replies": ("Replies received from this replica.", "counter"),
            "failures": ("Act calls to this replica that failed.", "counter"),
            "in_flight": ("Act calls to this replica in flight.", "gauge"),
            "checkpoint_version": ("Checkpoint version of this replica's latest reply (-1: none yet).", "gauge"),
            "excluded": ("1 while this replica is out of rotation after UNAVAILABLE.", "gauge"),
            "warming_up": ("1 while this replica's warm-up call is in flight (it is not in rotation yet).", "gauge"),
        }
        for field, (documentation, kind) in families.items():
            family: Metric
            family_name = f"rtrl_gateway_replica_{field}"
            if kind == "counter":
                family = CounterMetricFamily(family_name, documentation, labels=names)
            else:
                family = GaugeMetricFamily(family_name, documentation, labels=names)
            for r in replica_stats:
                family.add_metric([gateway_id, r.address], float(getattr(r, field)))
            yield family
        round_trips = [
            ({"gateway_id": gateway_id, "replica": a}, h) for a, h in self.gateway.replicas.round_trip_histograms()
        ]
        yield histogram(
            "rtrl_gateway_replica_act_round_trip_seconds",
            "Act round trip to this replica as the gateway measured it (answered calls).",
            round_trips,
            scale=MS_PER_S,
            label_names=names,
        )


def start_metrics(gateway: Gateway, host: str, port: int) -> MetricsServer | None:
    """Serves the gateway's /metrics on host:port (0: a free port; negative: off)."""
    return serve_metrics(host, port, GatewayCollector(gateway), "env gateway")
