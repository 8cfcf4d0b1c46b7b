"""The rules engine on plain numbers: each reward term and episode-end rule, and the backend wrapper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.env_gateway.game_rules import RulesBackend, RulesEngine, with_rules
from services.env_gateway.profiles import GameProfile, load_profile, parse_profile

VARIABLES = {
    "x": {"module": "game.exe", "pointers": [0x10]},
    "hp1": {"module": "game.exe", "pointers": [0x20]},
    "hp2": {"module": "game.exe", "pointers": [0x24]},
    "flag": {"module": "game.exe", "pointers": [0x28]},
}


def profile(rewards: list[dict[str, Any]] = (), termination: list[dict[str, Any]] = ()) -> GameProfile:  # type: ignore[assignment]
    data = {
        "game": {"name": "rules", "backend": "desktop"},
        "window": {"title": "Game"},
        "actions": {"keys": [[], ["Right"]]},
        "variables": VARIABLES,
        "rewards": list(rewards),
        "termination": list(termination),
    }
    return parse_profile(data, Path("rules.toml"))


def frame(x: float = 0.0, hp1: float = 10.0, hp2: float = 10.0, flag: float = 0.0) -> dict[str, float]:
    return {"x": x, "hp1": hp1, "hp2": hp2, "flag": flag}


def run(engine: RulesEngine, frames: list[dict[str, float]], rate_hz: float = 10.0) -> list[tuple[float, bool, bool]]:
    """Resets on the first frame, steps the rest at `rate_hz`; returns (reward, terminated, truncated) per step."""
    engine.reset(frames[0], 0.0)
    outcomes = []
    for index, values in enumerate(frames[1:], start=1):
        outcome = engine.step(values, index / rate_hz)
        outcomes.append((outcome.reward, outcome.terminated, outcome.truncated))
    return outcomes


def test_delta_reward_scales_the_change_of_a_variable() -> None:
    engine = RulesEngine(profile([{"kind": "delta", "variable": "x", "scale": 0.5}]))
    rewards = [r for r, _, _ in run(engine, [frame(x=10), frame(x=14), frame(x=14), frame(x=12)])]
    assert rewards == [2.0, 0.0, -1.0]


def test_milestones_pay_once_per_new_stretch_of_ground() -> None:
    engine = RulesEngine(profile([{"kind": "milestone", "variable": "x", "every_px": 100, "reward": 1.0}]))
    xs = [50, 120, 149, 260, 80, 240, 360]  # start at 50: milestones at 150, 250, 350
    rewards = [r for r, _, _ in run(engine, [frame(x=x) for x in xs])]
    assert rewards == [0.0, 0.0, 2.0, 0.0, 0.0, 1.0]


def test_faint_reward_counts_each_variable_that_drops_to_zero() -> None:
    engine = RulesEngine(profile([{"kind": "faint", "variables": ["hp1", "hp2"], "reward": -1.0}]))
    frames = [frame(), frame(hp1=3), frame(hp1=0), frame(hp1=0), frame(hp1=0, hp2=0)]
    assert [r for r, _, _ in run(engine, frames)] == [0.0, -1.0, 0.0, -1.0]
    engine.reset(frame(hp1=0, hp2=0), 0.0)  # zero at the start of an episode is no faint
    assert engine.step(frame(hp1=0, hp2=0), 0.1).reward == 0.0


def test_constant_reward_is_paid_every_frame() -> None:
    engine = RulesEngine(profile([{"kind": "constant", "reward": -0.01}]))
    assert [r for r, _, _ in run(engine, [frame()] * 4)] == [-0.01] * 3


@pytest.mark.parametrize(
    ("rule", "frames", "expected"),
    [
        ({"kind": "equals", "variable": "flag", "value": 1}, [0, 0, 1], [(False, False), (True, False)]),
        ({"kind": "not_equals", "variable": "flag", "value": 0}, [0, 0, 2], [(False, False), (True, False)]),
        (
            {"kind": "equals", "variable": "flag", "value": 1, "outcome": "truncated"},
            [0, 1],
            [(False, True)],
        ),
    ],
)
def test_equality_rules_end_the_episode_with_their_outcome(
    rule: dict[str, Any], frames: list[float], expected: list[tuple[bool, bool]]
) -> None:
    engine = RulesEngine(profile(termination=[rule]))
    assert [(t, u) for _, t, u in run(engine, [frame(flag=f) for f in frames])] == expected


def test_all_zero_ends_when_every_variable_is_zero() -> None:
    engine = RulesEngine(profile(termination=[{"kind": "all_zero", "variables": ["hp1", "hp2"]}]))
    ends = [t for _, t, _ in run(engine, [frame(), frame(hp1=0), frame(hp1=0, hp2=0)])]
    assert ends == [False, True]


def test_x_teleport_needs_both_the_absolute_and_the_relative_drop() -> None:
    rule = {"kind": "x_teleport", "variable": "x", "relative_drop": 0.5, "absolute_drop_px": 100}
    engine = RulesEngine(profile(termination=[rule]))
    # 1000 -> 850: 150 px but only 15 %; 850 -> 300: 550 px and 65 %: a respawn.
    xs = [1000, 850, 300]
    assert [t for _, t, _ in run(engine, [frame(x=x) for x in xs])] == [False, True]
    # Walking back (60 px, then 50 px in a frame) is no respawn, however large the fraction.
    engine = RulesEngine(profile(termination=[rule]))
    assert [t for _, t, _ in run(engine, [frame(x=150), frame(x=90), frame(x=40)])] == [False, False]


def test_stagnation_truncates_after_the_window_without_movement() -> None:
    rule = {"kind": "stagnation", "variable": "x", "epsilon_px": 5, "window_s": 0.5}
    engine = RulesEngine(profile(termination=[rule]))
    # 10 Hz: frames 1..4 jitter within 5 px of 0, frame 5 moves to 20 (new reference at t=0.5),
    # then it stays put: truncated at t >= 1.0.
    xs = [0, 2, -3, 4, 1, 20, 22, 18, 21, 20, 19]
    outcomes = run(engine, [frame(x=x) for x in xs])
    truncated_at = [index for index, (_, _, truncated) in enumerate(outcomes, start=1) if truncated]
    assert truncated_at == [10]
    assert not any(terminated for _, terminated, _ in outcomes)


def test_time_cap_truncates_measured_from_the_reset() -> None:
    engine = RulesEngine(profile(termination=[{"kind": "time_cap", "seconds": 0.3}]))
    assert [u for _, _, u in run(engine, [frame()] * 5)] == [False, False, True, True]


def test_deaths_cost_more_where_they_happened_before_even_in_later_episodes() -> None:
    engine = RulesEngine(
        profile(
            rewards=[
                {"kind": "death_zone", "variable_x": "x", "radius_px": 50, "penalty": -1.0, "repeat_multiplier": 2.0}
            ],
            termination=[{"kind": "x_teleport", "variable": "x", "relative_drop": 0.5, "absolute_drop_px": 100}],
        )
    )
    penalties = []
    for death_x in (1000, 1030, 2000, 990):
        engine.reset(frame(x=death_x), 0.0)
        outcome = engine.step(frame(x=0), 0.1)
        assert outcome.terminated and outcome.events == ("x_teleport",)
        penalties.append(outcome.reward)
    # 1000: first death there; 1030: one earlier death within 50 px; 2000: new spot; 990: two earlier.
    assert penalties == [-1.0, -2.0, -1.0, -4.0]


def test_an_x_teleport_with_outcome_none_feeds_the_penalty_without_ending_the_episode() -> None:
    engine = RulesEngine(
        profile(
            rewards=[{"kind": "death_zone", "variable_x": "x", "radius_px": 10, "penalty": -0.5}],
            termination=[
                {
                    "kind": "x_teleport",
                    "variable": "x",
                    "relative_drop": 0.5,
                    "absolute_drop_px": 100,
                    "outcome": "none",
                }
            ],
        )
    )
    assert run(engine, [frame(x=500), frame(x=0)]) == [(-0.5, False, False)]


def test_the_shipped_supertux_rules_run_on_a_scripted_episode() -> None:
    supertux = load_profile("supertux")
    engine = RulesEngine(supertux)
    engine.reset({"x": 100.0}, 0.0)
    progress = engine.step({"x": 700.0}, 1 / 60)
    assert progress.reward == pytest.approx(0.01 * 600 + 1.0)  # delta + one 500 px milestone
    death = engine.step({"x": 100.0}, 2 / 60)  # a 600 px drop: over 200 px and over half of x
    assert death.terminated and death.reward == pytest.approx(0.01 * -600 - 1.0)


class ScriptedBackend:
    """A backend whose variables follow a script, one entry per produced frame."""

    action_count = 2
    action_meanings = ("noop", "right")
    native_frame_rate_hz = 10.0
    observation_kind = "pixels"
    state_size = 0

    def __init__(self, script: list[dict[str, float]]) -> None:
        self.script = script
        self.position = 0
        self.closed = False

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.position = 0
        return np.zeros((2, 2, 3), np.uint8)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        self.position += 1
        return np.zeros((2, 2, 3), np.uint8), 0.25, False, False

    def render(self) -> np.ndarray:
        return np.zeros((2, 2, 3), np.uint8)

    def read_variables(self) -> dict[str, float]:
        return self.script[self.position]

    def close(self) -> None:
        self.closed = True


def test_rules_backend_adds_the_rules_to_the_backends_own_reward_and_ends_episodes() -> None:
    rules = profile(
        rewards=[{"kind": "delta", "variable": "x"}],
        termination=[{"kind": "time_cap", "seconds": 0.2}],
    )
    inner = ScriptedBackend([frame(x=0), frame(x=3), frame(x=5), frame(x=5)])
    backend = with_rules(inner, rules)
    assert isinstance(backend, RulesBackend) and backend.action_count == 2
    backend.reset(seed=1)
    assert backend.step(1)[1:] == (3.25, False, False)
    assert backend.step(1)[1:] == (2.25, False, True)  # 2 frames at 10 Hz = the 0.2 s cap
    backend.reset()
    assert backend.step(0)[1:] == (3.25, False, False)  # time restarts with the episode
    backend.close()
    assert inner.closed


def test_a_profile_without_rules_leaves_the_backend_unwrapped() -> None:
    inner = ScriptedBackend([frame()])
    assert with_rules(inner, None) is inner
    assert with_rules(inner, profile()) is inner
