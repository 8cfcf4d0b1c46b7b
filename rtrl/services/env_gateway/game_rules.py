"""A profile's rewards and episode-end rules, computed each frame from the game's variables.

`RulesEngine` is fed a dict of variable values plus the episode's time for every frame and knows
nothing of backends, so it is tested on plain numbers. `RulesBackend` wraps any backend that reads
variables: it adds the rules' reward to the backend's own (ALE's, a game wrapper's) and ends the
episode when a rule says so. The semantics of every term and rule are in docs/profiles.md.

A variable that cannot be read (a pointer chain that breaks while a level loads) or is not a finite
number is unknown for that frame: a term or rule that needs it, now or on the frame before, gives
nothing and does not fire, so one bad read never stops the game clock or pays a reward for garbage.
One unknown for `unknown_timeout_s` in a row ends the episode as truncated ("unknown_variable").

Every outcome also says what each reward term paid (`terms`, labelled by `term_labels`) and which
variables it was computed from, for `rtrl profile check` and the gateway's GetStats.

A profile's screen signals (`screen_signals.ScreenSignals`: scroll, screen change, template scores) are
measured by `RulesBackend` on each raw frame and reach the engine as more variables; an unknown one
makes the rules that read it give nothing, but never ends the episode by itself (a scene cut is not a
broken read).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from rtrl.services.env_gateway.backends.base import Backend
from rtrl.services.env_gateway.profiles import (
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
    TemplateMatch,
    TemplateReward,
    TemplateRule,
    TerminationRule,
    ThresholdRule,
    TimeCapRule,
    VariableSpec,
    XTeleportRule,
)
from rtrl.services.env_gateway.screen_signals import ScreenSignals

log = logging.getLogger(__name__)

# Deaths remembered for death-zone penalties; old ones are forgotten so a long run stays cheap.
MAX_REMEMBERED_DEATHS = 1000
DEFAULT_UNKNOWN_TIMEOUT_S = 2.0
UNKNOWN_VARIABLE = "unknown_variable"
# What RulesBackend reports as the end of an episode that the backend itself ended (a game wrapper's game over).
GAME_END = "game"


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """What the rules made of one frame."""

    reward: float
    terminated: bool
    truncated: bool
    events: tuple[str, ...] = ()
    """Rules that fired, e.g. ("x_teleport", "time_cap"), for logs and tests."""
    unknown: tuple[str, ...] = ()
    """Variables that were unknown on this frame (unreadable, NaN, infinite)."""
    timed_out: tuple[str, ...] = ()
    """Variables unknown for the whole timeout: the reason of an "unknown_variable" truncation."""
    terms: tuple[float, ...] = ()
    """What each reward term paid on this frame, in the profile's order (`RulesEngine.labels`); they sum to `reward`."""
    ended_by: tuple[str, ...] = ()
    """The events that ended the episode (an x_teleport with outcome "none" fires without ending it)."""
    variables: Mapping[str, float] = field(default_factory=dict, hash=False)
    """The variables this frame was judged on, as read (unknown ones NaN, infinite or absent)."""


