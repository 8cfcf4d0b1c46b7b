"""Test doubles for the gateway's unit tests: a scripted backend, a manual time source, a clock harness."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rtrl.services.env_gateway.clock import ObservationSample, RealtimeClock, StepRecord, ViewerFrame
from rtrl.services.env_gateway.mailbox import ActionReply

FRAME_SHAPE = (6, 8, 3)


class FakeBackend:
    """A game whose frame n (counting every produced frame) is filled with n % 256.

    `rewards` and `endings` are keyed by the index of the step call (0 = first step after a reset,
    counted across episodes), so a test can say "reward 1 on the third step".
    """

    def __init__(self, action_count: int = 4, rewards: dict[int, float] | None = None) -> None:
        self.action_count = action_count
        self.action_meanings = tuple(f"A{a}" for a in range(action_count))
        self.native_frame_rate_hz = 60.0
        self.observation_kind = "pixels"
        self.state_size = 0
        self.rewards = rewards or {}
        self.terminate_at: set[int] = set()
        self.truncate_at: set[int] = set()
        self.applied: list[int] = []
        self.resets: list[int | None] = []
        self.produced = 0
        self.closed = False
        self.last_frame = np.zeros(FRAME_SHAPE, np.uint8)

    def _frame(self) -> np.ndarray:
        self.last_frame = np.full(FRAME_SHAPE, self.produced % 256, dtype=np.uint8)
        self.produced += 1
        return self.last_frame

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.resets.append(seed)
        return self._frame()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        index = len(self.applied)
        self.applied.append(action)
        return (
            self._frame(),
            self.rewards.get(index, 0.0),
            index in self.terminate_at,
            index in self.truncate_at,
        )

    def render(self) -> np.ndarray:
        return self.last_frame

    def read_variables(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        self.closed = True


class FakeTime:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start_s: float = 100.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass
class Harness:
    """A clock on a FakeBackend with everything it emits captured."""

    clock: RealtimeClock
    backend: FakeBackend
    time: FakeTime
    samples: list[ObservationSample] = field(default_factory=list)
    records: list[StepRecord] = field(default_factory=list)
    frames: list[ViewerFrame] = field(default_factory=list)

    def sample_at(self, frame_index: int) -> ObservationSample:
        return next(s for s in self.samples if s.frame_index == frame_index)

    def reply(self, obs_frame: int, action: int, version: int = 5, log_prob: float = -0.25) -> bool:
        """Offers a reply to the observation of `obs_frame` now (between ticks)."""
        sample = self.sample_at(obs_frame)
        return self.clock.mailbox.offer(
            sample.episode, sample.frame_index, sample.produced_s, ActionReply(action, version, log_prob)
        )

    def tick_until(self, frame_index: int) -> None:
        """Ticks until frame `frame_index` has been produced."""
        self.clock.run_frames(frame_index + 1 - self.clock.frame)


MakeHarness = Callable[..., Harness]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Polls `predicate` until it holds or `timeout_s` passes (for work done on other threads)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
