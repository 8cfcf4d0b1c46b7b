"""When the gateway sends an observation to inference, and to which replica (RTRL_SCHEDULER).

The dispatcher holds the newest observation sample and asks a `Scheduler` what to do whenever something
changes (a new sample, a call ending, a due time passing): `plan(...)` names the replica to send the
newest sample to now, or says when to ask again. Three policies, specified in docs/dispatch.md:
`next_idle` (the default: the next idle replica, at once, with hedging), and the paper's `max_time`
(Algorithm 1, T from a recent window) and `mean_time` (its appendix), which space calls T/N apart.
What a policy does beyond `plan` is said by the hooks of `Scheduler`; `SCHEDULERS` is the one list of
policies by name.

Not thread-safe: the dispatcher calls a scheduler from its own thread only. No grpc here, and time is
passed in, so that tests can drive it with made-up times.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

# The constants' reasons and the measurements behind them: docs/dispatch.md#the-schedulers-schedulerpy-rtrl_scheduler.
# Weight of the newest round trip in a running mean (mean_time's T, next_idle's mean).
MEAN_WEIGHT = 0.1
# How often to ask again while no replica is known: membership changes do not wake the dispatcher.
NO_REPLICA_RETRY_S = 0.05
# Round trips of a replica that are not counted in T: its first includes building the model.
WARMUP_REPLIES = 1
# next_idle hedges a call unanswered after this many mean round trips (and at least HEDGE_MIN_S) ...
HEDGE_AFTER_MEANS = 4.0
HEDGE_MIN_S = 0.004
# ... or sooner, when a second answer as slow as this quantile of the last HEDGE_TAIL_WINDOW round trips
# would otherwise miss the step, but never before the call is HEDGE_LATE_MEANS means old.
HEDGE_TAIL_QUANTILE = 0.9
HEDGE_TAIL_WINDOW = 64
HEDGE_LATE_MEANS = 1.5
# max_time: T is the longest of this many recent counted round trips, once this many of the longest
# are set aside as outliers (3 of 64: about the 95th percentile).
MAX_TIME_WINDOW = 64
MAX_TIME_OUTLIERS = 3


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What a scheduler knows of a usable replica (one the gateway has not dropped from rotation)."""

    address: str
    in_flight: int
    """This gateway's calls to the replica that have not ended."""
    recently_failed: bool
    """Its last call failed a short while ago: chosen only when no other replica is idle."""


@dataclass(frozen=True, slots=True)
class SampleView:
    """What a scheduler knows of the newest observation sample."""

    produced_s: float
    """When its frame was produced."""
    deadline_s: float
    """When a reply to it stops being usable."""
    unsent: bool
    """It has not been sent to any replica yet."""

    def worth_sending(self, now_s: float, round_trip_s: float) -> bool:
        """Whether a reply can still come in time if a call takes `round_trip_s`; any sample before its
        deadline when the round trip exceeds even a fresh sample's budget (docs/dispatch.md, shared rules)."""
        if self.deadline_s <= now_s:
            return False
        if round_trip_s >= self.deadline_s - self.produced_s:
            return True
        return self.deadline_s - now_s >= round_trip_s


@dataclass(frozen=True, slots=True)
class LeadView:
    """What a scheduler knows when the clock asks for the lead L of an episode that starts (clock.py, Lead)."""

    frame_period_s: float
    configured_frames: int
    """L as configured (RTRL_LEAD_FRAMES)."""
    usual_staleness_frames: int
    """D: the mailbox's usual staleness of a reply when it arrives (0: none is held back)."""
    room_frames: int
    """S - k: the longest lead at which a reply that misses its step can still serve the next one."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A scheduler's answer: send the newest sample to `send_to` now, or ask again at `wake_at_s`."""

    send_to: str | None = None
    wake_at_s: float | None = None
    """Ask again at this time even if nothing happens; None: when something happens."""


def next_in_rotation(replicas: Sequence[ReplicaView], after: str | None) -> ReplicaView | None:
    """The first idle replica in the rotation that starts after `after`; one that failed recently only
    when no other is idle."""
    count = len(replicas)
    start = 0
    if after is not None:
        for index, replica in enumerate(replicas):
            if replica.address == after:
                start = index + 1
                break
    second_choice: ReplicaView | None = None
    for offset in range(count):
        replica = replicas[(start + offset) % count]
        if replica.in_flight:
            continue
        if replica.recently_failed:
            second_choice = second_choice or replica
            continue
        return replica
    return second_choice


