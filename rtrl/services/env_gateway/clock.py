"""The realtime game clock: steps the game at a fixed frame rate, never waits, and turns replies into actions.

The specification (schedule, episodes, lead, decisions, the mailbox, measurements, transitions) is
docs/clock.md; the names below follow it: k = decision_interval_frames, L = lead_frames,
S = max_staleness_frames, f the frame index, e an episode's first frame, D the usual staleness and R
the jitter reserve.

Only the clock thread touches the backend. This module does not import grpc: replicas are reached
through the dispatcher, the publisher and viewers through injected callables. `EpisodeSteps` keeps
the episodes, steps, records and counters for this clock and for the simulated clock
(simulated_clock.py), which differ only in their schedule and where replies come from.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from rtrl.metrics import RateMeter, Window
from rtrl.services.env_gateway.backends.base import Backend
from rtrl.services.env_gateway.episodes import EpisodeEnd
from rtrl.services.env_gateway.mailbox import ActionMailbox, ActionReply
from rtrl.services.env_gateway.preprocess import FrameHistory, ObservationPreprocessor, SampledFrame
from rtrl.services.env_gateway.settings import FallbackPolicy, GatewaySettings
from rtrl.transitions import Transition

log = logging.getLogger(__name__)

# A reply must be in the mailbox before the tick that could apply it starts; this leaves the gRPC
# callback and the mailbox lock a little time.
DEADLINE_MARGIN_S = 0.002
# Frames the clock may tick back-to-back to recover from an overrun before it moves its schedule.
CATCH_UP_LIMIT_FRAMES = 2
RECENT_RETURNS = 100


@dataclass(frozen=True)
class ClockConfig:
    """What the clock needs from the settings, with the frame rate resolved against the backend."""

    gateway_id: str
    frame_rate_hz: float
    decision_interval_frames: int
    lead_frames: int
    max_staleness_frames: int
    fallback_policy: FallbackPolicy
    fallback_action: int
    frame_stack: int
    max_episode_frames: int
    seed: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings, native_frame_rate_hz: float) -> ClockConfig:
        """The settings of the same names; the backend's own frame rate unless RTRL_FRAME_RATE_HZ is set."""
        named = {field.name: getattr(settings, field.name) for field in fields(cls) if field.name != "frame_rate_hz"}
        return cls(frame_rate_hz=settings.frame_rate_hz or native_frame_rate_hz, **named)

    def last_usable_frame(self, obs_frame: int, lead_frames: int | None = None) -> int:
        """Last frame at which a reply to `obs_frame` can still start a step (obs + S when S = L + k)."""
        k = self.decision_interval_frames
        lead = self.lead_frames if lead_frames is None else lead_frames
        return obs_frame + lead + (self.max_staleness_frames - lead) // k * k


