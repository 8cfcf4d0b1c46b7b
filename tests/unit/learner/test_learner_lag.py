"""Lag accounting: version lag of fresh actions, fallbacks apart, milliseconds, staleness, the too-old filter."""

from __future__ import annotations

import dataclasses

import pytest
from learner_transitions import make_transition

from rtrl.services.learner.lag import LagWindow, lag_stats, too_old
from rtrl.transitions import Transition

NOW_NS = 1_700_000_000_000_000_000
MS = 1_000_000


def transition(
    *, fresh: bool = True, policy_version: int = 0, staleness_frames: int = 0, applied_ms_ago: float | None = 0.0
) -> Transition:
    return make_transition(
        fresh=fresh,
        staleness_frames=staleness_frames if fresh else 0,
        policy_version=policy_version if fresh else -1,
        action_applied_unix_ns=0 if applied_ms_ago is None else NOW_NS - int(applied_ms_ago * MS),
    )


def test_a_batch_reports_version_lag_of_fresh_actions_and_counts_fallbacks_apart() -> None:
    batch = [
        transition(policy_version=10, staleness_frames=4, applied_ms_ago=100),
        transition(policy_version=7, staleness_frames=6, applied_ms_ago=300),
        transition(policy_version=9, staleness_frames=5, applied_ms_ago=200),
        transition(fresh=False, applied_ms_ago=50),
    ]

    stats = lag_stats(batch, current_version=12, now_unix_ns=NOW_NS)

    expected: dict[str, object] = {
        "transitions": 4,
        "fresh": 3,
        "fallback_fraction": 0.25,
        # 12 - (10, 7, 9) = (2, 5, 3); the fallback's version -1 would have said 13.
        "version_lag_min": 2,
        "version_lag_mean": pytest.approx(10 / 3),
        "version_lag_max": 5,
        # every transition has an age, fallbacks included
        "lag_ms_min": 50.0,
        "lag_ms_mean": pytest.approx(162.5),
        "lag_ms_max": 300.0,
        # linear interpolation between the sorted ages 50, 100, 200, 300
        "lag_ms_p50": pytest.approx(150.0),
        "lag_ms_p90": pytest.approx(270.0),
        "lag_ms_p99": pytest.approx(297.0),
        "timed": 4,
        # the fallback's staleness (0) is not an action computed from an observation
        "staleness_frames_min": 4,
        "staleness_frames_mean": 5.0,
        "staleness_frames_max": 6,
        "staleness_frames_p50": pytest.approx(5.0),
        "staleness_frames_p90": pytest.approx(5.8),
        "staleness_frames_p99": pytest.approx(5.98),
    }
    assert dataclasses.asdict(stats) == expected


def test_transitions_without_an_applied_timestamp_are_left_out_of_the_milliseconds() -> None:
    stats = lag_stats(
        [transition(applied_ms_ago=None), transition(applied_ms_ago=20)], current_version=0, now_unix_ns=NOW_NS
    )

    assert (stats.timed, stats.lag_ms_min, stats.lag_ms_max) == (1, 20.0, 20.0)


def test_an_all_fallback_batch_has_zero_version_lag_and_says_so_in_its_counts() -> None:
    stats = lag_stats([transition(fresh=False), transition(fresh=False)], current_version=5, now_unix_ns=NOW_NS)

    assert (stats.fresh, stats.fallback_fraction) == (0, 1.0)
    assert (stats.version_lag_min, stats.version_lag_mean, stats.version_lag_max) == (0, 0.0, 0)
    assert (stats.staleness_frames_min, stats.staleness_frames_max) == (0, 0)


def test_an_empty_batch_is_all_zeros() -> None:
    stats = lag_stats([], current_version=5, now_unix_ns=NOW_NS)

    assert stats.transitions == 0 and stats.fallback_fraction == 0.0 and stats.lag_ms_mean == 0.0


def test_too_old_drops_fresh_actions_more_than_k_versions_behind_and_never_fallbacks() -> None:
    assert not too_old(transition(policy_version=8), current_version=10, max_version_lag=2)
    assert too_old(transition(policy_version=7), current_version=10, max_version_lag=2)
    assert too_old(transition(policy_version=9), current_version=10, max_version_lag=0)
    assert not too_old(transition(policy_version=10), current_version=10, max_version_lag=0)
    assert not too_old(transition(fresh=False), current_version=1000, max_version_lag=0)


def test_the_window_keeps_the_newest_transitions_measured_when_they_arrived() -> None:
    window = LagWindow(size=3)

    first = window.add([transition(policy_version=1), transition(policy_version=1)], 1, NOW_NS)
    # Arrived when the learner was at version 1: lag 0, and it stays 0 although the version moves on.
    assert first.version_lag_max == 0
    second = window.add([transition(policy_version=1), transition(fresh=False)], 4, NOW_NS)

    assert (second.transitions, second.version_lag_max, second.fallback_fraction) == (2, 3, 0.5)
    overall = window.stats()
    # The oldest of the four fell out: one from the first batch (lag 0), then lag 3 and a fallback.
    assert (overall.transitions, overall.fresh, overall.version_lag_min, overall.version_lag_max) == (3, 2, 0, 3)


def test_a_window_needs_room() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LagWindow(size=0)