class Scheduler:
    """Base of the policies: the rotation, round-trip bookkeeping, counters, and the hooks' defaults."""

    name: ClassVar[str]
    """What RTRL_SCHEDULER calls it (its key in `SCHEDULERS`)."""
    inline: ClassVar[bool] = False
    """It never asks to be woken at a time (`Plan.wake_at_s`): the dispatcher may plan on the thread that
    brings a change instead of its own."""
    keeps_backlog: ClassVar[bool] = False
    """A sample replaced before it was sent waits for the next idle replica while `backlog_in_time`."""
    hedges: ClassVar[bool] = False
    """An overdue call (`hedge_after_s`) is sent once more, where `plan_hedge` says (inline only)."""

    def __init__(self) -> None:
        self._last_address: str | None = None
        self._replies_seen: dict[str, int] = {}
        self.turns_passed = 0
        """Calls that went to another replica because the one whose turn it was was still busy."""
        self.slots_waited = 0
        """Calls that were due while no replica was idle, so they waited for one."""

    @property
    def period_s(self) -> float:
        """T: the round trip the spacing is computed from (0 while unknown, and for next_idle)."""
        return 0.0

    def spacing_s(self, replica_count: int) -> float:
        """T/N, the time between two calls (0 while unknown, and for next_idle)."""
        return self.period_s / replica_count if replica_count else 0.0

    def plan(self, now_s: float, sample: SampleView | None, replicas: Sequence[ReplicaView]) -> Plan:
        """What to do now with the newest sample (None: there is none yet) and the replicas in rotation."""
        raise NotImplementedError

    def on_sent(self, address: str, now_s: float, replica_count: int) -> None:
        """The dispatcher sent a call to `address` at `now_s` with `replica_count` usable replicas."""
        self._last_address = address

    def on_reply(self, address: str, round_trip_s: float) -> None:
        """A call to `address` answered after `round_trip_s`."""
        seen = self._replies_seen.get(address, 0)
        self._replies_seen[address] = seen + 1
        if seen >= WARMUP_REPLIES:
            self._observe(round_trip_s)

    def on_failure(self, address: str) -> None:
        """A call to `address` failed; failures say nothing about the round trip of an answer."""

    def _observe(self, round_trip_s: float) -> None:
        """A counted round trip (after the replica's warm-up)."""

    def lead_frames(self, lead: LeadView) -> int | None:
        """The lead L of an episode that starts now: frames between an observation and the step its action
        is meant for, as this policy sees it; None: keep the configured lead."""
        return None

    def hedge_after_s(self, time_left_s: float = math.inf) -> float | None:
        """How long a call may stay unanswered before its sample goes to a second replica, when the step the
        reply is meant for is `time_left_s` away; None: never (for now)."""
        return None

    def plan_hedge(self, now_s: float, sample: SampleView, replicas: Sequence[ReplicaView]) -> str | None:
        """Where to send once more a sample whose call is overdue (see `hedge_after_s`); None: nowhere."""
        return None

    def backlog_in_time(self, now_s: float, sample: SampleView, own_step_s: float) -> bool:
        """Whether a backlog sample (see `keeps_backlog`) is still worth a call now, its reply being meant for
        the step that starts at `own_step_s`."""
        return False


