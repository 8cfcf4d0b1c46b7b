"""The simulated clock's frame accuracy on the real ALE Boxing emulator: each action is applied exactly d
frames after its observation (async: every frame; sequential: then d fallback frames).

The policy encodes the frame index of the observation it was given in its action (1 + frame % 17,
never the fallback noop 0), so the action applied at each frame says which observation it came from.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from rtrl.config import SettingsError
from rtrl.services.env_gateway.backends.gymnasium import GymnasiumBackend
from rtrl.services.env_gateway.clock import ClockConfig, ObservationSample, StepRecord
from rtrl.services.env_gateway.mailbox import ActionReply
from rtrl.services.env_gateway.settings import FallbackPolicy, GatewaySettings
from rtrl.services.env_gateway.simulated_clock import SimulatedClock, SimulatedTiming, completed

EPISODE_FRAMES = 40
NOOP = 0


def encoded_action(frame: int) -> int:
    return 1 + frame % 17


class RecordingBackend(GymnasiumBackend):
    """Real ALE Boxing at frameskip 1; remembers what each frame applied (None for a reset frame)."""

    def __init__(self) -> None:
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        super().__init__("ALE/Boxing-v5", obs_type="rgb", frameskip=1, repeat_action_probability=0.0)
        self.applied: list[int | None] = []

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.applied.append(None)
        return super().reset(seed)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        self.applied.append(action)
        return super().step(action)


@pytest.fixture
def backend() -> RecordingBackend:
    backend = RecordingBackend()
    yield backend
    backend.close()


def make_clock(
    backend: RecordingBackend,
    timing: SimulatedTiming,
    request_action: object,
    records: list[StepRecord],
) -> SimulatedClock:
    config = ClockConfig(
        gateway_id="gw-sim",
        frame_rate_hz=60.0,
        decision_interval_frames=timing.decision_interval_frames,
        lead_frames=timing.lead_frames,
        max_staleness_frames=timing.lead_frames,
        fallback_policy=FallbackPolicy.NOOP,
        fallback_action=NOOP,
        frame_stack=1,
        max_episode_frames=EPISODE_FRAMES,
        seed=1,
    )

    def publish(record: StepRecord) -> bool:
        records.append(record)
        return True

    return SimulatedClock(backend, config, timing, request_action=request_action, publish=publish)  # type: ignore[arg-type]


def frame_encoding_policy(sample: ObservationSample) -> Future[ActionReply | None]:
    return completed(ActionReply(encoded_action(sample.frame_index), 7, -0.25))


def expected_actions(frames: int, delay: int, interaction: str) -> list[int | None]:
    """What each frame must apply: None on resets, the fallback before an action is due, else the encoded frame."""
    period = 1 if interaction == "async" else delay + 1
    expected: list[int | None] = []
    for frame in range(frames):
        position = frame % EPISODE_FRAMES
        if position == 0:
            expected.append(None)
        elif position >= delay and (position - delay) % period == 0:
            expected.append(encoded_action(frame - delay))
        else:
            expected.append(NOOP)
    return expected


@pytest.mark.parametrize("delay", [1, 3, 8])
def test_async_applies_every_frame_the_action_of_the_observation_d_frames_earlier(
    backend: RecordingBackend, delay: int
) -> None:
    records: list[StepRecord] = []
    clock = make_clock(backend, SimulatedTiming(delay, "async"), frame_encoding_policy, records)
    clock.run_frames(3 * EPISODE_FRAMES)
    assert backend.applied == expected_actions(3 * EPISODE_FRAMES, delay, "async")
    # Each episode: a step per frame from frame d on, the last one ending the episode.
    assert len(records) == 3 * (EPISODE_FRAMES - delay)
    assert all(r.fresh and r.staleness_frames == delay and r.action_obs_frame == r.obs_frame for r in records)
    assert all(r.action == encoded_action(r.obs_frame) and r.policy_version == 7 for r in records)
    assert [r.seq for r in records] == list(range(len(records)))
    assert clock.coverage == 1.0
    assert list(set(clock.staleness_frames.values())) == [delay]


@pytest.mark.parametrize("delay", [1, 5])
def test_sequential_applies_d_fallback_frames_after_each_action(backend: RecordingBackend, delay: int) -> None:
    records: list[StepRecord] = []
    asked: list[int] = []

    def policy(sample: ObservationSample) -> Future[ActionReply | None]:
        asked.append(sample.frame_index)
        return frame_encoding_policy(sample)

    clock = make_clock(backend, SimulatedTiming(delay, "sequential"), policy, records)
    clock.run_frames(2 * EPISODE_FRAMES)
    assert backend.applied == expected_actions(2 * EPISODE_FRAMES, delay, "sequential")
    # The next observation is the frame right after the action's frame.
    first_episode = [frame for frame in asked if frame < EPISODE_FRAMES]
    assert first_episode == list(range(0, EPISODE_FRAMES - 1, delay + 1))
    assert all(r.fresh and r.staleness_frames == delay for r in records)
    # The step's reward covers the action's frame and the d fallback frames after it.
    assert clock.fallback_frames == sum(1 for a in backend.applied if a == NOOP)


def test_reply_latency_does_not_change_what_is_applied(backend: RecordingBackend) -> None:
    """Replies that come later, out of order, from other threads: the run is the same as with instant replies."""
    rng = random.Random(5)
    threads: list[threading.Thread] = []

    def slow_policy(sample: ObservationSample) -> Future[ActionReply | None]:
        future: Future[ActionReply | None] = Future()
        reply = ActionReply(encoded_action(sample.frame_index), 7, -0.25)
        thread = threading.Timer(rng.uniform(0.0, 0.01), future.set_result, args=(reply,))
        thread.start()
        threads.append(thread)
        return future

    records: list[StepRecord] = []
    clock = make_clock(backend, SimulatedTiming(4, "async"), slow_policy, records)
    clock.run_frames(2 * EPISODE_FRAMES)
    for thread in threads:
        thread.join()
    assert backend.applied == expected_actions(2 * EPISODE_FRAMES, 4, "async")
    assert clock.replies_missing == 0


def test_missing_reply_makes_a_fallback_step_and_is_counted(backend: RecordingBackend) -> None:
    def flaky_policy(sample: ObservationSample) -> Future[ActionReply | None]:
        # Every third observation gets no action (a failed call).
        return completed(None if sample.frame_index % 3 == 0 else ActionReply(encoded_action(sample.frame_index), 1, 0))

    records: list[StepRecord] = []
    clock = make_clock(backend, SimulatedTiming(2, "async"), flaky_policy, records)
    clock.run_frames(EPISODE_FRAMES)
    failed = [r for r in records if r.obs_frame % 3 == 0]
    assert failed and all(not r.fresh and r.action == NOOP and r.staleness_frames == 0 for r in failed)
    assert clock.replies_missing == len(failed)
    assert clock.decisions_fallback == len(failed)
    assert all(r.fresh for r in records if r.obs_frame % 3 != 0)


def test_a_reply_that_never_comes_is_given_up_after_the_timeout(backend: RecordingBackend) -> None:
    never: Future[ActionReply | None] = Future()
    records: list[StepRecord] = []
    clock = make_clock(backend, SimulatedTiming(1, "async"), lambda sample: never, records)
    clock._reply_timeout_s = 0.05
    started = time.monotonic()
    clock.run_frames(3)
    assert time.monotonic() - started >= 0.1  # two steps waited for their reply
    assert clock.replies_missing == 2 and clock.decisions_fresh == 0


def test_timing_rejects_a_delay_below_one_frame_and_unknown_interactions() -> None:
    with pytest.raises(ValueError, match="at least 1 frame"):
        SimulatedTiming(0)
    with pytest.raises(ValueError, match="async, sequential"):
        SimulatedTiming(2, "staggered")
    assert (SimulatedTiming(8, "sequential").decision_interval_frames, SimulatedTiming(8).lead_frames) == (9, 8)


def test_settings_select_the_simulated_clock_and_its_delay() -> None:
    settings = GatewaySettings.from_env(
        {"RTRL_CLOCK": "simulated", "RTRL_SIMULATED_DELAY_FRAMES": "70", "RTRL_INTERACTION": "sequential"}
    )
    assert (settings.clock, settings.simulated_delay_frames, settings.interaction) == ("simulated", 70, "sequential")
    assert GatewaySettings.from_env({}).clock == "realtime"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"RTRL_CLOCK": "fast"}, "RTRL_CLOCK"),
        ({"RTRL_CLOCK": "simulated", "RTRL_SIMULATED_DELAY_FRAMES": "0"}, "RTRL_SIMULATED_DELAY_FRAMES"),
    ],
)
def test_bad_simulated_clock_settings_name_the_variable(variables: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        GatewaySettings.from_env(variables)
