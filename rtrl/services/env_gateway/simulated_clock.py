"""Frame-accurate simulated clock (RTRL_CLOCK=simulated): the game runs as fast as the system allows, and
every action is applied exactly d frames after the observation it was computed from.

This is the paper's simulate_delay (Riemer et al. 2024, Atari and Tetris experiments): inference time
is modelled as d frames of the game, so results do not depend on how fast this machine computes.
d = `delay_frames` = RTRL_SIMULATED_DELAY_FRAMES, 1 being ordinary RL (the action computed from a
frame's observation is applied on the next frame). Frames are indexed as in clock.py: tick f applies
an action and produces frame f, whose observation is sampled right after.

- **async** (staggered inference, the paper's async runs): a decision every frame (k = 1). The
  observation of frame f gets its action applied at tick f + d, for one frame. In between, ticks
  f + 1 .. f + d - 1 apply the actions of earlier observations, so after the first d frames of an
  episode (fallback) every frame gets an agent action, each computed from a d-frame-old observation.
- **sequential** (act, then wait: "delay d and d noops"): the action of the observation of frame f is
  applied at tick f + d, then d frames apply the fallback policy, and the next observation is the
  frame after the action's (f + d + 1), so one decision every k = d + 1 frames.

Both are the realtime clock's step structure with L = d and k as above; a step's reward is summed
over its k frames (the action's frame and, in sequential, the d fallback frames after it), and each
step becomes the same `StepRecord` as in realtime mode, with staleness d. Episodes, steps, records
and counters are kept by clock.py's `EpisodeSteps`, as for the realtime clock.

The clock asks for each observation's action through `request_action`, which returns a Future; it
sends the observation as soon as it is sampled and, at the tick that must apply it, waits for it.
So up to d requests are in flight (as many as there are replicas to answer them) and how long
inference takes changes the run's speed, never its result. A request that fails or brings nothing
within `reply_timeout_s` makes that step a fallback step (counted in `replies_missing`). Since the
clock may wait here, `publish` may wait too (a full publisher queue slows the game instead of
dropping transitions). Only the clock thread touches the backend; this module does not import grpc.
`SimulatedDispatch` is the `request_action` of the gateway: it sends every observation to an idle
replica of the pool, waiting for one, so that no observation is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace

from rtrl.services.env_gateway.backends.base import Backend
from rtrl.services.env_gateway.clock import ClockConfig, EpisodeSteps, ObservationSample, StepRecord, ViewerFrame
from rtrl.services.env_gateway.dispatcher import CallOutcome, ReplicaLink
from rtrl.services.env_gateway.mailbox import ActionReply
from rtrl.services.env_gateway.preprocess import ObservationPreprocessor
from rtrl.services.env_gateway.scheduler import LeadView
from rtrl.services.env_gateway.settings import DEFAULT_SIMULATED_REPLY_TIMEOUT_S, GatewaySettings

log = logging.getLogger(__name__)

INTERACTIONS = ("async", "sequential")
# How often waits re-check that the clock is being stopped.
_STOP_POLL_S = 0.1
# How often a clock waiting for room in the publisher's queue looks again.
_PUBLISH_POLL_S = 0.002

RequestAction = Callable[[ObservationSample], "Future[ActionReply | None]"]
"""Starts computing the action of an observation; the Future holds the reply, or None when there is none."""


@dataclass(frozen=True)
class SimulatedTiming:
    """The simulated delay and interaction pattern, and the step structure they give."""

    delay_frames: int
    """d: frames from an observation to the tick that applies its action (>= 1)."""
    interaction: str = "async"
    """"async": a decision every frame; "sequential": d fallback frames after each action."""

    def __post_init__(self) -> None:
        if self.delay_frames < 1:
            raise ValueError(f"the simulated delay must be at least 1 frame, got {self.delay_frames}")
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"interaction {self.interaction!r} is unknown; use one of {', '.join(INTERACTIONS)}")

    @property
    def decision_interval_frames(self) -> int:
        """k: frames between two observations sent to the policy."""
        return 1 if self.interaction == "async" else self.delay_frames + 1

    @property
    def lead_frames(self) -> int:
        """L: an action is applied this many frames after its observation (its staleness)."""
        return self.delay_frames


class SimulatedClock(EpisodeSteps):
    """Steps `backend` one frame per tick as fast as it can; `start()` runs on its own thread.

    Its episodes, steps and measurements are kept by `EpisodeSteps`, as in `RealtimeClock`, so the
    gateway's GetStats reads either. Tests and the delay benchmark drive it with `run_frames(n)`.
    """

    # Its thread (`EpisodeSteps._run`) ticks back to back: `tick` itself waits for the replies it needs.
    THREAD_NAME = "rtrl-simulated-clock"
    NAME = "simulated clock"

    def __init__(
        self,
        backend: Backend,
        config: ClockConfig,
        timing: SimulatedTiming,
        *,
        request_action: RequestAction,
        publish: Callable[[StepRecord], bool],
        show_frame: Callable[[ViewerFrame], None] | None = None,
        reply_timeout_s: float = DEFAULT_SIMULATED_REPLY_TIMEOUT_S,
        has_room: Callable[[], bool] | None = None,
        now_s: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(
            backend,
            config,
            timing.lead_frames,
            send=self._send_request,
            publish=self._publish_when_room,
            show_frame=show_frame,
            now_s=now_s,
            wall_ns=wall_ns,
        )
        self.timing = timing
        self._request_action = request_action
        self._publish_record = publish
        self._reply_timeout_s = reply_timeout_s
        self._has_room = has_room
        self._requests: dict[int, Future[ActionReply | None]] = {}
        self.replies_missing = 0
        """Decision steps whose reply failed or did not come within the reply timeout (fallback applied)."""
        self.fallback_frames = 0
        """Frames that applied the fallback policy (episode leads, sequential waits, missing replies)."""

    # -- one frame --------------------------------------------------------------------------------

    def tick(self) -> None:
        """Produces frame `self.frame`, applying the action of the observation of frame - d when one is due."""
        cpu_start_ns = time.thread_time_ns()
        frame = self.frame
        resetting = self._needs_reset
        if resetting:
            self._begin_episode(frame)
        k, lead = self.timing.decision_interval_frames, self.timing.lead_frames
        position = frame - self._episode_start
        opens_step = position >= lead and (position - lead) % k == 0
        if opens_step:
            self._open_step((position - lead) // k, frame)
        step = self._step
        # An agent action is applied on its step's first frame only; sequential steps then wait on the fallback.
        if step is not None and opens_step:
            action, fresh = step.action, step.fresh
        else:
            action, fresh = self._fallback()[0], False
        if not fresh and not resetting:
            self.fallback_frames += 1

        if resetting:
            rgb = self._backend.reset(self.config.seed if self.episode == 0 else None)
            reward, terminated, truncated = 0.0, False, False
        else:
            rgb, reward, terminated, truncated = self._backend.step(action)
            self._last_applied = action
        produced_s = self._now_s()
        wall_ns = self._wall_ns()
        if self.started_s is None:
            self.started_s = produced_s
        self.episode_frames += 1
        self._episode_return += reward
        if self.config.max_episode_frames and self.episode_frames >= self.config.max_episode_frames:
            truncated = True
        ended = terminated or truncated

        if step is not None:
            step.reward += reward
            if opens_step:
                step.applied_unix_ns = wall_ns
        if position % k == 0:
            self._sample(position // k, frame, rgb, produced_s, wall_ns, produced_s + self._reply_timeout_s, ended)
        closing = step if step is not None and (ended or (position - lead + 1) % k == 0) else None
        self._finish_frame(frame, rgb, action, fresh, closing, terminated, truncated, produced_s, wall_ns)
        self.tick_cpu_us.add((time.thread_time_ns() - cpu_start_ns) / 1000.0)

    def _begin_episode(self, frame: int) -> None:
        self._begin_episode_steps(frame)
        # Replies to the previous episode's last observations can never be applied; they are let go
        # (not cancelled: whoever answers them must still be able to set their result).
        self._requests.clear()

    def _send_request(self, sample: ObservationSample) -> None:
        self._requests[sample.step] = self._request_action(sample)

    def _await_reply(self, future: Future[ActionReply | None]) -> ActionReply | None:
        deadline_s = self._now_s() + self._reply_timeout_s
        while True:
            try:
                return future.result(timeout=max(0.0, min(_STOP_POLL_S, deadline_s - self._now_s())))
            except FutureTimeout:
                if self._stop.is_set() or self._now_s() >= deadline_s:
                    return None

    def _open_step(self, index: int, frame: int) -> None:
        future = self._requests.pop(index, None)
        reply = self._await_reply(future) if future is not None else None
        if reply is None:
            self.replies_missing += 1
            self._open_fallback_step(index)
        else:
            self._open_fresh_step(index, frame, reply, self._samples[index].frame_index)

    def _publish_when_room(self, record: StepRecord) -> None:
        # Simulated time can wait: a full publisher queue slows the game down rather than losing transitions.
        while self._has_room is not None and not self._has_room() and not self._stop.is_set():
            self._stop.wait(_PUBLISH_POLL_S)
        self._publish_record(record)


def completed(reply: ActionReply | None) -> Future[ActionReply | None]:
    """A Future that already holds `reply` (an in-process policy answers at once)."""
    future: Future[ActionReply | None] = Future()
    future.set_result(reply)
    return future


class _SimulatedSchedule:
    """What GetStats reads of a scheduler; in simulated mode nothing is scheduled in time."""

    name = "simulated"
    period_s = 0.0
    turns_passed = 0
    slots_waited = 0

    def spacing_s(self, replicas: int) -> float:
        return 0.0

    def lead_frames(self, lead: LeadView) -> int | None:
        return None


class SimulatedDispatch:
    """The gateway's `request_action` in simulated mode: every observation goes to an idle replica.

    Called on the clock thread, it waits for an idle replica (one without a call of this gateway in
    flight), so the number of requests in flight is at most the number of replicas and no
    observation is skipped. Replies come back on the threads that receive them into the Future.
    """

    def __init__(
        self,
        preprocessor: ObservationPreprocessor,
        replicas: ReplicaLink,
        now_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._preprocessor = preprocessor
        self._replicas = replicas
        self._now_s = now_s
        self._call_ended = threading.Condition()
        self._stopping = False
        self._rotation = 0
        self.scheduler = _SimulatedSchedule()
        self.requests_sent = 0
        self.requests_not_sent = 0
        """Observations no replica could take before their reply timeout (their steps fall back)."""
        self.requests_failed = 0
        self.requests_resent = 0
        self.replica_count = 0

    def start(self) -> None:
        """Nothing runs on its own: requests are sent from the clock's thread."""

    def stop(self) -> None:
        with self._call_ended:
            self._stopping = True
            self._call_ended.notify_all()

    def on_record(self, record: StepRecord) -> None:
        """Nothing to do: in simulated mode the clock itself waits for each reply."""

    def __call__(self, sample: ObservationSample) -> Future[ActionReply | None]:
        future: Future[ActionReply | None] = Future()
        request = self._replicas.prepare(self._preprocessor.stack(sample.frames), sample.frame_index)

        def on_done(outcome: CallOutcome) -> None:
            if outcome.reply is None:
                self.requests_failed += 1
            future.set_result(outcome.reply)
            with self._call_ended:
                self._call_ended.notify_all()

        with self._call_ended:
            while not self._stopping and self._now_s() < sample.deadline_s:
                views = self._replicas.views(self._now_s())
                self.replica_count = len(views)
                idle = [v for v in views if v.in_flight == 0 and not v.recently_failed] or [
                    v for v in views if v.in_flight == 0
                ]
                if idle:
                    chosen = idle[self._rotation % len(idle)]
                    self._rotation += 1
                    if self._replicas.send(chosen.address, request, sample.deadline_s, on_done):
                        self.requests_sent += 1
                        return future
                # Membership changes do not notify; look again after a short while.
                self._call_ended.wait(_STOP_POLL_S)
        self.requests_not_sent += 1
        future.set_result(None)
        return future