class NextIdleScheduler(Scheduler):
    """The newest unsent sample goes to the first idle replica in the rotation, as soon as there is one."""

    name = "next_idle"
    # It plans on a new sample or an ended call only, which is what lets it act on the clock's thread.
    inline = True
    keeps_backlog = True
    hedges = True

    def __init__(self, weight: float = MEAN_WEIGHT) -> None:
        super().__init__()
        self._weight = weight
        self._mean_s = 0.0
        self._recent_s: deque[float] = deque(maxlen=HEDGE_TAIL_WINDOW)

    @property
    def mean_round_trip_s(self) -> float:
        """Running mean of counted round trips: how much of its deadline a sample needs left to be worth sending."""
        return self._mean_s

    def plan(self, now_s: float, sample: SampleView | None, replicas: Sequence[ReplicaView]) -> Plan:
        if sample is None or not sample.unsent or not sample.worth_sending(now_s, self._mean_s):
            return Plan()
        chosen = next_in_rotation(replicas, self._last_address)
        return Plan(send_to=chosen.address if chosen is not None else None)

    def lead_frames(self, lead: LeadView) -> int | None:
        """The configured L, or the usual staleness D when replies take longer, at most S - k."""
        return max(lead.configured_frames, min(lead.usual_staleness_frames, lead.room_frames))

    def hedge_after_s(self, time_left_s: float = math.inf) -> float | None:
        """`HEDGE_AFTER_MEANS` mean round trips, or sooner so that a second answer still comes within
        `time_left_s` (to the step), but not before `HEDGE_LATE_MEANS` means; None before the first round trip."""
        if self._mean_s == 0.0:
            return None
        mean_s = self._mean_s
        in_time_s = max(time_left_s - self.tail_round_trip_s, HEDGE_LATE_MEANS * mean_s)
        return max(HEDGE_MIN_S, min(HEDGE_AFTER_MEANS * mean_s, in_time_s))

    @property
    def tail_round_trip_s(self) -> float:
        """The `HEDGE_TAIL_QUANTILE` of the last `HEDGE_TAIL_WINDOW` counted round trips (0 before the first)."""
        if not self._recent_s:
            return 0.0
        recent = sorted(self._recent_s)
        return recent[min(len(recent) - 1, int(HEDGE_TAIL_QUANTILE * len(recent)))]

    def plan_hedge(self, now_s: float, sample: SampleView, replicas: Sequence[ReplicaView]) -> str | None:
        """Where to send a sample whose call is overdue (see `hedge_after_s`): an idle replica that has not
        failed recently, while a reply can still come in time; None: nowhere."""
        if not sample.worth_sending(now_s, self._mean_s):
            return None
        chosen = next_in_rotation(replicas, self._last_address)
        if chosen is None or chosen.recently_failed:
            return None
        return chosen.address

    def backlog_in_time(self, now_s: float, sample: SampleView, own_step_s: float) -> bool:
        """While a reply, a mean round trip away, can still come before the backlog sample's own step: later,
        the newer sample's reply has been applied by then, and the call would waste the replica."""
        mean_s = self._mean_s
        return now_s + mean_s < own_step_s and sample.worth_sending(now_s, mean_s)

    def _observe(self, round_trip_s: float) -> None:
        previous_s = self._mean_s
        self._mean_s = round_trip_s if previous_s == 0.0 else previous_s + self._weight * (round_trip_s - previous_s)
        self._recent_s.append(round_trip_s)


class StaggeredScheduler(Scheduler):
    """Calls spaced T/N apart in a fixed rotation (docs/dispatch.md); T comes from the subclass."""

    def __init__(self) -> None:
        super().__init__()
        self._next_call_s: float | None = None
        self._last_call_s: float | None = None
        self._replica_count = 0
        self._waiting_for_idle = False

    def plan(self, now_s: float, sample: SampleView | None, replicas: Sequence[ReplicaView]) -> Plan:
        if not replicas:
            return Plan(wake_at_s=now_s + NO_REPLICA_RETRY_S)
        if sample is None:
            return Plan()
        period_s = self.period_s
        if period_s == 0.0:
            # Nothing measured yet: one call at a time, each to the next replica, until a round trip counts.
            if any(replica.in_flight for replica in replicas):
                return Plan()
            first = next_in_rotation(replicas, self._last_address)
            return Plan(send_to=first.address if first is not None and sample.deadline_s > now_s else None)
        due_s = self._next_call_s
        if due_s is not None and now_s < due_s:
            return Plan(wake_at_s=due_s)
        if not sample.worth_sending(now_s, period_s):
            # A reply to this sample would come too late; the next sample is at most a decision away.
            return Plan()
        in_turn = next_in_rotation(replicas, self._last_address)
        if in_turn is None:
            if not self._waiting_for_idle:
                self._waiting_for_idle = True
                self.slots_waited += 1
            return Plan()
        # The replica whose turn it is would be the one right after the last in the rotation.
        expected = _successor(replicas, self._last_address)
        if expected is not None and expected.address != in_turn.address:
            self.turns_passed += 1
        return Plan(send_to=in_turn.address)

    def on_sent(self, address: str, now_s: float, replica_count: int) -> None:
        super().on_sent(address, now_s, replica_count)
        self._waiting_for_idle = False
        self._replica_count = replica_count
        spacing_s = self.spacing_s(replica_count)
        due_s = self._next_call_s
        # On the grid while nearly on time; a call later than half a spacing starts it again from now.
        base_s = due_s if due_s is not None and now_s - due_s < spacing_s / 2 else now_s
        self._next_call_s = base_s + spacing_s
        self._last_call_s = now_s

    def _period_grew(self) -> None:
        """T grew: the next call comes no sooner than the new T/N after the last one (Algorithm 1's shift)."""
        if self._last_call_s is None or not self._replica_count:
            return
        pushed_s = self._last_call_s + self.spacing_s(self._replica_count)
        if self._next_call_s is None or pushed_s > self._next_call_s:
            self._next_call_s = pushed_s

    def lead_frames(self, lead: LeadView) -> int | None:
        """T rounded up to frames: replies act on steps about T after their observations (None: T unknown)."""
        period_s = self.period_s
        if period_s == 0.0:
            return None
        return math.ceil(period_s / lead.frame_period_s)