def known(value: object) -> bool:
    """A value the rules can use: a finite number."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def term_label(term: RewardTerm) -> str:
    """A short name of a reward term for people: its kind and what it reads, e.g. "delta(x)", "constant"."""
    # A death zone reads no variable itself (the x_teleport rule passes it the death's x), but is about one.
    names = (term.variable_x,) if isinstance(term, DeathZoneReward) else needed(term)
    return f"{term.kind}({','.join(names)})" if names else term.kind


def term_labels(terms: tuple[RewardTerm, ...]) -> tuple[str, ...]:
    """`term_label` of each term, made unique with "#<index in the profile>" where two would read the same."""
    labels = [term_label(term) for term in terms]
    return tuple(
        label if labels.count(label) == 1 or labels.index(label) == index else f"{label}#{index}"
        for index, label in enumerate(labels)
    )


def needed(item: RewardTerm | TerminationRule) -> tuple[str, ...]:
    """The variables a reward term or termination rule reads."""
    many = getattr(item, "variables", None)
    if many is not None:
        return tuple(many)
    one = getattr(item, "variable", None)
    return (one,) if one is not None else ()


def appeared(match: TemplateMatch, variables: Mapping[str, float], previous: Mapping[str, float]) -> bool:
    """Whether a template's image is shown on this frame and was not on the one before: a rule fires once
    per appearance, not on every frame it stays (nor on an episode's first frames if it is still shown)."""
    return variables[match.signal] >= match.threshold > previous[match.signal]


class RulesEngine:
    """The reward terms and termination rules of one profile, with the state they need between frames.

    Call `reset(variables, time_s)` with the first frame of every episode, then `step` per frame.
    `time_s` is any clock that advances with the game; only differences within an episode are used.
    Death positions (for death_zone) survive resets: repeated deaths at one spot across episodes are
    what the penalty is meant to discourage.
    """

    def __init__(self, profile: GameProfile, unknown_timeout_s: float = DEFAULT_UNKNOWN_TIMEOUT_S) -> None:
        self.rewards: tuple[RewardTerm, ...] = profile.rewards
        self.rules: tuple[TerminationRule, ...] = profile.termination
        self.variables: tuple[str, ...] = tuple(profile.variables)
        self.labels: tuple[str, ...] = term_labels(self.rewards)
        """One per reward term, aligned with `RuleOutcome.terms`."""
        self.screen_values = frozenset((*profile.screen_variables, *(match.signal for match in profile.templates)))
        """Names of the screen signals' values: they are never counted as unknown variables."""
        self.unknown_timeout_s = unknown_timeout_s
        self.deaths: deque[float] = deque(maxlen=MAX_REMEMBERED_DEATHS)
        self._previous: dict[str, float] = {}
        self._start_s = 0.0
        self._milestones: dict[int, tuple[float | None, int]] = {}
        """Per milestone term: (value at reset, or None until the variable is known; milestones paid)."""
        self._stagnation: dict[int, tuple[float | None, float]] = {}
        """Per stagnation rule: (reference value, or None until known; time it was set)."""
        self._unknown_since: dict[str, float] = {}

    def reset(self, variables: Mapping[str, float], time_s: float) -> None:
        self._previous = dict(variables)
        self._start_s = time_s
        self._unknown_since = {}
        self._milestones = {
            i: (self._value(variables, term.variable), 0)
            for i, term in enumerate(self.rewards)
            if isinstance(term, MilestoneReward)
        }
        self._stagnation = {
            i: (self._value(variables, rule.variable), time_s)
            for i, rule in enumerate(self.rules)
            if isinstance(rule, StagnationRule)
        }

    @staticmethod
    def _value(variables: Mapping[str, float], name: str) -> float | None:
        value = variables.get(name)
        return float(value) if value is not None and known(value) else None

    def _usable(self, item: RewardTerm | TerminationRule, variables: Mapping[str, float]) -> bool:
        """Whether every variable `item` reads is known now and, for what compares frames, on the frame before."""
        with_previous = isinstance(item, (DeltaReward, FaintReward, XTeleportRule, TemplateReward, TemplateRule))
        return all(
            self._value(variables, name) is not None
            and (not with_previous or self._value(self._previous, name) is not None)
            for name in needed(item)
        )

    def step(self, variables: Mapping[str, float], time_s: float) -> RuleOutcome:
        previous = self._previous
        events: list[str] = []
        ended_by: list[str] = []
        terminated = truncated = False
        death_x: float | None = None
        tracked = self.variables or tuple(name for name in variables if name not in self.screen_values)
        unknown = tuple(name for name in tracked if self._value(variables, name) is None)
        self._unknown_since = {name: self._unknown_since.get(name, time_s) for name in unknown}
        timed_out = tuple(
            name for name, since in self._unknown_since.items() if time_s - since >= self.unknown_timeout_s
        )
        for index, rule in enumerate(self.rules):
            if not self._usable(rule, variables):
                continue
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
            if rule.outcome != "none":
                ended_by.append(rule.kind)
        if timed_out:
            events.append(UNKNOWN_VARIABLE)
            ended_by.append(UNKNOWN_VARIABLE)
            truncated = True
        reward = 0.0
        terms = [0.0] * len(self.rewards)
        for index, term in enumerate(self.rewards):
            if not self._usable(term, variables):
                continue
            try:
                paid = self._reward(index, term, variables, previous, death_x)
            except (OverflowError, ValueError):  # huge values: floor(inf), int too large for a float
                continue
            terms[index] = paid
            reward += paid
        if not math.isfinite(reward):
            # Terms summed to an infinity (or one was): nothing is paid for it, by any term.
            reward = 0.0
            terms = [0.0] * len(self.rewards)
        if death_x is not None:
            self.deaths.append(death_x)
        self._previous = dict(variables)
        return RuleOutcome(
            reward,
            terminated,
            truncated,
            tuple(events),
            unknown,
            timed_out,
            tuple(terms),
            tuple(ended_by),
            self._previous,  # never changed: the next step replaces it
        )

    def _check(
        self,
        index: int,
        rule: TerminationRule,
        variables: Mapping[str, float],
        previous: Mapping[str, float],
        time_s: float,
    ) -> tuple[bool, float | None]:
        """Whether `rule` fires on this frame, and the x of the death it detected (x_teleport)."""
        if isinstance(rule, ThresholdRule):
            value = variables[rule.variable]
            return (value < rule.value if rule.below else value > rule.value), None
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
            if reference is None or abs(value - reference) > rule.epsilon_px:
                self._stagnation[index] = (value, time_s)
                return False, None
            return time_s - since_s >= rule.window_s, None
        if isinstance(rule, TemplateRule):
            return appeared(rule.match, variables, previous), None
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
            if start is None:  # unknown at the reset: milestones count from the first known value
                self._milestones[index] = (variables[term.variable], paid)
                return 0.0
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
        if isinstance(term, TemplateReward):
            return term.reward if appeared(term.match, variables, previous) else 0.0
        assert isinstance(term, ConstantReward)
        return term.reward


class RulesBackend:
    """A backend whose rewards and episode ends include its profile's rules.

    Time for the rules is the episode's frames / native rate by default (an emulator only advances
    when ticked); pass `clock` (e.g. time.monotonic) for a game that runs on its own, like a desktop
    window, so time caps and stagnation windows are real seconds.
    """

    def __init__(
        self,
        backend: Backend,
        profile: GameProfile,
        clock: Callable[[], float] | None = None,
        unknown_timeout_s: float = DEFAULT_UNKNOWN_TIMEOUT_S,
    ) -> None:
        self.inner = backend
        self.profile = profile
        self.engine = RulesEngine(profile, unknown_timeout_s)
        self.screen = ScreenSignals(profile, backend.native_frame_rate_hz)
        self._screen_values: dict[str, float] = {}
        self._clock = clock
        self._frames = 0
        self.last_outcome = RuleOutcome(0.0, False, False, terms=(0.0,) * len(profile.rewards))
        self.episode_terms: tuple[float, ...] = (0.0,) * len(profile.rewards)
        """What each reward term has paid in the episode so far (GetStats; replaced, never changed in place, so
        another thread reads a consistent tuple)."""
        self.last_end: tuple[str, ...] = ()
        """What ended the most recent episode ended here: the rules (`RuleOutcome.ended_by`), and GAME_END when the
        backend itself said so; () before the first. An episode its caller cuts (RTRL_MAX_EPISODE_FRAMES) is not one."""
        self.unknown_variable_frames = 0
        """Frames on which a variable was unknown (GetStats)."""
        self.unknown_variable_truncations = 0
        """Episodes ended because a variable stayed unknown (GetStats)."""
        self._reported: set[str] = set()

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
        self.episode_terms = (0.0,) * len(self.engine.rewards)
        if self.screen:
            self._screen_values = self.screen.reset(frame)
        self.engine.reset(self.read_variables(), self._time_s())
        return frame

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        frame, reward, terminated, truncated = self.inner.step(action)
        self._frames += 1
        if self.screen:
            self._screen_values = self.screen.measure(frame)
        outcome = self.engine.step(self.read_variables(), self._time_s())
        self.last_outcome = outcome
        if any(outcome.terms):  # most frames pay nothing: no new tuple for them
            self.episode_terms = tuple(
                total + paid for total, paid in zip(self.episode_terms, outcome.terms, strict=True)
            )
        if outcome.unknown:
            self.unknown_variable_frames += 1
            self._report(outcome)
        if terminated or truncated or outcome.ended_by:
            self.last_end = outcome.ended_by + ((GAME_END,) if terminated or truncated else ())
        return frame, reward + outcome.reward, terminated or outcome.terminated, truncated or outcome.truncated

    def _report(self, outcome: RuleOutcome) -> None:
        """One sentence per variable the first time it is unknown; counts the truncations it causes."""
        for name in outcome.unknown:
            if name not in self._reported:
                self._reported.add(name)
                log.warning(
                    "variable %r of profile %s (%s) is unreadable or not a finite number; the rewards and episode "
                    "ends that need it give nothing until it is readable again, and after %.1f s of it the episode "
                    "ends as truncated. Check its address or pointer chain (docs/profiles.md).",
                    name,
                    self.profile.label,
                    describe_location(self.profile.variables.get(name)),
                    self.engine.unknown_timeout_s,
                )
        if outcome.timed_out:
            self.unknown_variable_truncations += 1
            if self.unknown_variable_truncations == 1:
                log.warning(
                    "episode truncated: %s unknown for %.1f s (further such truncations are counted in GetStats)",
                    ", ".join(outcome.timed_out),
                    self.engine.unknown_timeout_s,
                )

    def render(self) -> np.ndarray:
        return self.inner.render()

    def read_variables(self) -> dict[str, float]:
        """The backend's variables and the screen signals' values (template scores included) of the last frame."""
        if not self._screen_values:
            return self.inner.read_variables()
        return {**self.inner.read_variables(), **self._screen_values}

    def close(self) -> None:
        self.inner.close()


def describe_location(spec: VariableSpec | None) -> str:
    """Where a variable is read, for a log line: the module and pointer chain, or the address."""
    if spec is None:
        return "not in the profile's variables"
    if spec.wrapper is not None:
        return f"the game wrapper's {spec.wrapper}"
    if spec.module is not None:
        chain = ", ".join(hex(offset) for offset in spec.pointers)
        return f"module {spec.module}, pointers [{chain}], type {spec.type}"
    return f"address {hex(spec.address or 0)}, type {spec.type}"


def with_rules(
    backend: Backend,
    profile: GameProfile | None,
    realtime: bool = False,
    unknown_timeout_s: float = DEFAULT_UNKNOWN_TIMEOUT_S,
) -> Backend:
    """`backend` wrapped in its profile's rules, or as it is when the profile has none."""
    if profile is None or not profile.has_rules:
        return backend
    return RulesBackend(backend, profile, time.monotonic if realtime else None, unknown_timeout_s)
