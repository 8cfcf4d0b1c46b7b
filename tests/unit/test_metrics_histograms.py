"""Window's cumulative histogram (behind every Prometheus histogram) and the family it becomes, and RateMeter."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rtrl.launcher import UpOptions, metrics_ports
from rtrl.metrics import FOLD_EVERY, RateMeter, Window
from rtrl.prometheus import MS_PER_S, histogram


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), max_size=300))
def test_buckets_count_every_value_at_most_each_bound_even_after_the_window_forgets(values):
    window = Window(size=16, buckets=(0.0, 1.0, 2.5, 100.0))
    for value in values:
        window.add(value)
    snapshot = window.histogram()
    expected = [sum(v <= bound for v in values) for bound in (0.0, 1.0, 2.5, 100.0)] + [len(values)]
    assert list(snapshot.cumulative_counts) == expected
    assert snapshot.count == len(values)
    assert abs(snapshot.total - sum(values)) <= 1e-6 * max(1.0, sum(abs(v) for v in values))
    assert len(window) == min(16, len(values))


def test_set_buckets_rebins_what_the_window_holds():
    window = Window(size=3)
    for value in (1, 2, 3, 4):
        window.add(value)
    window.set_buckets(range(5))
    snapshot = window.histogram()
    assert snapshot.upper_bounds == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert snapshot.cumulative_counts == (0, 0, 1, 2, 3, 3)
    assert (snapshot.count, snapshot.total) == (3, 9.0)


def test_adds_from_many_threads_are_all_counted():
    window = Window(size=8)
    threads = [threading.Thread(target=lambda: [window.add(1.0) for _ in range(5000)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert window.histogram().count == 20000


def test_a_millisecond_window_becomes_a_histogram_in_seconds_that_the_parser_reads():
    window = Window(buckets=(1.0, 10.0))
    for value in (0.5, 2.0, 20.0):
        window.add(value)

    class Collector:
        def collect(self):
            yield histogram("rtrl_test_seconds", "A test.", [({"who": "a"}, window.histogram())], MS_PER_S, ["who"])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    [family] = text_string_to_metric_families(generate_latest(registry).decode())
    assert (family.name, family.type) == ("rtrl_test_seconds", "histogram")
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("rtrl_test_seconds_bucket", "0.001")] == 1
    assert samples[("rtrl_test_seconds_bucket", "0.01")] == 2
    assert samples[("rtrl_test_seconds_bucket", "+Inf")] == 3
    assert samples[("rtrl_test_seconds_count", None)] == 3
    assert abs(samples[("rtrl_test_seconds_sum", None)] - 0.0225) < 1e-12


def test_rtrl_up_gives_every_process_its_own_metrics_port_or_none():
    free = metrics_ports(UpOptions(inference_replicas=3))
    assert list(free) == ["gateway", "learner", "inference-0", "inference-1", "inference-2"]
    assert len(set(free.values())) == 5 and all(port > 0 for port in free.values())
    assert metrics_ports(UpOptions(inference_replicas=2, metrics_base_port=9100)) == {
        "gateway": 9100,
        "learner": 9101,
        "inference-0": 9102,
        "inference-1": 9103,
    }
    assert set(metrics_ports(UpOptions(metrics_base_port=-1)).values()) == {-1}


def test_adding_without_reading_keeps_a_bounded_backlog_and_loses_nothing():
    window = Window(size=4, buckets=(10.0,))
    for value in range(FOLD_EVERY * 3 + 5):
        window.add(float(value % 20))
    # The adding thread folded every FOLD_EVERY adds: only the last few wait for a reader.
    assert len(window._added) == 5
    snapshot = window.histogram()
    assert snapshot.count == FOLD_EVERY * 3 + 5
    assert snapshot.cumulative_counts[0] == sum(value % 20 <= 10 for value in range(FOLD_EVERY * 3 + 5))
    assert list(window.values()) == [float(value % 20) for value in range(FOLD_EVERY * 3 + 1, FOLD_EVERY * 3 + 5)]


def test_a_rate_meter_counts_the_events_of_its_window_only():
    meter = RateMeter(window_s=1.0)
    for index in range(11):
        meter.add(10.0 + index * 0.1)
    assert meter.rate(11.0) == pytest.approx(11.0)  # 11 events over the last second
    assert meter.rate(11.5) == pytest.approx(6.0)  # those at 10.5 s and later


def test_a_rate_meter_nobody_reads_drops_old_events_as_it_goes():
    meter = RateMeter(window_s=1.0)
    for index in range(FOLD_EVERY * 3):
        meter.add(index * 0.01)
    assert len(meter._events) < FOLD_EVERY
    assert meter.rate(FOLD_EVERY * 3 * 0.01) == pytest.approx(100.0, rel=0.02)