class MaxTimeScheduler(StaggeredScheduler):
    """Algorithm 1: T is the longest recent counted round trip, outliers aside (docs/dispatch.md).

    `window=None, outliers=0` is the paper's rule as published: the longest round trip ever counted.
    """

    name = "max_time"

    def __init__(self, window: int | None = MAX_TIME_WINDOW, outliers: int = MAX_TIME_OUTLIERS) -> None:
        super().__init__()
        if window is not None and not 0 <= outliers < window:
            raise ValueError(
                f"max_time sets aside {outliers} outliers of a window of {window}; keep fewer than the window"
            )
        self._outliers = outliers
        self._recent_s: deque[float] = deque(maxlen=window)
        self._max_s = 0.0

    @property
    def period_s(self) -> float:
        return self._max_s

    def _observe(self, round_trip_s: float) -> None:
        self._recent_s.append(round_trip_s)
        previous_s = self._max_s
        recent = self._recent_s
        if recent.maxlen is None:
            self._max_s = max(previous_s, round_trip_s)
        else:
            # Until the window has filled, set aside a proportional share of outliers (none at first).
            aside = self._outliers * len(recent) // recent.maxlen
            self._max_s = sorted(recent)[len(recent) - 1 - aside]
        if self._max_s > previous_s:
            self._period_grew()


class MeanTimeScheduler(StaggeredScheduler):
    """The appendix variant: T is the exponentially weighted running mean of counted round trips."""

    name = "mean_time"

    def __init__(self, weight: float = MEAN_WEIGHT) -> None:
        super().__init__()
        self._weight = weight
        self._mean_s = 0.0

    @property
    def period_s(self) -> float:
        return self._mean_s

    def _observe(self, round_trip_s: float) -> None:
        previous_s = self._mean_s
        self._mean_s = round_trip_s if previous_s == 0.0 else previous_s + self._weight * (round_trip_s - previous_s)
        if self._mean_s > previous_s:
            self._period_grew()


def _successor(replicas: Sequence[ReplicaView], after: str | None) -> ReplicaView | None:
    """The replica right after `after` in the rotation, busy or not."""
    if not replicas:
        return None
    for index, replica in enumerate(replicas):
        if replica.address == after:
            return replicas[(index + 1) % len(replicas)]
    return replicas[0]


SCHEDULERS: Mapping[str, type[Scheduler]] = {
    policy.name: policy for policy in (NextIdleScheduler, MaxTimeScheduler, MeanTimeScheduler)
}
"""Every policy by the name RTRL_SCHEDULER gives it: a new policy is a `Scheduler` subclass added here."""
SCHEDULER_NAMES = tuple(SCHEDULERS)


def make_scheduler(name: str) -> Scheduler:
    """The policy `name` (a key of `SCHEDULERS`) with its default parameters."""
    policy = SCHEDULERS.get(name)
    if policy is None:
        raise ValueError(f"there is no scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    return policy()
