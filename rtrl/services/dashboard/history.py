"""What the dashboard remembers between polls: chart points over a time window, coverage over the last
seconds, and episode returns beyond the gateway's own window. Plain data in, JSON-ready dicts out;
no gRPC here, so it is tested without servers.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

# Coverage "now" is measured over this many seconds of decisions (GetStats' coverage is since start,
# which hides a drop after a long good run).
RECENT_COVERAGE_S = 2.0
# Episodes whose returns are kept per gateway, for the returns chart.
MAX_EPISODES = 500


class RecentCoverage:
    """Fresh decisions / decisions over the last `window_s` seconds, from cumulative counters."""

    def __init__(self, window_s: float = RECENT_COVERAGE_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, now_s: float, decisions: int, fresh: int) -> float | None:
        """Records the counters at `now_s`; returns the coverage over the window, None without decisions."""
        if self._samples and decisions < self._samples[-1][1]:
            self._samples.clear()  # the gateway restarted: its counters began again
        self._samples.append((now_s, decisions, fresh))
        while len(self._samples) > 2 and self._samples[1][0] <= now_s - self.window_s:
            self._samples.popleft()
        _, first_decisions, first_fresh = self._samples[0]
        if decisions == first_decisions:
            return None
        return (fresh - first_fresh) / (decisions - first_decisions)


class EpisodeReturns:
    """Returns by episode number, merged from successive windows of the most recent ones."""

    def __init__(self, max_episodes: int = MAX_EPISODES) -> None:
        self.max_episodes = max_episodes
        self._returns: dict[int, float] = {}

    def update(self, episodes: int, recent_returns: list[float]) -> None:
        """`recent_returns` are the returns of episodes episodes-len+1 .. episodes (numbered from 1)."""
        if self._returns and episodes < max(self._returns):
            self._returns.clear()  # the gateway restarted
        first = episodes - len(recent_returns) + 1
        for offset, episode_return in enumerate(recent_returns):
            self._returns[first + offset] = episode_return
        for episode in sorted(self._returns)[: max(0, len(self._returns) - self.max_episodes)]:
            del self._returns[episode]

    def points(self) -> list[list[float]]:
        """[[episode, return], ...] in episode order."""
        return [[episode, self._returns[episode]] for episode in sorted(self._returns)]


class History:
    """Chart points of the last `window_s` seconds; appended by the poller, read by HTTP threads."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._points: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()

    def add(self, point: dict[str, Any]) -> None:
        """`point` must carry its time in "t" (Unix seconds)."""
        with self._lock:
            self._points.append(point)
            while self._points and self._points[0]["t"] < point["t"] - self.window_s:
                self._points.popleft()

    def points(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._points)

    def __len__(self) -> int:
        return len(self._points)


def chart_point(now_unix_s: float, state: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one poll that the time charts plot (a small subset of the state)."""
    gateways: list[dict[str, Any] | None] = []
    for gateway in state["gateways"]:
        stats = gateway.get("stats")
        if stats is None:
            gateways.append(None)
            continue
        gateways.append(
            {
                "coverage": stats["coverage"],
                "coverage_recent": stats["coverage_recent"],
                "overhead_p50_ms": stats["decision_overhead_ms"]["p50"],
                "overhead_p99_ms": stats["decision_overhead_ms"]["p99"],
                "fps": stats["measured_frame_rate_hz"],
                "replicas": {r["address"]: r["latency_ms"]["p50"] for r in stats["replicas"]},
            }
        )
    learner = state["learner"].get("status")
    learner_point = None
    if learner is not None:
        lag = learner["policy_lag"]
        learner_point = {
            "updates_per_s": learner["updates_per_s"],
            "version_lag_mean": lag["version_lag_mean"],
            "lag_ms_p50": lag["lag_ms"]["p50"],
            "stream_length": learner["stream_length"],
            "consumer_lag": learner["consumer_lag"],
            "checkpoint_version": learner["checkpoint_version"],
        }
    return {"t": now_unix_s, "gateways": gateways, "learner": learner_point}
