"""A profile's rewards and episode-end rules, computed each frame from the game's variables.

`RulesEngine` is fed a dict of variable values plus the episode's time for every frame and knows
nothing of backends, so it is tested on plain numbers. `RulesBackend` wraps any backend that reads
variables: it adds the rules' reward to the backend's own (ALE's, a game wrapper's) and ends the
episode when a rule says so. The semantics of every term and rule are in docs/profiles.md.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from services.env_gateway.backends.base import Backend
from services.env_gateway.profiles import (
    AllZeroRule,
    ConstantReward,
    DeathZoneReward,
    DeltaReward,
    EqualsRule,
    FaintReward,
    GameProfile,
    MilestoneReward,
    RewardTerm,
    StagnationRule,
    TerminationRule,
    TimeCapRule,
    XTeleportRule,
)

# Deaths remembered for death-zone penalties; old ones are forgotten so a long run stays cheap.
MAX_REMEMBERED_DEATHS = 1000


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """What the rules made of one frame."""

    reward: float
    terminated: bool
    truncated: bool
    events: tuple[str, ...] = ()
    """Rules that fired, e.g. ("x_teleport", "time_cap"), for logs and tests."""


class RulesEngine:
    """The reward terms and termination rules of one profile, with the state they need between frames.

    Call `reset(variables, time_s)` with the first frame of every episode, then `step` per frame.
    `time_s` is any clock that advances with the game; only differences within an episode are used.
    Death positions (for death_zone) survive resets: repeated deaths at one spot across episodes are
    what the penalty is meant to discourage.
    """

    def __init__(self, profile: GameProfile) -> None:
        self.rewards: tuple[RewardTerm, ...] = profile.rewards
        self.rules: tuple[TerminationRule, ...] = profile.termination
        self.deaths: deque[float] = deque(maxlen=MAX_REMEMBERED_DEATHS)
        self._previous: dict[str, float] = {}
        self._start_s = 0.0
        self._milestones: dict[int, tuple[float, int]] = {}
        """Per milestone term: (value at reset, milestones paid)."""
        self._stagnation: dict[int, tuple[float, float]] = {}
        """Per stagnation rule: (reference value, time it was set)."""

    def reset(self, variables: Mapping[str, float], time_s: float) -> None:
        self._previous = dict(variables)
        self._start_s = time_s
        self._milestones = {
            i: (variables[term.variable], 0) for i, term in enumerate(self.rewards) if isinstance(term, MilestoneReward)
        }
        self._stagnation = {
            i: (variables[rule.variable], time_s)
            for i, rule in enumerate(self.rules)
            if isinstance(rule, StagnationRule)
        }

    def step(self, variables: Mapping[str, float], time_s: float) -> RuleOutcome:
        previous = self._previous
        events: list[str] = []
        terminated = truncated = False
        death_x: float | None = None
        for index, rule in enumerate(self.rules):
            fired, x = self._check(index, rule, variables, previous, time_s)
            if not fired:
                continue
            events.append(rule.kind)
            if x is not None:
                death_x = x
            if rule.outcome == "terminated":
                terminated = True
            elif rule.outcome == "truncated":
                truncated = True
        reward = 0.0
        for index, term in enumerate(self.rewards):
            reward += self._reward(index, term, variables, previous, death_x)
        if death_x is not None:
            self.deaths.append(death_x)
        self._previous = dict(variables)
        return RuleOutcome(reward, terminated, truncated, tuple(events))

    def _check(
        self,
        index: int,
        rule: TerminationRule,
        variables: Mapping[str, float],
        previous: Mapping[str, float],
        time_s: float,
    ) -> tuple[bool, float | None]:
        """Whether `rule` fires on this frame, and the x of the death it detected (x_teleport)."""
        if isinstance(rule, EqualsRule):
            return (variables[rule.variable] == rule.value) != rule.negate, None
        if isinstance(rule, AllZeroRule):
            return all(variables[name] == 0 for name in rule.variables), None
        if isinstance(rule, XTeleportRule):
            before, now = previous[rule.variable], variables[rule.variable]
            drop = before - now
            # Both thresholds: a big absolute drop rules out walking back, a relative one rules out
            # a respawn far along a long level looking like a death.
            if drop >= rule.absolute_drop_px and drop >= rule.relative_drop * abs(before):
                return True, before
            return False, None
        if isinstance(rule, StagnationRule):
            value = variables[rule.variable]
            reference, since_s = self._stagnation[index]
            if abs(value - reference) > rule.epsilon_px:
                self._stagnation[index] = (value, time_s)
                return False, None
            return time_s - since_s >= rule.window_s, None
        assert isinstance(rule, TimeCapRule)
        return time_s - self._start_s >= rule.seconds, None

    def _reward(
        self,
        index: int,
        term: RewardTerm,
        variables: Mapping[str, float],
        previous: Mapping[str, float],
        death_x: float | None,
    ) -> float:
        if isinstance(term, DeltaReward):
            return term.scale * (variables[term.variable] - previous[term.variable])
        if isinstance(term, MilestoneReward):
            start, paid = self._milestones[index]
            reached = math.floor((variables[term.variable] - start) / term.every_px)
            if reached <= paid:
                return 0.0
            self._milestones[index] = (start, reached)
            return term.reward * (reached - paid)
        if isinstance(term, FaintReward):
            fainted = sum(1 for name in term.variables if previous[name] > 0 and variables[name] == 0)
            return term.reward * fainted
        if isinstance(term, DeathZoneReward):
            if death_x is None:
                return 0.0
            repeats = sum(1 for x in self.deaths if abs(x - death_x) <= term.radius_px)
            return term.penalty * term.repeat_multiplier**repeats
        assert isinstance(term, ConstantReward)
        return term.reward


class RulesBackend:
    """A backend whose rewards and episode ends include its profile's rules.

    Time for the rules is the episode's frames / native rate by default (an emulator only advances
    when ticked); pass `clock` (e.g. time.monotonic) for a game that runs on its own, like a desktop
    window, so time caps and stagnation windows are real seconds.
    """

    def __init__(self, backend: Backend, profile: GameProfile, clock: Callable[[], float] | None = None) -> None:
        self.inner = backend
        self.profile = profile
        self.engine = RulesEngine(profile)
        self._clock = clock
        self._frames = 0
        self.last_outcome = RuleOutcome(0.0, False, False)

    @property
    def action_count(self) -> int:
        return self.inner.action_count

    @property
    def action_meanings(self) -> tuple[str, ...]:
        return self.inner.action_meanings

    @property
    def native_frame_rate_hz(self) -> float:
        return self.inner.native_frame_rate_hz

    @property
    def observation_kind(self) -> str:
        return self.inner.observation_kind

    @property
    def state_size(self) -> int:
        return self.inner.state_size

    def _time_s(self) -> float:
        if self._clock is not None:
            return self._clock()
        return self._frames / self.inner.native_frame_rate_hz

    def reset(self, seed: int | None = None) -> np.ndarray:
        frame = self.inner.reset(seed)
        self._frames = 0
        self.engine.reset(self.inner.read_variables(), self._time_s())
        return frame

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        frame, reward, terminated, truncated = self.inner.step(action)
        self._frames += 1
        outcome = self.engine.step(self.inner.read_variables(), self._time_s())
        self.last_outcome = outcome
        return frame, reward + outcome.reward, terminated or outcome.terminated, truncated or outcome.truncated

    def render(self) -> np.ndarray:
        return self.inner.render()

    def read_variables(self) -> dict[str, float]:
        return self.inner.read_variables()

    def close(self) -> None:
        self.inner.close()


def with_rules(backend: Backend, profile: GameProfile | None, realtime: bool = False) -> Backend:
    """`backend` wrapped in its profile's rules, or as it is when the profile has none."""
    if profile is None or not profile.has_rules:
        return backend
    return RulesBackend(backend, profile, clock=time.monotonic if realtime else None)
