"""The learner's Prometheus metrics: its status counters and its update-time and policy-lag histograms.

Read when Prometheus scrapes: the counters come from `Learner.status()` (the numbers GetStatus reports),
the histograms from the `Window`s the loop fills as it trains (rtrl/metrics.py). Names and units:
docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from rtrl.prometheus import MS_PER_S, MetricsServer, counter, gauge, histogram, serve_metrics

if TYPE_CHECKING:
    from rtrl.services.learner.loop import Learner


class LearnerCollector:
    """Collects one learner's metrics."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    def collect(self) -> Iterator[Metric]:
        learner = self.learner
        s = learner.status()
        labels = {"algorithm": s.algorithm}
        counters: tuple[tuple[str, str, float], ...] = (
            ("updates", "Gradient updates (resumed across restarts).", s.updates),
            ("transitions_consumed", "Stream entries read and acknowledged since start.", s.transitions_consumed),
            ("transitions_invalid", "Stream entries that could not be used (dead-lettered).", s.transitions_invalid),
            ("transitions_unpaired", "Transitions never trained on: no successor or decision.", s.transitions_unpaired),
            (
                "decisions_elsewhere",
                "Actions trained on the earlier observation they came from.",
                s.decisions_elsewhere,
            ),
            ("decisions_unpaired", "Actions whose observation was not found.", s.decisions_unpaired),
            ("unrolls_skipped", "Unrolls an on-policy learner passed over for newer ones.", s.unrolls_skipped),
            ("transitions_too_old", "Transitions dropped for exceeding the policy lag limit.", s.transitions_too_old),
            ("transitions_skipped", "Stream entries jumped over while behind.", s.transitions_skipped),
            ("transitions_trimmed", "Skipped entries the stream's MAXLEN had trimmed.", s.transitions_trimmed),
            ("backlog_skips", "Times the learner jumped to the stream's newest entry.", s.backlog_skips),
            ("env_steps", "Decision steps added to the replay (resumed across restarts).", s.env_steps),
            ("checkpoints_published", "Checkpoints published since start.", s.checkpoints_published),
            ("checkpoint_publish_failures", "Checkpoint publications that failed.", s.checkpoint_publish_failures),
            ("redis_errors", "Redis operations that failed (retried with back-off).", s.redis_errors),
            ("train_calls", "Train calls answered (sequential mode).", s.train_calls),
            ("episodes", "Episodes whose end the learner consumed.", learner.episodes.episodes_finished),
        )
        for name, documentation, value in counters:
            yield counter(f"rtrl_learner_{name}", documentation, value, labels)
        gauges: tuple[tuple[str, str, float], ...] = (
            ("checkpoint_version", "Newest checkpoint version published.", s.checkpoint_version),
            ("updates_per_second", "Updates per second over the last seconds.", s.updates_per_s),
            ("loss", "Most recent training loss.", s.loss),
            ("epsilon", "Exploration rate of the newest checkpoint.", s.epsilon),
            ("replay_size", "Transitions (DQN) or unrolls (V-trace, PPO) held for sampling.", s.replay_size),
            ("stream_length", "Entries in the transition stream.", s.stream_length),
            ("stream_pending", "Entries delivered to the group and not yet acknowledged.", s.stream_pending),
            ("stream_lag", "Entries not yet delivered to the group (-1: Redis cannot tell).", s.stream_lag),
            ("connected", "1 while connected to Redis.", float(s.connected)),
            ("uptime_seconds", "Seconds since the learner started.", s.uptime_s),
        )
        for name, documentation, value in gauges:
            yield gauge(f"rtrl_learner_{name}", documentation, value, labels)
        yield histogram(
            "rtrl_learner_update_seconds",
            "One update: sampling the batch, the gradient step, and publishing a checkpoint when due.",
            [(labels, learner.update_ms.histogram())],
            scale=MS_PER_S,
            label_names=["algorithm"],
        )
        yield histogram(
            "rtrl_learner_policy_lag_versions",
            "Checkpoint versions between the policy that chose a fresh action and the newest one.",
            [(labels, learner.policy_lag_versions.histogram())],
            label_names=["algorithm"],
        )
        yield histogram(
            "rtrl_learner_policy_lag_seconds",
            "From an action being first applied at the gateway to the learner using its transition.",
            [(labels, learner.policy_lag_ms.histogram())],
            scale=MS_PER_S,
            label_names=["algorithm"],
        )


def start_metrics(learner: Learner, host: str, port: int) -> MetricsServer | None:
    """Serves the learner's /metrics on host:port (0: a free port; negative: off)."""
    return serve_metrics(host, port, LearnerCollector(learner), "learner")
