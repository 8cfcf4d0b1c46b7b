"""`rtrl profile check PROFILE`: a profile's variables, reward terms and episode ends, live, while a person plays
(or random actions do), to see that its addresses and rules are right before training on it.

The game is built as the gateway builds it (`GatewaySettings.from_env` and `make_backend`: the same RTRL_*
settings, DISPLAY, profile and ROM checks), wrapped in the profile's rules (also when it has none, to read its
variables) and stepped at the game's frame rate. Episodes end and reset as in the gateway: a rule or the game
ends one, or RTRL_MAX_EPISODE_FRAMES cuts it, and the next frame resets. Without --random every frame applies
the fallback action, which on a desktop game presses no key, so a person plays in the game's own window (a
pyboy: game runs headless: only --random or the fallback play it). Every `frames_per_line` frames (about
1 / --hz seconds) one line, or one JSON object (`Tick.to_json`), says what those frames read and paid.

Errors: `CheckError`, and the settings, profile and backend errors met at start, are one sentence on stderr and
exit code 2; a game that fails during the run (its window closed) prints the summary first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rtrl.config import PREFIX, SettingsError

DEFAULT_HZ = 10.0
PROFILE_KINDS = ("pyboy", "desktop")
# The gateway's clock ticks up to this many frames back to back after an overrun, then moves its schedule.
CATCH_UP_LIMIT_FRAMES = 2
# What the frame cap ending an episode is called in an episode end's rules.
MAX_EPISODE_FRAMES = "max_episode_frames"
# Sums in JSON are rounded to this many decimals: a float sum's last digits (0.13999999999999999) are noise.
JSON_DECIMALS = 9


class CheckError(ValueError):
    """The check cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class CheckOptions:
    """What `rtrl profile check` does; the CLI fills this from its flags."""

    profile: str
    """A shipped profile's name or a path to a .toml file (RTRL_PROFILE)."""
    env: str | None = None
    """RTRL_ENV; None: desktop:<profile> for a desktop profile, RTRL_ENV from the environment for pyboy."""
    json_output: bool = False
    random_actions: bool = False
    """Random actions, each held for the decision interval; otherwise the fallback action every frame."""
    hz: float = DEFAULT_HZ
    seconds: float | None = None
    """Stop after this long; None: at Ctrl-C or SIGTERM."""
    settings: Mapping[str, str] = field(default_factory=dict)
    """RTRL_* settings given with --set; they win over the environment."""


@dataclass(frozen=True)
class EpisodeEnd:
    """One episode's end, as the gateway would record it."""

    episode: int
    """Counted from 1."""
    outcome: str
    """"terminated" or "truncated"."""
    rules: tuple[str, ...]
    """The rules that ended it (their kinds), "game" when the game itself did, or "max_episode_frames"."""
    frames: int
    """Frames of the episode, its reset frame included (the gateway's episode_frames)."""
    episode_return: float

    def to_json(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "outcome": self.outcome,
            "rules": list(self.rules),
            "frames": self.frames,
            "return": round(self.episode_return, JSON_DECIMALS),
        }

    def describe(self) -> str:
        return (
            f"episode {self.episode} {self.outcome} by {', '.join(self.rules)} after {self.frames} frames, "
            f"return {signed(self.episode_return)}"
        )


@dataclass
class Tick:
    """What the frames since the last line read and paid."""

    t_s: float
    frame: int
    episode: int
    episode_frames: int
    variables: dict[str, float | None]
    """The latest frame's variables; None where unknown (unreadable or not a finite number)."""
    terms: dict[str, float]
    """What each reward term paid over the tick's frames, by label (`RulesEngine.labels`)."""
    reward: float
    """The tick's reward: the backend's own (0 for pyboy and desktop games) plus the terms'."""
    episode_return: float
    """The running episode's return so far (0 just after a reset)."""
    ends: list[EpisodeEnd]

    def to_json(self) -> dict[str, Any]:
        return {
            "t_s": round(self.t_s, 3),
            "frame": self.frame,
            "episode": self.episode,
            "episode_frames": self.episode_frames,
            "variables": self.variables,
            "terms": {label: round(paid, JSON_DECIMALS) for label, paid in self.terms.items()},
            "reward": round(self.reward, JSON_DECIMALS),
            "episode_return": round(self.episode_return, JSON_DECIMALS),
            "ends": [end.to_json() for end in self.ends],
        }

    def describe(self) -> str:
        variables = " ".join(
            f"{name}={'?' if value is None else number(value)}" for name, value in self.variables.items()
        )
        terms = " ".join(f"{label} {signed(paid)}" for label, paid in self.terms.items())
        parts = [
            f"{self.t_s:7.2f} s  frame {self.frame}  episode {self.episode}",
            variables or "no variables",
            *([terms] if terms else []),
            f"reward {signed(self.reward)}  return {signed(self.episode_return)}",
            *(f"END {end.describe()}" for end in self.ends),
        ]
        return " | ".join(parts)