def simulated_clock(
    settings: GatewaySettings,
    backend: Backend,
    config: ClockConfig,
    preprocessor: ObservationPreprocessor,
    replicas: ReplicaLink,
    *,
    publish: Callable[[StepRecord], bool],
    show_frame: Callable[[ViewerFrame], None] | None,
    has_room: Callable[[], bool],
) -> tuple[ClockConfig, SimulatedDispatch, SimulatedClock]:
    """The gateway's wiring for RTRL_CLOCK=simulated, in place of the realtime clock and dispatcher: its
    ClockConfig with k, L and S as the simulated clock runs them, the dispatch and the clock.

    RTRL_SIMULATED_DELAY_FRAMES is d and RTRL_INTERACTION picks async or sequential (no Train calls:
    the simulated sequential pattern is d fallback frames after each action); the realtime settings of
    k, L and S do not apply (GetSpec reports the simulated ones).
    """
    timing = SimulatedTiming(settings.simulated_delay_frames, settings.interaction)
    config = replace(
        config,
        decision_interval_frames=timing.decision_interval_frames,
        lead_frames=timing.lead_frames,
        max_staleness_frames=timing.lead_frames,
    )
    dispatch = SimulatedDispatch(preprocessor, replicas)
    clock = SimulatedClock(
        backend,
        config,
        timing,
        request_action=dispatch,
        publish=publish,
        show_frame=show_frame,
        reply_timeout_s=settings.simulated_reply_timeout_s,
        has_room=has_room,
    )
    return config, dispatch, clock
