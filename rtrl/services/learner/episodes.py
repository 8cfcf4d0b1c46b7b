"""Episode returns recovered from the transitions a learner consumes, for TensorBoard and Prometheus.

Each gateway's transitions carry the reward of every decision step and whether the episode ended there
(terminated or truncated), so summing a gateway's rewards until the end of its episode gives the
episode's return. A transition the learner never sees (dropped at the gateway, trimmed, skipped) is
missing from that sum; an episode whose start the learner did not see (it started before the learner
did) is marked `complete=False` rather than reported as if whole. Pure: no threads, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from rtrl.transitions import Transition

RECENT_EPISODES = 1000


@dataclass(frozen=True)
class Episode:
    """One finished episode of one gateway as the learner saw it."""

    gateway_id: str
    episode: int
    episode_return: float
    steps: int
    """Transitions of the episode the learner consumed."""
    complete: bool
    """True when the learner saw the episode from its first step and with no gap in `seq`."""


@dataclass
class _Open:
    episode: int
    next_seq: int
    episode_return: float = 0.0
    steps: int = 0
    complete: bool = True


class EpisodeReturns:
    """Sums rewards per gateway and episode; finished episodes queue up in `finished` for a reader to take.

    One thread adds (the learner loop); `take()` may run on another: deque appends and pops are atomic.
    """

    def __init__(self, keep: int = RECENT_EPISODES) -> None:
        self._open: dict[str, _Open] = {}
        self._finished: deque[Episode] = deque(maxlen=keep)
        self.episodes_finished = 0

    def add(self, transitions: Iterable[Transition]) -> None:
        for t in transitions:
            current = self._open.get(t.gateway_id)
            if current is None or current.episode != t.episode:
                current = _Open(t.episode, t.seq, complete=t.step == 0)
                self._open[t.gateway_id] = current
            if t.seq != current.next_seq:
                current.complete = False
            current.episode_return += t.reward
            current.steps += 1
            current.next_seq = t.seq + 1
            if t.terminated or t.truncated:
                self._finished.append(
                    Episode(t.gateway_id, t.episode, current.episode_return, current.steps, current.complete)
                )
                self.episodes_finished += 1
                del self._open[t.gateway_id]

    def take(self) -> list[Episode]:
        """The episodes finished since the last call (at most `keep` of them), oldest first."""
        taken: list[Episode] = []
        while True:
            try:
                taken.append(self._finished.popleft())
            except IndexError:
                return taken
