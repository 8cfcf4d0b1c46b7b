"""Sends sampled observations to inference, off the clock thread, as the scheduler plans.

`Dispatcher` (RTRL_INTERACTION=async) holds the newest sample the clock handed over (`submit` only
replaces it, so the clock never waits) and asks its scheduler (scheduler.py) what to do whenever
something changes: a new sample, a call ending, or the time the scheduler asked to be woken at. It
preprocesses a sample once, however many replicas it goes to; replies go into the clock's mailbox from
the thread that receives them. For next_idle there is no dispatcher thread (`inline`: the thread that
brings the change plans and sends), a watchdog hedges overdue calls, and a sample replaced while every
replica was busy waits in a backlog of one: docs/dispatch.md specifies all three.

Replicas are reached through an injected object (`ReplicaLink`), so this module does not import grpc.
The sequential baseline's dispatcher is in sequential.py.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rtrl.services.env_gateway.clock import ObservationSample, StepRecord
from rtrl.services.env_gateway.mailbox import ActionMailbox, ActionReply
from rtrl.services.env_gateway.preprocess import ObservationPreprocessor
from rtrl.services.env_gateway.scheduler import NextIdleScheduler, ReplicaView, SampleView, Scheduler

log = logging.getLogger(__name__)

# With no hedge armed, the watchdog wakes when the next sample's hedge is this share due (see `_watch`).
IDLE_WAKE_HEDGE_SHARE = 0.75


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How one Act call ended: its reply, or None when it failed."""

    address: str
    reply: ActionReply | None
    round_trip_s: float


OnCallDone = Callable[[CallOutcome], None]
"""Called once per sent call, on a gRPC thread."""


class ReplicaLink(Protocol):
    """What the dispatchers need from the replica pool (replicas.ReplicaPool)."""

    def views(self, now_s: float) -> list[ReplicaView]: ...

    def prepare(self, observation: Any, frame_index: int) -> Any: ...

    def send(self, address: str, request: Any, deadline_s: float, on_done: OnCallDone) -> bool: ...


class _PreparedSample:
    """A sample with its Act request built once (preprocessing and serialising are not repeated)."""

    __slots__ = ("request", "sample", "sends")

    def __init__(self, sample: ObservationSample, request: Any) -> None:
        self.sample = sample
        self.request = request
        self.sends = 0