def number(value: float) -> str:
    """A value read from a game as it is: an integer stays one, else at most 6 significant digits."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def signed(value: float) -> str:
    return number(value) if value <= 0 else "+" + number(value)


def in_check_terms(message: str) -> str:
    """A settings message about RTRL_ENV or RTRL_PROFILE in the words of this command's arguments."""
    return (
        message.replace(f"set {PREFIX}PROFILE to", "give PROFILE as")
        .replace(f"set {PREFIX}ENV to", "pass --env")
        .replace(f"{PREFIX}ENV=", "--env ")
    )


def resolve_env(options: CheckOptions, environment: Mapping[str, str]) -> str:
    """The RTRL_ENV to check PROFILE on: --env, else desktop:PROFILE or the environment's pyboy: game."""
    from rtrl.services.env_gateway.profiles import load_profile
    from rtrl.services.env_gateway.settings import EnvSpec

    if options.env is not None:
        spec = EnvSpec.parse(options.env)
        if spec.kind not in PROFILE_KINDS:
            raise CheckError(
                f"--env {options.env} is not a game played with a profile; pass --env pyboy:<ROM path> or "
                "desktop:<profile>, or leave it out for a desktop profile."
            )
        return options.env
    profile = load_profile(options.profile)
    if profile.game.backend == "desktop":
        return f"desktop:{options.profile}"
    current = environment.get(f"{PREFIX}ENV", "")
    if current.startswith("pyboy:"):
        return current
    raise CheckError(
        f"profile {profile.label} is for a Game Boy game, which needs its ROM; pass --env pyboy:<path to the ROM>."
    )