@dataclass(frozen=True, slots=True)
class ObservationSample:
    """An observation to ask inference about: raw frames plus when its reply is still useful."""

    episode: int
    step: int
    frame_index: int
    frames: tuple[SampledFrame, ...]
    """The last frame_stack sampled frames, oldest first."""
    produced_s: float
    """Clock time (monotonic) at which the observation's frame was produced."""
    captured_unix_ns: int
    deadline_s: float
    """Clock time after which a reply could no longer be applied."""
    step_due_s: float = math.inf
    """Clock time by which a reply must be in the mailbox to act on the step it is meant for (obs + L)."""


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One executed decision step; becomes a Transition once its observation is preprocessed."""

    gateway_id: str
    seq: int
    episode: int
    step: int
    obs_frame: int
    frames: tuple[SampledFrame, ...]
    action: int
    action_count: int
    reward: float
    terminated: bool
    truncated: bool
    fresh: bool
    fallback_policy: int
    staleness_frames: int
    policy_version: int
    behaviour_log_prob: float
    obs_captured_unix_ns: int
    action_applied_unix_ns: int
    action_obs_frame: int = -1
    """Frame of the observation the action was computed from (-1 for a fallback action); it travels in the
    transition, so the learner can train on the observation that chose the action."""

    def to_transition(self, preprocessor: ObservationPreprocessor) -> Transition:
        """The transition it becomes: the same fields, with its frames preprocessed into the observation."""
        kept = {field.name: getattr(self, field.name) for field in fields(self) if field.name != "frames"}
        return Transition(observation=preprocessor.stack(self.frames), **kept)


@dataclass(frozen=True, slots=True)
class ViewerFrame:
    """A produced frame and what the gateway did on it, for viewers."""

    frame_index: int
    rgb: np.ndarray
    action: int
    fresh: bool
    episode: int
    captured_unix_ns: int


@dataclass(slots=True)
class _OpenStep:
    """The decision step being executed: its action and what it has collected so far."""

    index: int
    action: int
    fresh: bool
    staleness_frames: int
    policy_version: int
    behaviour_log_prob: float
    action_obs_frame: int = -1
    reward: float = 0.0
    applied_unix_ns: int = 0


class EpisodeSteps:
    """What both clocks keep the same way: the episode, its decision steps and the counters GetStats reads.

    The realtime clock (below) and the simulated clock (simulated_clock.py) differ only in when they
    produce a frame (`tick`, `_wait_for_next_frame`) and where a step's reply comes from. Clock thread
    only: apart from the realtime clock's sleep, nothing here locks or waits (except `publish` itself).
    """

    THREAD_NAME = "rtrl-clock"
    NAME = "game clock"
    """What its thread and its failure log call this clock."""

    def __init__(
        self,
        backend: Backend,
        config: ClockConfig,
        lead_frames: int,
        *,
        send: Callable[[ObservationSample], None],
        publish: Callable[[StepRecord], object],
        show_frame: Callable[[ViewerFrame], None] | None,
        now_s: Callable[[], float],
        wall_ns: Callable[[], int],
    ) -> None:
        if not 0 <= config.fallback_action < backend.action_count:
            raise ValueError(
                f"fallback action {config.fallback_action} is out of range for {backend.action_count} actions"
            )
        self.config = config
        self.action_count = backend.action_count
        self._backend = backend
        self._send = send
        self._publish = publish
        self._show_frame = show_frame
        self._now_s = now_s
        self._wall_ns = wall_ns
        self._rng = np.random.default_rng(config.seed)
        self._random_log_prob = -math.log(backend.action_count)
        self._history = FrameHistory(config.frame_stack)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.ticking = threading.Event()
        self.failure: BaseException | None = None

        # Episode bookkeeping (clock thread only).
        self.frame = 0
        """Index of the next frame to produce (= frames produced so far)."""
        self.episode = -1
        self.lead_frames = lead_frames
        """L of the current episode (docs/clock.md, Lead)."""
        self._episode_start = 0
        self._needs_reset = True
        self.episode_frames = 0
        self._episode_return = 0.0
        self._last_applied = config.fallback_action
        self._step: _OpenStep | None = None
        self._samples: dict[int, ObservationSample] = {}
        self.seq = 0

        # Measurements, written by the clock thread only and read by anyone.
        self.started_s: float | None = None
        """Clock time the first frame was produced."""
        self.frames_late = 0
        """Ticks that started more than a frame time late (always 0 in the simulated clock)."""
        self.decisions = 0
        self.decisions_fresh = 0
        self.episodes = 0
        self.last_episode_return = 0.0
        self.recent_returns: deque[float] = deque(maxlen=RECENT_RETURNS)
        self.staleness_frames = Window()
        self.tick_cpu_us = Window()
        self.frame_rate = RateMeter()
        self.stopped_s: float | None = None
        """Clock time `stop()` ended the ticks; None while running."""
        self.on_episode_end: Callable[[EpisodeEnd], None] | None = None
        """Called on the clock thread with each finished episode (the gateway's episode log); must not block."""
        self._episode_decisions_before = 0
        self._episode_fresh_before = 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.stopped_s is None:
            self.stopped_s = self._now_s()

    def frame_rate_hz(self) -> float:
        """Frames per second over the last seconds; once stopped, over the seconds before the stop, so the
        final figure does not fall with the time between the stop and the reading."""
        return self.frame_rate.rate(self.stopped_s if self.stopped_s is not None else self._now_s())

    # -- running ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            # The first frame anchors the realtime schedule (docs/clock.md, Schedule).
            self.tick()
            self.ticking.set()
            while not self._stop.is_set():
                self._wait_for_next_frame()
                self.tick()
            self.finish()
        except Exception as error:
            self.failure = error
            log.exception("the %s stopped because the backend failed at frame %d", self.NAME, self.frame)

    def run_frames(self, count: int) -> None:
        """Ticks `count` frames back-to-back (tests and benchmarks)."""
        for _ in range(count):
            self.tick()

    def tick(self) -> None:
        """Produces frame `self.frame` (each clock's own)."""
        raise NotImplementedError

    def _wait_for_next_frame(self) -> None:
        """Between two ticks on the clock's thread: by default the next frame comes at once."""

    def finish(self) -> None:
        """Ends the run: the step in progress becomes a truncated transition, so every decision is published."""
        if self._step is not None:
            self._close_step(self._step, terminated=False, truncated=True)

    def _begin_episode_steps(self, frame: int) -> None:
        """Starts the next episode at `frame`: no step open, no sample kept, the fallback's last action reset."""
        self._needs_reset = False
        self.episode += 1
        self._episode_start = frame
        self.episode_frames = 0
        self._episode_return = 0.0
        self._step = None
        self._samples.clear()
        self._last_applied = self.config.fallback_action
        self._episode_decisions_before = self.decisions
        self._episode_fresh_before = self.decisions_fresh

    def _end_episode(self, frame: int, terminated: bool, truncated: bool, wall_ns: int) -> None:
        """Ends the episode whose last frame is `frame`; the next tick resets."""
        self.episodes += 1
        self.last_episode_return = self._episode_return
        self.recent_returns.append(self._episode_return)
        self._needs_reset = True
        self._step = None
        if self.on_episode_end is not None:
            self.on_episode_end(
                EpisodeEnd(
                    gateway_id=self.config.gateway_id,
                    episode=self.episode,
                    episode_return=self._episode_return,
                    frames=self.episode_frames,
                    decisions=self.decisions - self._episode_decisions_before,
                    decisions_fresh=self.decisions_fresh - self._episode_fresh_before,
                    terminated=terminated,
                    truncated=truncated,
                    end_frame=frame,
                    end_unix_ms=wall_ns // 1_000_000,
                )
            )

    def _fallback(self) -> tuple[int, float]:
        """The fallback policy's action and its log-probability."""
        policy = self.config.fallback_policy
        if policy is FallbackPolicy.RANDOM:
            return int(self._rng.integers(self.action_count)), self._random_log_prob
        if policy is FallbackPolicy.REPEAT_LAST:
            return self._last_applied, 0.0
        return self.config.fallback_action, 0.0

    def _open_fallback_step(self, index: int) -> None:
        """Opens step `index` with the fallback policy's action (there is no usable reply)."""
        self.decisions += 1
        action, log_prob = self._fallback()
        self._step = _OpenStep(index, action, False, 0, -1, log_prob)

    def _open_fresh_step(self, index: int, frame: int, reply: ActionReply, obs_frame: int) -> None:
        """Opens step `index` at `frame` with `reply`, computed from the observation of `obs_frame`."""
        staleness = frame - obs_frame
        self.decisions += 1
        self.decisions_fresh += 1
        self.staleness_frames.add(staleness)
        self._step = _OpenStep(
            index, reply.action, True, staleness, reply.policy_version, reply.behaviour_log_prob, obs_frame
        )

    def _sample(
        self,
        step: int,
        frame: int,
        rgb: np.ndarray,
        produced_s: float,
        wall_ns: int,
        deadline_s: float,
        ended: bool,
        step_due_s: float = math.inf,
    ) -> None:
        """Keeps frame `frame` as the observation of step `step` and sends it to be answered by `deadline_s`."""
        sampled = SampledFrame(frame, rgb)
        frames = self._history.reset(sampled) if step == 0 else self._history.add(sampled)
        sample = ObservationSample(self.episode, step, frame, frames, produced_s, wall_ns, deadline_s, step_due_s)
        self._samples[step] = sample
        # A step whose observation is the episode's last frame never runs: asking would waste a replica.
        if not ended:
            self._send(sample)

    def _finish_frame(
        self,
        frame: int,
        rgb: np.ndarray,
        action: int,
        fresh: bool,
        closing: _OpenStep | None,
        terminated: bool,
        truncated: bool,
        produced_s: float,
        wall_ns: int,
    ) -> None:
        """What both clocks do last in a tick: close the step this frame ends (`closing`), end the episode
        if it ended, show the frame, move on to the next."""
        if closing is not None:
            self._close_step(closing, terminated, truncated)
        if terminated or truncated:
            self._end_episode(frame, terminated, truncated, wall_ns)
        if self._show_frame is not None:
            self._show_frame(ViewerFrame(frame, rgb, action, fresh, self.episode, wall_ns))
        self.frame = frame + 1
        self.frame_rate.add(produced_s)

    def _close_step(self, step: _OpenStep, terminated: bool, truncated: bool) -> None:
        sample = self._samples.pop(step.index)
        record = StepRecord(
            gateway_id=self.config.gateway_id,
            seq=self.seq,
            episode=self.episode,
            step=step.index,
            obs_frame=sample.frame_index,
            frames=sample.frames,
            action=step.action,
            action_count=self.action_count,
            reward=step.reward,
            terminated=terminated,
            truncated=truncated,
            fresh=step.fresh,
            fallback_policy=int(self.config.fallback_policy),
            staleness_frames=step.staleness_frames,
            policy_version=step.policy_version,
            behaviour_log_prob=step.behaviour_log_prob,
            obs_captured_unix_ns=sample.captured_unix_ns,
            action_applied_unix_ns=step.applied_unix_ns,
            action_obs_frame=step.action_obs_frame,
        )
        self.seq += 1
        self._step = None
        self._publish(record)

    # -- measurements -----------------------------------------------------------------------------

    @property
    def decisions_fallback(self) -> int:
        return self.decisions - self.decisions_fresh

    @property
    def coverage(self) -> float:
        return self.decisions_fresh / self.decisions if self.decisions else 1.0

    @property
    def mean_episode_return(self) -> float:
        returns = list(self.recent_returns)
        return float(np.mean(returns)) if returns else 0.0

    def uptime_s(self) -> float:
        return 0.0 if self.started_s is None else self._now_s() - self.started_s


class RealtimeClock(EpisodeSteps):
    """Steps `backend` one frame per tick; `start()` runs ticks on its own thread at the frame rate.

    Tests drive it with `run_frames(n)` (no sleeping) and an injected `now_s`.
    """

    def __init__(
        self,
        backend: Backend,
        config: ClockConfig,
        *,
        dispatch: Callable[[ObservationSample], None],
        publish: Callable[[StepRecord], bool],
        show_frame: Callable[[ViewerFrame], None] | None = None,
        mailbox: ActionMailbox | None = None,
        lead_for_episode: Callable[[], int | None] | None = None,
        now_s: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            backend,
            config,
            config.lead_frames,
            send=dispatch,
            publish=publish,
            show_frame=show_frame,
            now_s=now_s,
            wall_ns=wall_ns,
        )
        self._lead_for_episode = lead_for_episode
        self._sleep = sleep
        self.mailbox = mailbox or ActionMailbox(config.max_staleness_frames, now_s)
        self._period_s = 1.0 / config.frame_rate_hz
        self._t0_s: float | None = None
        """The schedule's anchor: frame f is due at t0 + f / rate."""
        self._lead_action = config.fallback_action
        self.schedule_moves = 0

    # -- schedule ---------------------------------------------------------------------------------

    def due_s(self, frame: int) -> float:
        """Clock time at which `frame` is due."""
        assert self._t0_s is not None, "the schedule starts when the first frame is produced"
        return self._t0_s + frame * self._period_s

    def quiet_after(self, not_before_s: float) -> float:
        """The first middle of a frame period at or after `not_before_s` (itself before the first frame).

        A frame's step, its decision's request and, with a fast policy, the reply all come in the first
        milliseconds after the frame is due; background work started mid-period (the publisher's writes
        to Redis, and the learner's reads that they wake) keeps out of their way."""
        t0_s = self._t0_s
        if t0_s is None:
            return not_before_s
        periods = math.ceil((not_before_s - t0_s) / self._period_s - 0.5)
        return t0_s + (periods + 0.5) * self._period_s

    def _wait_for_next_frame(self) -> None:
        """Sleeps until the next frame is due; counts it late, and moves the schedule when far behind."""
        due = self.due_s(self.frame)
        now = self._now_s()
        if now < due:
            self._sleep(due - now)
            now = self._now_s()
        late_s = now - due
        if late_s > self._period_s:
            self.frames_late += 1
        if late_s > CATCH_UP_LIMIT_FRAMES * self._period_s:
            self._t0_s = now - self.frame * self._period_s
            self.schedule_moves += 1

    # -- one frame --------------------------------------------------------------------------------

    def tick(self) -> None:
        """Produces frame `self.frame`: chooses its action, steps the backend, records what happened."""
        cpu_start_ns = time.thread_time_ns()
        frame = self.frame
        config = self.config
        resetting = self._needs_reset
        if resetting:
            self._begin_episode(frame)
        k, lead = config.decision_interval_frames, self.lead_frames
        position = frame - self._episode_start
        # The action for this frame: fallback in the lead frames, else the open step's.
        opens_step = position >= lead and (position - lead) % k == 0
        if opens_step:
            pending = self.mailbox.take(frame, k)
            if pending is None:
                self._open_fallback_step((position - lead) // k)
            else:
                self._open_fresh_step((position - lead) // k, frame, pending.reply, pending.obs_frame)
        elif not resetting:
            self.mailbox.advance(frame)
        step = self._step
        if step is None:
            action, fresh = self._lead_action, False
        else:
            action, fresh = step.action, step.fresh

        if resetting:
            rgb = self._backend.reset(config.seed if self.episode == 0 else None)
            reward, terminated, truncated = 0.0, False, False
        else:
            rgb, reward, terminated, truncated = self._backend.step(action)
            self._last_applied = action
        produced_s = self._now_s()
        wall_ns = self._wall_ns()
        if self._t0_s is None:
            self._t0_s = produced_s - frame * self._period_s
            self.started_s = produced_s
        self.episode_frames += 1
        self._episode_return += reward
        if config.max_episode_frames and self.episode_frames >= config.max_episode_frames:
            truncated = True
        ended = terminated or truncated

        if step is not None:
            step.reward += reward
            if opens_step:
                step.applied_unix_ns = wall_ns
        if position % k == 0:
            deadline_s = self.due_s(config.last_usable_frame(frame, lead)) - DEADLINE_MARGIN_S
            step_due_s = self.due_s(frame + lead) - DEADLINE_MARGIN_S
            self._sample(position // k, frame, rgb, produced_s, wall_ns, deadline_s, ended, step_due_s)
        closing = step if step is not None and (ended or (position - lead + 1) % k == 0) else None
        self._finish_frame(frame, rgb, action, fresh, closing, terminated, truncated, produced_s, wall_ns)
        self.tick_cpu_us.add((time.thread_time_ns() - cpu_start_ns) / 1000.0)

    def _begin_episode(self, frame: int) -> None:
        self._begin_episode_steps(frame)
        self.lead_frames = self._episode_lead()
        self.mailbox.begin_episode(self.episode, frame)
        self._lead_action, _ = self._fallback()

    def _episode_lead(self) -> int:
        suggested = self._lead_for_episode() if self._lead_for_episode is not None else None
        if suggested is None:
            return self.config.lead_frames
        # Beyond S no reply could ever be applied; below 0 is meaningless.
        return min(max(suggested, 0), self.config.max_staleness_frames)
