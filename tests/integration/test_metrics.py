"""Prometheus /metrics of a real gateway, inference replica and learner, scraped over HTTP and parsed with
prometheus_client's parser, against what the same services answer over gRPC (GetStats, GetStatus).

While the stack runs, each counter read over gRPC lies between a scrape before and a scrape after it;
once the gateway and the learner have stopped, the numbers must be equal, histograms included.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from observed_stack import Running, gateway_stats, learner_status, replica_status, wait_for
from prometheus_client.parser import text_string_to_metric_families

from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.services.inference.settings import InferenceSettings
from rtrl.services.learner.settings import LearnerSettings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample called `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{len(found)} samples of {name} with labels {labels}"
    return found[0]


def bucket_counts(samples: Samples, name: str, **labels: str) -> dict[float, float]:
    """le -> cumulative count of histogram `name`."""
    return {
        float(dict(ls)["le"]): v
        for (n, ls), v in samples.items()
        if n == f"{name}_bucket" and set(labels.items()) <= ls
    }


GATEWAY_COUNTERS = {
    "rtrl_gateway_frames_total": "frames",
    "rtrl_gateway_decisions_total": "decisions",
    "rtrl_gateway_decisions_fresh_total": "decisions_fresh",
    "rtrl_gateway_decisions_fallback_total": "decisions_fallback",
    "rtrl_gateway_requests_sent_total": "requests_sent",
    "rtrl_gateway_replies_late_total": "replies_late",
    "rtrl_gateway_replies_superseded_total": "replies_superseded",
    "rtrl_gateway_transitions_published_total": "transitions_published",
    "rtrl_gateway_transitions_dropped_total": "transitions_dropped",
    "rtrl_gateway_unknown_variable_frames_total": "unknown_variable_frames",
}
REPLICA_COUNTERS = {
    "rtrl_inference_requests_answered_total": "requests_answered",
    "rtrl_inference_requests_refused_deadline_total": "requests_refused_deadline",
    "rtrl_inference_requests_invalid_total": "requests_invalid",
    "rtrl_inference_batches_total": "batches_run",
    "rtrl_inference_checkpoints_loaded_total": "checkpoints_loaded",
}
LEARNER_COUNTERS = {
    "rtrl_learner_updates_total": "updates",
    "rtrl_learner_transitions_consumed_total": "transitions_consumed",
    "rtrl_learner_checkpoints_published_total": "checkpoints_published",
}


def test_metrics_bracket_the_grpc_stats_while_running_and_equal_them_once_stopped(observed_stack: Running) -> None:
    stack = observed_stack
    wait_for(lambda: learner_status(stack).checkpoints_published >= 2, "two checkpoints published")
    wait_for(lambda: gateway_stats(stack).decisions_fresh >= 30, "30 fresh decisions")

    before = {name: scrape(url) for name, url in stack.urls.items()}
    stats, replica, learner = gateway_stats(stack), replica_status(stack), learner_status(stack)
    after = {name: scrape(url) for name, url in stack.urls.items()}
    for service, counters, message in (
        ("gateway", GATEWAY_COUNTERS, stats),
        ("inference", REPLICA_COUNTERS, replica),
        ("learner", LEARNER_COUNTERS, learner),
    ):
        for metric, field in counters.items():
            low, high = value(before[service], metric), value(after[service], metric)
            assert low <= getattr(message, field) <= high, f"{metric}: {low} .. {getattr(message, field)} .. {high}"
    documented = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    for samples in before.values():
        for name, _ in samples:
            family = re.sub(r"_(total|bucket|sum|count)$", "", name)
            forms = (f"`{family}`", f"`{family}_total`", f"`{family}_bucket / _sum / _count`")
            assert any(form in documented for form in forms), f"{family} is not documented in docs/metrics.md"
    assert value(before["gateway"], "rtrl_gateway_frames_total") > 0
    assert value(before["inference"], "rtrl_inference_requests_answered_total") > 0
    assert value(before["learner"], "rtrl_learner_updates_total") > 0
    version = value(after["learner"], "rtrl_learner_checkpoint_version")
    assert value(before["learner"], "rtrl_learner_checkpoint_version") <= learner.checkpoint_version <= version

    # Stopped, nothing moves: the numbers must agree exactly.
    stack.gateway.stop()
    wait_for(lambda: replica_status(stack).in_flight == 0, "no Act call in flight")
    stack.learner.stop()
    # The learner's stop publishes a last checkpoint; the replica's load of it would move its counters.
    final = learner_status(stack).checkpoint_version
    wait_for(lambda: replica_status(stack).checkpoint_version == final, "the replica to load the last checkpoint")
    stats, replica, learner = gateway_stats(stack), replica_status(stack), learner_status(stack)
    gateway, inference, trained = (scrape(stack.urls[name]) for name in ("gateway", "inference", "learner"))
    for metric, field in GATEWAY_COUNTERS.items():
        assert value(gateway, metric) == getattr(stats, field), metric
    for metric, field in REPLICA_COUNTERS.items():
        assert value(inference, metric) == getattr(replica, field), metric
    for metric, field in LEARNER_COUNTERS.items():
        assert value(trained, metric) == getattr(learner, field), metric
    assert value(gateway, "rtrl_gateway_coverage_ratio") == pytest.approx(stats.coverage)
    assert value(trained, "rtrl_learner_checkpoint_version") == learner.checkpoint_version
    assert value(inference, "rtrl_inference_checkpoint_version") == replica.checkpoint_version

    # Histograms: under 2048 measurements the GetStats windows hold every one, so counts match exactly.
    assert stats.staleness_frames.count < 2048
    assert value(gateway, "rtrl_gateway_staleness_frames_count") == stats.staleness_frames.count
    staleness = bucket_counts(gateway, "rtrl_gateway_staleness_frames")
    for frames, count in enumerate(stats.staleness_frames_histogram):
        assert staleness[float(frames)] - staleness.get(float(frames - 1), 0.0) == count, f"{frames} frames"
    assert staleness[float("inf")] == stats.staleness_frames.count
    assert value(gateway, "rtrl_gateway_decision_overhead_seconds_count") == stats.decision_overhead_ms.count
    assert value(gateway, "rtrl_gateway_decision_overhead_seconds_sum") == pytest.approx(
        stats.decision_overhead_ms.mean * stats.decision_overhead_ms.count / 1000.0
    )
    [replica_stats] = stats.replicas
    labels = {"replica": stack.replica_address}
    assert value(gateway, "rtrl_gateway_replica_requests_total", **labels) == replica_stats.requests
    assert (
        value(gateway, "rtrl_gateway_replica_act_round_trip_seconds_count", **labels) == replica_stats.latency_ms.count
    )
    round_trips = bucket_counts(gateway, "rtrl_gateway_replica_act_round_trip_seconds", **labels)
    # The slowest round trip lies above every bucket bound below it and within the first bound at or above it.
    slowest_s = replica_stats.latency_ms.max / 1000.0
    assert all(count < replica_stats.latency_ms.count for le, count in round_trips.items() if le < slowest_s)
    assert all(count == replica_stats.latency_ms.count for le, count in round_trips.items() if le >= slowest_s)

    assert value(inference, "rtrl_inference_batch_size_count") == replica.batch_size.count == replica.batches_run
    assert value(inference, "rtrl_inference_latency_seconds_count") == replica.latency_ms.count
    assert value(inference, "rtrl_inference_batch_size_sum") == pytest.approx(
        replica.batch_size.mean * replica.batch_size.count
    )

    assert value(trained, "rtrl_learner_update_seconds_count") == learner.updates
    assert value(trained, "rtrl_learner_policy_lag_versions_count") == learner.policy_lag.fresh
    assert value(trained, "rtrl_learner_policy_lag_seconds_count") == learner.policy_lag.lag_ms.count


def test_metrics_port_settings_turn_the_endpoint_off_pick_a_port_or_refuse_a_bad_one() -> None:
    from rtrl.config import SettingsError

    assert GatewaySettings.from_env({}).metrics_port == -1
    assert GatewaySettings.from_env({"RTRL_GATEWAY_METRICS_PORT": ""}).metrics_port == -1
    assert InferenceSettings.from_env({"RTRL_INFERENCE_METRICS_PORT": "0"}).metrics_port == 0
    assert LearnerSettings.from_env({"RTRL_LEARNER_METRICS_PORT": "9152"}).metrics_port == 9152
    with pytest.raises(SettingsError, match="RTRL_LEARNER_METRICS_PORT"):
        LearnerSettings.from_env({"RTRL_LEARNER_METRICS_PORT": "many"})
