"""How stale the data a learner receives is: policy lag in versions and milliseconds, action staleness, fallbacks.

Acting never waits for learning, so each transition was chosen by some older checkpoint (its
`policy_version`), from an observation some frames older than the frame the action started on
(`staleness_frames`), or by the gateway's fallback policy when no reply came in time (`fresh` false,
version -1). `lag_stats` summarises one batch of transitions against the learner's current version
and clock; `LagWindow` keeps the same numbers over the newest transitions for a status line;
`too_old` is the filter behind "drop data older than K versions". Pure: no Redis, no gRPC, no clock
of its own (callers pass `now_unix_ns`).

Lag in milliseconds compares the gateway's wall clock (when the action was first applied) with the
learner's, so across machines it includes their clock offset; transitions without that timestamp
(0) are left out of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rtrl.transitions import Transition

NS_PER_MS = 1_000_000
DEFAULT_WINDOW_TRANSITIONS = 1000


@dataclass(frozen=True)
class LagStats:
    """Lag of a set of transitions; a min/mean/max is 0 when no transition contributes to it (see the counts)."""

    transitions: int
    fresh: int
    """Transitions whose action came from an inference reply; version lag and staleness are over these."""
    fallback_fraction: float
    """Share of transitions whose action the fallback policy chose (0 when there are none)."""
    version_lag_min: int
    """Policy lag in versions, current_version - policy_version, of fresh actions: min, mean and max.
    Negative only when the checkpoint directory was reset under running replicas."""
    version_lag_mean: float
    version_lag_max: int
    lag_ms_min: float
    """Milliseconds from the action being first applied to `now`: min, mean and max over `timed`."""
    lag_ms_mean: float
    lag_ms_max: float
    lag_ms_p50: float
    """Median, 90th and 99th percentile of lag_ms (0 when nothing is timed)."""
    lag_ms_p90: float
    lag_ms_p99: float
    timed: int
    """Transitions carrying an action_applied timestamp (the ones lag_ms is over)."""
    staleness_frames_min: int
    """Frames from the observation an action was computed from to its first applied frame, fresh actions:
    min, mean and max."""
    staleness_frames_mean: float
    staleness_frames_max: int
    staleness_frames_p50: float
    """Median, 90th and 99th percentile of staleness_frames over fresh actions."""
    staleness_frames_p90: float
    staleness_frames_p99: float


@dataclass(frozen=True)
class _Sample:
    """What one transition contributes, measured when it arrived."""

    fresh: bool
    version_lag: int
    lag_ms: float | None
    staleness_frames: int


def _sample(transition: Transition, current_version: int, now_unix_ns: int) -> _Sample:
    applied = transition.action_applied_unix_ns
    return _Sample(
        fresh=transition.fresh,
        version_lag=current_version - transition.policy_version,
        lag_ms=(now_unix_ns - applied) / NS_PER_MS if applied > 0 else None,
        staleness_frames=transition.staleness_frames,
    )


def _summarise(samples: Sequence[_Sample]) -> LagStats:
    fresh = [s for s in samples if s.fresh]
    lags = [s.version_lag for s in fresh]
    staleness = [s.staleness_frames for s in fresh]
    lag_ms = [s.lag_ms for s in samples if s.lag_ms is not None]
    return LagStats(
        transitions=len(samples),
        fresh=len(fresh),
        fallback_fraction=(len(samples) - len(fresh)) / len(samples) if samples else 0.0,
        version_lag_min=min(lags, default=0),
        version_lag_mean=sum(lags) / len(lags) if lags else 0.0,
        version_lag_max=max(lags, default=0),
        lag_ms_min=min(lag_ms, default=0.0),
        lag_ms_mean=sum(lag_ms) / len(lag_ms) if lag_ms else 0.0,
        lag_ms_max=max(lag_ms, default=0.0),
        lag_ms_p50=_percentile(lag_ms, 50),
        lag_ms_p90=_percentile(lag_ms, 90),
        lag_ms_p99=_percentile(lag_ms, 99),
        timed=len(lag_ms),
        staleness_frames_min=min(staleness, default=0),
        staleness_frames_mean=sum(staleness) / len(staleness) if staleness else 0.0,
        staleness_frames_max=max(staleness, default=0),
        staleness_frames_p50=_percentile(staleness, 50),
        staleness_frames_p90=_percentile(staleness, 90),
        staleness_frames_p99=_percentile(staleness, 99),
    )


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def lag_stats(transitions: Iterable[Transition], current_version: int, now_unix_ns: int) -> LagStats:
    """Lag of one batch of transitions against the learner's checkpoint version and wall clock now."""
    return _summarise([_sample(t, current_version, now_unix_ns) for t in transitions])


def too_old(transition: Transition, current_version: int, max_version_lag: int) -> bool:
    """True when a fresh action was chosen more than `max_version_lag` versions before `current_version`.

    Fallback actions are never too old: the fallback policy does not change with checkpoints.
    """
    return transition.fresh and current_version - transition.policy_version > max_version_lag


class LagWindow:
    """Lag of the newest `size` transitions, each measured when it was added (for a periodic status line)."""

    def __init__(self, size: int = DEFAULT_WINDOW_TRANSITIONS) -> None:
        if size < 1:
            raise ValueError(f"a lag window needs room for at least 1 transition, got {size}")
        self._samples: deque[_Sample] = deque(maxlen=size)

    def add(self, transitions: Iterable[Transition], current_version: int, now_unix_ns: int) -> LagStats:
        """Records a batch and returns that batch's own lag."""
        samples = [_sample(t, current_version, now_unix_ns) for t in transitions]
        self._samples.extend(samples)
        return _summarise(samples)

    def stats(self) -> LagStats:
        return _summarise(self._samples)
