"""The dashboard's memory between polls: coverage over recent seconds, returns by episode, chart history."""

from __future__ import annotations

import pytest

from rtrl.services.dashboard.history import EpisodeReturns, History, RecentCoverage, chart_point


def test_recent_coverage_counts_only_the_decisions_of_the_window():
    coverage = RecentCoverage(window_s=2.0)
    assert coverage.add(0.0, decisions=1000, fresh=1000) is None  # nothing to compare with yet
    assert coverage.add(1.0, decisions=1015, fresh=1015) == 1.0
    # 15 more decisions, 5 of them fallbacks: 99.5% since start, 25 of 30 over the window from 0 s.
    assert coverage.add(2.0, decisions=1030, fresh=1025) == pytest.approx(25 / 30)
    # The window now starts at the sample of 1 s: 10 fallbacks in the 30 decisions since.
    assert coverage.add(3.0, decisions=1045, fresh=1035) == pytest.approx(20 / 30)
    # From 2 s: all 30 decisions fresh again, whatever came before.
    assert coverage.add(4.0, decisions=1060, fresh=1055) == pytest.approx(30 / 30)


def test_recent_coverage_starts_again_when_the_gateway_restarts():
    coverage = RecentCoverage(window_s=2.0)
    coverage.add(0.0, decisions=500, fresh=400)
    assert coverage.add(0.5, decisions=10, fresh=10) is None
    assert coverage.add(1.0, decisions=20, fresh=15) == pytest.approx(0.5)


def test_recent_coverage_is_none_without_new_decisions():
    coverage = RecentCoverage()
    coverage.add(0.0, 10, 10)
    assert coverage.add(1.0, 10, 10) is None


def test_episode_returns_merge_successive_windows_by_episode_number():
    returns = EpisodeReturns(max_episodes=4)
    returns.update(episodes=2, recent_returns=[-21.0, -20.0])
    returns.update(episodes=3, recent_returns=[-20.0, -19.0])  # the gateway's window dropped episode 1
    assert returns.points() == [[1, -21.0], [2, -20.0], [3, -19.0]]
    returns.update(episodes=6, recent_returns=[-18.0, -17.0, -16.0])
    assert returns.points() == [[3, -19.0], [4, -18.0], [5, -17.0], [6, -16.0]]


def test_episode_returns_forget_a_restarted_gateway():
    returns = EpisodeReturns()
    returns.update(episodes=5, recent_returns=[1.0, 2.0])
    returns.update(episodes=1, recent_returns=[7.0])
    assert returns.points() == [[1, 7.0]]


def test_history_keeps_the_time_window():
    history = History(window_s=10.0)
    for t in range(30):
        history.add({"t": float(t)})
    assert [p["t"] for p in history.points()] == [float(t) for t in range(19, 30)]


def test_chart_point_keeps_gaps_for_services_that_did_not_answer():
    state = {
        "gateways": [
            {
                "stats": {
                    "coverage": 0.99,
                    "coverage_recent": 0.9,
                    "decision_overhead_ms": {"p50": 2.0, "p99": 9.0},
                    "measured_frame_rate_hz": 60.0,
                    "replicas": [{"address": "10.0.0.1:50061", "latency_ms": {"p50": 3.0}}],
                }
            },
            {"stats": None},
        ],
        "learner": {"status": None},
    }
    point = chart_point(12.5, state)
    assert point["t"] == 12.5
    assert point["gateways"][0]["overhead_p99_ms"] == 9.0
    assert point["gateways"][0]["replicas"] == {"10.0.0.1:50061": 3.0}
    assert point["gateways"][1] is None
    assert point["learner"] is None