class Dispatcher:
    """Sends the newest sample where its scheduler says, on the dispatcher thread."""

    def __init__(
        self,
        preprocessor: ObservationPreprocessor,
        mailbox: ActionMailbox,
        replicas: ReplicaLink,
        scheduler: Scheduler | None = None,
        now_s: Callable[[], float] = time.monotonic,
        inline: bool = False,
        frame_period_s: float = 1.0 / 60.0,
    ) -> None:
        self._preprocessor = preprocessor
        self._frame_period_s = frame_period_s
        self._mailbox = mailbox
        self._replicas = replicas
        self.scheduler = scheduler or NextIdleScheduler()
        if inline and not self.scheduler.inline:
            raise ValueError(
                f"the {self.scheduler.name} scheduler asks to be woken at times of its own, which an inline "
                "dispatcher never does; use inline=False with it"
            )
        self.inline = inline
        self._now_s = now_s
        lock = threading.RLock()
        self._changed = threading.Condition(lock)
        # The hedge watchdog's own condition (same lock), notified only when a hedge is armed earlier than
        # the watchdog planned to wake (see `_watch`).
        self._hedge_armed = threading.Condition(lock)
        self._watch_until_s = -math.inf
        self._sample_interval_s: float | None = None
        self._hedge_delay_s: float | None = None
        """From the newest armed sample's production to its hedge time."""
        self._latest: ObservationSample | None = None
        self._backlog: ObservationSample | None = None
        """The sample `_latest` replaced before it was sent anywhere, sent when a replica is free (`keeps_backlog`)."""
        self._changes = 0
        self._planned_changes = 0
        self._stepping = False
        self._latest_sent = False
        self._outcomes: list[CallOutcome] = []
        self._prepared: _PreparedSample | None = None
        self._wake_at_s: float | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.requests_sent = 0
        self.requests_resent = 0
        """Calls that carried a sample already sent to another replica (staggering schedulers)."""
        self.requests_not_sent = 0
        """Samples never sent anywhere: replaced by a newer one (out of next_idle's backlog), or too late."""
        self.requests_failed = 0
        self.requests_hedged = 0
        """Calls that sent an overdue sample again to a second replica (`Scheduler.hedges`; part of requests_resent)."""
        self.replica_count = 0
        """Replicas in rotation at the last plan."""
        # Hedging: the newest sent sample while none of its calls has answered, when to hedge it.
        self._awaited: ObservationSample | None = None
        self._hedge_at_s: float | None = None
        self._hedge_due = False
        self._watchdog: threading.Thread | None = None

    # -- the clock's side and the gRPC threads' side ---------------------------------------------------

    def submit(self, sample: ObservationSample) -> None:
        """Called by the clock; never blocks beyond a short lock."""
        with self._changed:
            previous = self._latest
            if previous is not None and previous.episode == sample.episode and sample.produced_s > previous.produced_s:
                self._sample_interval_s = sample.produced_s - previous.produced_s
            if self._latest is not None and not self._latest_sent:
                # A backlog is kept only within an episode (a reply to the previous episode's
                # observation would be dropped as late).
                keep = self.scheduler.keeps_backlog and self._latest.episode == sample.episode
                self.requests_not_sent += (self._backlog is not None) + (not keep)
                self._backlog = self._latest if keep else None
            self._latest = sample
            self._latest_sent = False
            self._changes += 1
            self._changed.notify()
        if self.inline:
            self._step_here()

    def on_record(self, record: StepRecord) -> None:
        """Called by the clock for every step it closes; only the sequential dispatcher uses it."""

    def _on_call_done(self, sample: ObservationSample, outcome: CallOutcome) -> None:
        if outcome.reply is not None:
            self._mailbox.offer(sample.episode, sample.frame_index, sample.produced_s, outcome.reply)
        with self._changed:
            if outcome.reply is None:
                self.requests_failed += 1
            elif self._awaited is sample:
                self._awaited = self._hedge_at_s = None
            self._outcomes.append(outcome)
            self._changes += 1
            self._changed.notify()
        if self.inline:
            self._step_here()

    def _step_here(self) -> None:
        """Inline mode: plans on this thread, unless another thread is planning, which then plans again."""
        with self._changed:
            if self._stepping or self._stopping:
                return
            self._stepping = True
        while True:
            try:
                self.step()
            except Exception:
                # The clock (or a thread delivering an answer) must go on whatever happens here.
                log.exception("the dispatcher failed to plan or send a call")
            with self._changed:
                # Checked and released together, so a change arriving now is planned by its own thread.
                if self._planned_changes == self._changes or self._stopping:
                    self._stepping = False
                    return

    # -- the dispatcher thread ----------------------------------------------------------------------

    def start(self) -> None:
        if self.inline:
            if self.scheduler.hedges:
                self._watchdog = threading.Thread(target=self._watch, name="rtrl-hedge", daemon=True)
                self._watchdog.start()
            return
        self._thread = threading.Thread(target=self._run, name="rtrl-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
            self._hedge_armed.notify_all()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join()

    def _watch(self) -> None:
        """Inline, for a scheduler that hedges: waits for the newest sample's call to be overdue, then has it
        hedged. Woken only by time and by a hedge armed before it planned to wake, never by every sample
        and reply, which would compete with the call for the CPU (docs/dispatch.md, hedging)."""
        while True:
            with self._changed:
                while not self._stopping:
                    now_s = self._now_s()
                    hedge_at_s = self._hedge_at_s
                    if hedge_at_s is not None and hedge_at_s <= now_s:
                        break
                    wake_at_s = hedge_at_s if hedge_at_s is not None else self._idle_wake_at_s(now_s)
                    self._watch_until_s = wake_at_s
                    self._hedge_armed.wait(None if wake_at_s == math.inf else wake_at_s - now_s)
                # Not waiting until the next turn of the loop, which reads the state again: nothing to notify.
                self._watch_until_s = -math.inf
                if self._stopping:
                    return
                self._hedge_at_s = None
                self._hedge_due = True
                self._changes += 1
            self._step_here()

    def _idle_wake_at_s(self, now_s: float) -> float:
        """When the watchdog with no hedge armed wakes by itself: see `_watch` (inf: only when notified)."""
        latest, interval_s, delay_s = self._latest, self._sample_interval_s, self._hedge_delay_s
        if latest is None or interval_s is None or delay_s is None:
            return math.inf
        wake_at_s = latest.produced_s + interval_s + IDLE_WAKE_HEDGE_SHARE * delay_s
        return wake_at_s if wake_at_s > now_s else math.inf

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopping and self._planned_changes == self._changes:
                    if self._wake_at_s is None:
                        self._changed.wait()
                        continue
                    remaining_s = self._wake_at_s - self._now_s()
                    if remaining_s <= 0:
                        break
                    self._changed.wait(remaining_s)
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:
                # A bug here must not silence inference for the rest of the run; the clock keeps
                # going on fallback actions either way.
                log.exception("the dispatcher failed to plan or send a call")
                with self._changed:
                    self._wake_at_s = None

    def step(self) -> None:
        """Takes what changed to the scheduler and sends what it says (the thread's body; tests call it)."""
        with self._changed:
            outcomes, self._outcomes = self._outcomes, []
            sample, sample_unsent = self._latest, not self._latest_sent
            self._planned_changes = self._changes
            self._wake_at_s = None
            hedge = self._hedge_due and sample is not None and self._awaited is sample
            self._hedge_due = False
        for outcome in outcomes:
            if outcome.reply is not None:
                self.scheduler.on_reply(outcome.address, outcome.round_trip_s)
            else:
                self.scheduler.on_failure(outcome.address)
        if hedge and sample is not None:
            now_s = self._now_s()
            overdue = SampleView(sample.produced_s, sample.deadline_s, unsent=False)
            address = self.scheduler.plan_hedge(now_s, overdue, self._replicas.views(now_s))
            if address is not None and self._send(address, sample):
                self.scheduler.on_sent(address, now_s, self.replica_count)
                with self._changed:
                    self.requests_hedged += 1
        while True:
            now_s = self._now_s()
            views = self._replicas.views(now_s)
            self.replica_count = len(views)
            view = SampleView(sample.produced_s, sample.deadline_s, sample_unsent) if sample is not None else None
            plan = self.scheduler.plan(now_s, view, views)
            if plan.send_to is None or sample is None:
                with self._changed:
                    self._wake_at_s = plan.wake_at_s
                if sample is not None and not sample_unsent:
                    self._send_backlog()
                return
            sample_unsent = False
            if self._send(plan.send_to, sample):
                self.scheduler.on_sent(plan.send_to, now_s, len(views))
            else:
                # Too late for this sample, or the replica just left: wait for the next sample.
                return

    def _send_backlog(self) -> None:
        """Once the newest sample is sent: the backlog sample to an idle replica, if still in time."""
        with self._changed:
            backlog, self._backlog = self._backlog, None
        if backlog is None:
            return
        now_s = self._now_s()
        view = SampleView(backlog.produced_s, backlog.deadline_s, unsent=True)
        own_step_s = backlog.produced_s + self._mailbox.usual_staleness() * self._frame_period_s
        if self.scheduler.backlog_in_time(now_s, view, own_step_s):
            plan = self.scheduler.plan(now_s, view, self._replicas.views(now_s))
            if plan.send_to is None:
                # Every replica is busy: the next one to finish may still take it.
                with self._changed:
                    if self._backlog is None:
                        self._backlog = backlog
                        return
            elif self._send(plan.send_to, backlog):
                self.scheduler.on_sent(plan.send_to, now_s, self.replica_count)
                return
        with self._changed:
            self.requests_not_sent += 1

    def _send(self, address: str, sample: ObservationSample) -> bool:
        prepared = self._prepared
        if prepared is None or prepared.sample is not sample:
            observation = self._preprocessor.stack(sample.frames)
            prepared = self._prepared = _PreparedSample(sample, self._replicas.prepare(observation, sample.frame_index))

        def on_done(outcome: CallOutcome) -> None:
            self._on_call_done(sample, outcome)

        if not self._replicas.send(address, prepared.request, sample.deadline_s, on_done):
            return False
        with self._changed:
            self.requests_sent += 1
            if prepared.sends:
                self.requests_resent += 1
            if self._latest is sample:
                self._latest_sent = True
            is_first_call_of_newest = not prepared.sends and self._latest is sample
            if self._watchdog is not None and is_first_call_of_newest:
                # The first call of a sample arms the hedge (at most one hedge per sample).
                hedge_after_s = self.scheduler.hedge_after_s(sample.step_due_s - self._now_s())
                self._awaited = sample
                self._hedge_at_s = None if hedge_after_s is None else self._now_s() + hedge_after_s
                if self._hedge_at_s is not None:
                    self._hedge_delay_s = self._hedge_at_s - sample.produced_s
                    if self._hedge_at_s < self._watch_until_s:
                        self._hedge_armed.notify()
        prepared.sends += 1
        return True
