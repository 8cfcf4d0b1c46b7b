"""Where inference replies wait for the clock between two decision steps.

Replies are offered on the threads that receive them (through the dispatcher); the clock's thread takes
the newest usable one at the first tick of each step. What "usable" means, and when an early reply is
held back for the next step (the usual staleness D and the jitter reserve R): docs/clock.md, Mailbox.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from rtrl.metrics import Window

# Recent replies whose arrival staleness gives the mailbox its usual staleness D (docs/clock.md, Mailbox),
# and how many it needs before D is trusted (until then every reply is due: the newest wins).
ARRIVAL_WINDOW = 64
ARRIVAL_MIN = 16
# An early reply is held back only while replies are scarce: at most this many arrive per step on
# average (next_idle sends each observation once, about one per step). With more (the staggering
# schedulers resend), the next step is likely to get its own reply, and holding back would only add
# a frame of staleness for the same coverage (docs/staggering-benchmark.md).
SCARCE_ARRIVALS_PER_STEP = 1.2


@dataclass(frozen=True, slots=True)
class ActionReply:
    """An inference answer as the clock needs it."""

    action: int
    policy_version: int
    behaviour_log_prob: float


@dataclass(frozen=True, slots=True)
class PendingReply:
    """A reply waiting in the mailbox for the next step boundary."""

    episode: int
    obs_frame: int
    arrived_s: float
    reply: ActionReply


class ActionMailbox:
    """Every pending inference reply with its observation frame; the clock takes the newest usable one.

    `offer` runs on the threads that receive replies, `begin_episode`/`advance`/`take` on the clock
    thread at the start of each tick, so a reply offered during tick f can first be applied at frame f + 1.
    """

    def __init__(
        self, max_staleness_frames: int, now_s: Callable[[], float] = time.monotonic, jitter_reserve_frames: int = 0
    ) -> None:
        self.max_staleness_frames = max_staleness_frames
        self.jitter_reserve_frames = jitter_reserve_frames
        self._now_s = now_s
        self._lock = threading.Lock()
        self._pending: list[PendingReply] = []
        self._arrival_staleness: deque[int] = deque(maxlen=ARRIVAL_WINDOW)
        self._arrivals_per_step: deque[int] = deque(maxlen=ARRIVAL_WINDOW)
        self._arrivals_since_take = 0
        self._episode = -1
        self._frame = -1
        self._last_taken_obs_frame = -math.inf
        self.replies_accepted = 0
        self.replies_late = 0
        self.replies_superseded = 0
        self.decision_overhead_ms = Window()

    def begin_episode(self, episode: int, frame: int) -> None:
        """Drops (as late) every reply of the previous episode."""
        with self._lock:
            self.replies_late += len(self._pending)
            self._pending.clear()
            self._episode = episode
            self._frame = frame
            self._last_taken_obs_frame = -math.inf

    def advance(self, frame: int) -> None:
        """Marks the start of tick `frame` (so later arrivals are judged against frame + 1)."""
        with self._lock:
            self._frame = frame

    def offer(self, episode: int, obs_frame: int, obs_produced_s: float, reply: ActionReply) -> bool:
        """Keeps `reply` if it can still be applied; returns whether it was kept."""
        arrived_s = self._now_s()
        with self._lock:
            arrival_staleness = self._frame + 1 - obs_frame
            if episode != self._episode or arrival_staleness > self.max_staleness_frames:
                self.replies_late += 1
                return False
            self._arrival_staleness.append(arrival_staleness)
            self._arrivals_since_take += 1
            self._pending.append(PendingReply(episode, obs_frame, arrived_s, reply))
            self.replies_accepted += 1
        self.decision_overhead_ms.add((arrived_s - obs_produced_s) * 1000.0)
        return True

    def usual_staleness(self) -> int:
        """D: the median arrival staleness of recent replies plus the jitter reserve, at most S (0: none is
        held back); docs/clock.md, Mailbox."""
        with self._lock:
            return self._usual_staleness()

    def _usual_staleness(self) -> int:
        if len(self._arrival_staleness) < ARRIVAL_MIN or len(self._arrivals_per_step) < ARRIVAL_MIN:
            return 0
        if sum(self._arrivals_per_step) > SCARCE_ARRIVALS_PER_STEP * len(self._arrivals_per_step):
            return 0  # plenty of replies: every one is due, the newest wins
        recent = sorted(self._arrival_staleness)
        return min(recent[len(recent) // 2] + self.jitter_reserve_frames, self.max_staleness_frames)

    def take(self, frame: int, interval_frames: int = 1) -> PendingReply | None:
        """At the first tick of a step (the next one `interval_frames` later): the newest usable reply,
        except that an early one (staleness < D) that will be due, not beyond D, at the next step
        waits for it when another reply can serve this one, or always with a jitter reserve. Older
        replies, and replies to observations older than one already acted on, are superseded."""
        with self._lock:
            self._frame = frame
            self._arrivals_per_step.append(self._arrivals_since_take)
            self._arrivals_since_take = 0
            usable = [p for p in self._pending if frame - p.obs_frame <= self.max_staleness_frames]
            self.replies_late += len(self._pending) - len(usable)
            # Actions are applied in the order of their observations: a reply that comes back after a
            # newer observation's action was applied (a slow call, the second answer of a hedged one)
            # would take the game back in time.
            in_order = [p for p in usable if p.obs_frame > self._last_taken_obs_frame]
            self.replies_superseded += len(usable) - len(in_order)
            usable = in_order
            if not usable:
                self._pending = []
                return None
            usual = self._usual_staleness()
            # With k > 1 an early reply would be k frames staler at the next step: then it is used now.
            for_later = [p for p in usable if frame - p.obs_frame + interval_frames <= usual]
            for_now = [p for p in usable if frame - p.obs_frame + interval_frames > usual]
            if not for_now and usual and self.jitter_reserve_frames:
                # The reserve: early replies keep their place in the line even when this step goes
                # without, so one that comes back late later still finds its step waiting.
                self._pending = usable
                return None
            chosen = max(for_now or usable, key=lambda p: p.obs_frame)
            self._pending = [p for p in for_later if p.obs_frame > chosen.obs_frame] if for_now else []
            self.replies_superseded += len(usable) - 1 - len(self._pending)
            self._last_taken_obs_frame = chosen.obs_frame
            return chosen

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)