class Check:
    """The game wrapped in its rules, stepped frame by frame; what it has seen so far is kept for the summary."""

    def __init__(self, options: CheckOptions, environment: Mapping[str, str]) -> None:
        # Imported here: `rtrl --help` and the other commands should not pay for the backends.
        from rtrl.services.env_gateway.backends import make_backend
        from rtrl.services.env_gateway.game_rules import RulesBackend
        from rtrl.services.env_gateway.settings import GatewaySettings

        if not options.hz > 0:
            raise CheckError(f"--hz {options.hz} is not a positive number of lines a second.")
        env = resolve_env(options, environment)
        self.settings = GatewaySettings.from_env(
            {**environment, f"{PREFIX}ENV": env, f"{PREFIX}PROFILE": options.profile}
        )
        profile = self.settings.profile
        assert profile is not None, "pyboy: and desktop: games always have a profile"
        self.options = options
        backend = make_backend(self.settings)
        if isinstance(backend, RulesBackend):
            self.rules = backend
        else:  # a profile without rewards or termination rules: its variables are still worth seeing
            realtime = self.settings.env.kind == "desktop"
            self.rules = RulesBackend(
                backend, profile, time.monotonic if realtime else None, self.settings.unknown_variable_timeout_s
            )
        self.frame_rate_hz = self.settings.frame_rate_hz or self.rules.native_frame_rate_hz
        self.frames_per_line = max(1, round(self.frame_rate_hz / options.hz))
        self.labels = self.rules.engine.labels
        self.names = self.rules.engine.variables
        self._rng = random.Random(self.settings.seed)
        self._action = self.settings.fallback_action
        self.frames = 0
        self.episode = 0
        self.episode_frames = 0
        self.episode_return = 0.0
        self.ends: list[EpisodeEnd] = []
        self.unknown_frames: dict[str, int] = dict.fromkeys(self.names, 0)
        self.started_s = time.monotonic()
        self._needs_reset = True
        self._tick_terms = [0.0] * len(self.labels)
        self._tick_reward = 0.0
        self._tick_ends: list[EpisodeEnd] = []

    def close(self) -> None:
        self.rules.close()

    def run(self, emit: Callable[[Tick], None], stop: threading.Event) -> None:
        """Steps the game at its frame rate and emits a tick every `frames_per_line` frames, for --seconds or
        until `stop` is set (between two frames, so that no frame is left half done)."""
        period_s = 1.0 / self.frame_rate_hz
        self.started_s = time.monotonic()
        stop_s = self.started_s + self.options.seconds if self.options.seconds is not None else math.inf
        due_s = self.started_s
        while due_s < stop_s and not stop.is_set():
            self.frame()
            if self.frames % self.frames_per_line == 0:
                emit(self.tick())
            due_s += period_s
            now = time.monotonic()
            if now - due_s > CATCH_UP_LIMIT_FRAMES * period_s:
                due_s = now  # too far behind (a slow reset): like the gateway's clock, move the schedule
            elif due_s > now:
                stop.wait(due_s - now)

    def frame(self) -> None:
        """One frame, as the gateway's clock makes it: a reset after an episode's end, else a step."""
        rules, settings = self.rules, self.settings
        if self._needs_reset:
            rules.reset(settings.seed if self.episode == 0 else None)
            self._needs_reset = False
            self.episode += 1
            self.episode_frames = 1
            self.episode_return = 0.0
            self.frames += 1
            return
        if self.options.random_actions and (self.episode_frames - 1) % settings.decision_interval_frames == 0:
            self._action = self._rng.randrange(rules.action_count)
        _, reward, terminated, truncated = rules.step(self._action)
        self.frames += 1
        self.episode_frames += 1
        self.episode_return += reward
        outcome = rules.last_outcome
        for index, paid in enumerate(outcome.terms):
            self._tick_terms[index] += paid
        self._tick_reward += reward
        for name in outcome.unknown:
            self.unknown_frames[name] = self.unknown_frames.get(name, 0) + 1
        ended_by = rules.last_end if terminated or truncated else ()
        if settings.max_episode_frames and self.episode_frames >= settings.max_episode_frames and not ended_by:
            truncated, ended_by = True, (MAX_EPISODE_FRAMES,)
        if terminated or truncated:
            outcome_name = "terminated" if terminated else "truncated"
            end = EpisodeEnd(self.episode, outcome_name, ended_by, self.episode_frames, self.episode_return)
            self.ends.append(end)
            self._tick_ends.append(end)
            self._needs_reset = True

    def tick(self) -> Tick:
        """What the frames since the last tick read and paid; starts the next tick."""
        from rtrl.services.env_gateway.game_rules import known

        read = self.rules.read_variables()
        variables: dict[str, float | None] = {}
        for name in self.names:
            value = read.get(name)
            variables[name] = float(value) if value is not None and known(value) else None
        tick = Tick(
            t_s=time.monotonic() - self.started_s,
            frame=self.frames,
            episode=self.episode,
            episode_frames=self.episode_frames,
            variables=variables,
            terms=dict(zip(self.labels, self._tick_terms, strict=True)),
            reward=self._tick_reward,
            episode_return=0.0 if self._needs_reset else self.episode_return,
            ends=self._tick_ends,
        )
        self._tick_terms = [0.0] * len(self.labels)
        self._tick_reward = 0.0
        self._tick_ends = []
        return tick

    def summary(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.started_s
        return {
            "seconds": round(seconds, 3),
            "frames": self.frames,
            "frame_rate_hz": round(self.frames / seconds, 2) if seconds > 0 else None,
            "episodes_ended": [end.to_json() for end in self.ends],
            "episode": self.episode,
            "episode_running": not self._needs_reset,
            "episode_frames": self.episode_frames,
            "episode_return": round(self.episode_return, JSON_DECIMALS),
            "unknown_variable_frames": {name: count for name, count in self.unknown_frames.items() if count},
        }


def describe_summary(summary: Mapping[str, Any]) -> str:
    """The summary as one sentence."""
    rate = summary["frame_rate_hz"]
    parts = [f"{summary['seconds']:.1f} s, {summary['frames']} frames" + (f" at {rate:.1f} fps" if rate else "")]
    ended = summary["episodes_ended"]
    if ended:
        returns = ", ".join(signed(end["return"]) for end in ended)
        parts.append(f"{len(ended)} episode{'' if len(ended) == 1 else 's'} ended (returns {returns})")
    if summary["episode_running"]:
        parts.append(
            f"episode {summary['episode']} at {signed(summary['episode_return'])} after {summary['episode_frames']} "
            "frames"
        )
    unknown = summary["unknown_variable_frames"]
    if unknown:
        parts.append("unknown: " + ", ".join(f"{name} on {count} frames" for name, count in unknown.items()))
    else:
        parts.append("every variable known on every frame")
    return "rtrl profile check: " + "; ".join(parts) + "."


def options_from(args: argparse.Namespace) -> CheckOptions:
    """The options `rtrl profile check` parsed (cli.py)."""
    return CheckOptions(
        profile=args.profile,
        env=args.env,
        json_output=args.json,
        random_actions=args.random,
        hz=args.hz,
        seconds=args.seconds,
        settings=dict(args.settings),
    )


def main(options: CheckOptions) -> int:
    """`rtrl profile check`: runs the check, prints its lines and the summary, returns the exit code."""
    import logging

    from rtrl.services.env_gateway.backends.base import BackendError

    # The backends' warnings (an unreadable variable, a broken chain) are part of what the check shows.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def say(text: str) -> None:
        print(text, flush=True)

    def emit(tick: Tick) -> None:
        say(json.dumps(tick.to_json()) if options.json_output else tick.describe())

    try:
        check = Check(options, {**os.environ, **options.settings})
    except SettingsError as error:
        print(f"rtrl profile check: {in_check_terms(str(error))}", file=sys.stderr)
        return 2
    except (CheckError, BackendError) as error:
        print(f"rtrl profile check: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtrl profile check: stopped before the game was running.", file=sys.stderr)
        return 0
    # Ctrl-C (the usual way to end a check) and SIGTERM stop it between two frames: keys released, summary printed.
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda _number, _frame: stop.set())
    failure: BaseException | None = None
    try:
        check.run(emit, stop)
    except BackendError as error:
        failure = error
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more can be said; stdout must not be flushed again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        check.close()
    summary = check.summary()
    say(json.dumps({"summary": summary}) if options.json_output else describe_summary(summary))
    if failure is not None:
        print(f"rtrl profile check: the game failed: {failure}", file=sys.stderr)
        return 2
    return 0
