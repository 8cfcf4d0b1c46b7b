"""The rules engine on plain numbers: each reward term and episode-end rule, and the backend wrapper."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtrl.services.env_gateway.game_rules import GAME_END, RulesBackend, RulesEngine, term_labels, with_rules
from rtrl.services.env_gateway.profiles import GameProfile, load_profile, parse_profile

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
        ({"kind": "above", "variable": "flag", "value": 1000}, [0, 1000, 1000.5], [(False, False), (True, False)]),
        ({"kind": "below", "variable": "flag", "value": 1}, [5, 1, 0.5], [(False, False), (True, False)]),
    ],
)
def test_equality_and_threshold_rules_end_the_episode_with_their_outcome(
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


# -- what each term paid, and why an episode ended (rtrl profile check, GetStats) ----------------------------


def test_labels_name_each_terms_kind_and_variables_and_tell_twins_apart() -> None:
    assert RulesEngine(EVERY_KIND).labels == (
        "delta(x)",
        "milestone(x)",
        "faint(hp1,hp2)",
        "death_zone(x)",
        "constant",
    )
    twins = profile([{"kind": "delta", "variable": "x"}, {"kind": "delta", "variable": "x", "scale": 2.0}])
    assert term_labels(twins.rewards) == ("delta(x)", "delta(x)#1")


def test_each_term_reports_what_it_paid_and_the_terms_sum_to_the_reward() -> None:
    engine = RulesEngine(EVERY_KIND)
    engine.reset(frame(x=50), 0.0)
    progress = engine.step(frame(x=260, hp1=0), 0.1)
    assert progress.terms == pytest.approx((2.1, 2.0, -1.0, 0.0, -0.001))
    assert sum(progress.terms) == progress.reward  # added in the same order: exactly
    assert progress.variables == frame(x=260, hp1=0) and progress.ended_by == ()
    death = engine.step(frame(x=0, hp1=0), 0.2)  # a 260 px drop: a death, penalised, that ends the episode
    assert death.terms == pytest.approx((-2.6, 0.0, 0.0, -0.5, -0.001))
    assert sum(death.terms) == death.reward
    assert death.terminated and death.ended_by == ("x_teleport",)


def test_an_overflowing_sum_pays_nothing_in_any_term() -> None:
    engine = RulesEngine(EVERY_KIND)
    engine.reset(frame(x=-1.7e308), 0.0)
    outcome = engine.step(frame(x=1.7e308), 0.1)
    assert outcome.reward == 0.0 and outcome.terms == (0.0,) * 5


def test_a_rule_that_fires_without_ending_the_episode_is_an_event_not_an_end() -> None:
    rules = [
        {"kind": "x_teleport", "variable": "x", "relative_drop": 0.5, "absolute_drop_px": 100, "outcome": "none"},
        {"kind": "time_cap", "seconds": 0.2},
    ]
    engine = RulesEngine(profile(termination=rules))
    engine.reset(frame(x=500), 0.0)
    death = engine.step(frame(x=0), 0.1)
    assert death.events == ("x_teleport",) and death.ended_by == () and not death.truncated
    assert engine.step(frame(x=0), 0.2).ended_by == ("time_cap",)


def test_the_backend_sums_each_term_over_the_episode_and_keeps_why_the_last_one_ended() -> None:
    rules = profile(
        rewards=[{"kind": "delta", "variable": "x"}, {"kind": "constant", "reward": -0.5}],
        termination=[{"kind": "equals", "variable": "flag", "value": 1}],
    )
    inner = ScriptedBackend([frame(x=0), frame(x=3), frame(x=5, flag=1)])
    backend = with_rules(inner, rules)
    assert isinstance(backend, RulesBackend)
    backend.reset()
    assert backend.episode_terms == (0.0, 0.0) and backend.last_end == ()
    backend.step(1)
    assert backend.last_outcome.terms == (3.0, -0.5)
    _, reward, terminated, _ = backend.step(1)
    assert terminated and reward == 0.25 + 2.0 - 0.5  # the backend's own 0.25 is not a term
    assert backend.episode_terms == (5.0, -1.0) and backend.last_end == ("equals",)
    backend.reset()
    assert backend.episode_terms == (0.0, 0.0) and backend.last_end == ("equals",)  # kept until the next end


class EndingBackend(ScriptedBackend):
    """A backend that says its game is over on every step (a game wrapper's game over)."""

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        return super().step(action)[0], 0.0, True, False


def test_an_end_the_game_itself_reports_is_named_game() -> None:
    backend = with_rules(EndingBackend([frame(), frame()]), profile([{"kind": "constant", "reward": 1.0}]))
    assert isinstance(backend, RulesBackend)
    backend.reset()
    assert backend.step(0)[2] and backend.last_end == (GAME_END,)


# -- unknown variables: unreadable (NaN from a broken pointer chain), infinite, missing -------------------

NAN, INF = float("nan"), float("inf")
EVERY_KIND = profile(
    rewards=[
        {"kind": "delta", "variable": "x", "scale": 0.01},
        {"kind": "milestone", "variable": "x", "every_px": 100, "reward": 1.0},
        {"kind": "faint", "variables": ["hp1", "hp2"], "reward": -1.0},
        {"kind": "death_zone", "variable_x": "x", "radius_px": 50, "penalty": -0.5},
        {"kind": "constant", "reward": -0.001},
    ],
    termination=[
        {"kind": "x_teleport", "variable": "x", "absolute_drop_px": 200, "relative_drop": 0.5},
        {"kind": "stagnation", "variable": "x", "window_s": 5.0, "epsilon_px": 1.0},
        {"kind": "equals", "variable": "flag", "value": 1, "outcome": "terminated"},
        {"kind": "all_zero", "variables": ["hp1", "hp2"], "outcome": "terminated"},
        {"kind": "above", "variable": "hp1", "value": 1000},
        {"kind": "below", "variable": "hp2", "value": -1000},
        {"kind": "time_cap", "seconds": 600},
    ],
)


def test_the_shipped_linux_crash_is_gone_a_nan_x_on_the_first_frame_gives_nothing_and_fires_nothing() -> None:
    engine = RulesEngine(load_profile("supertux"))
    engine.reset({"x": NAN}, 0.0)  # the chain is unreadable from the start, as with the placeholder pointers
    outcome = engine.step({"x": NAN}, 1 / 60)
    assert (outcome.reward, outcome.terminated, outcome.truncated) == (0.0, False, False)
    assert outcome.unknown == ("x",) and outcome.timed_out == ()
    # Once readable, milestones count from the first known x, deltas from the frame after it.
    assert engine.step({"x": 300.0}, 2 / 60).reward == 0.0
    assert engine.step({"x": 900.0}, 3 / 60).reward == pytest.approx(0.01 * 600 + 1.0)


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_no_rule_or_term_uses_an_unknown_value_now_or_on_the_frame_before(bad: float) -> None:
    engine = RulesEngine(EVERY_KIND)
    engine.reset(frame(x=1000), 0.0)
    unknown = engine.step(frame(x=bad, hp1=bad, hp2=bad, flag=bad), 0.1)
    # Nothing that reads x, hp or flag fires or pays: only the constant term.
    assert (unknown.reward, unknown.terminated, unknown.truncated) == (pytest.approx(-0.001), False, False)
    assert set(unknown.unknown) == {"x", "hp1", "hp2", "flag"}
    # Back to known values far below: the delta and the teleport would compare with the unknown frame, so they
    # wait one frame; a death is only seen between two known frames.
    back = engine.step(frame(x=0), 0.2)
    assert (back.reward, back.terminated) == (pytest.approx(-0.001), False)
    assert engine.step(frame(x=0), 0.3).events == ()
    assert engine.deaths == deque()


def test_a_variable_unknown_for_the_timeout_truncates_the_episode_with_the_reason() -> None:
    engine = RulesEngine(EVERY_KIND, unknown_timeout_s=2.0)
    engine.reset(frame(x=10), 0.0)
    assert not engine.step(frame(x=NAN), 0.5).truncated
    assert not engine.step(frame(x=20), 1.0).truncated  # readable again: the run of unknowns starts over
    assert not engine.step(frame(x=NAN), 1.5).truncated
    assert not engine.step(frame(x=NAN), 3.4).truncated  # 1.9 s
    outcome = engine.step(frame(x=NAN), 3.5)  # 2.0 s
    assert outcome.truncated and not outcome.terminated
    assert outcome.events == ("unknown_variable",) and outcome.timed_out == ("x",)
    engine.reset(frame(x=NAN), 10.0)
    assert not engine.step(frame(x=NAN), 11.0).truncated  # a new episode waits the whole timeout again


def test_a_variable_missing_from_the_read_is_unknown_too() -> None:
    engine = RulesEngine(EVERY_KIND)
    engine.reset({"x": 5.0, "hp1": 1.0, "hp2": 1.0}, 0.0)  # no flag
    outcome = engine.step({"x": 6.0, "hp1": 1.0, "hp2": 1.0}, 0.1)
    assert outcome.unknown == ("flag",) and not outcome.terminated


def test_huge_values_never_raise_and_never_pay_an_infinity() -> None:
    engine = RulesEngine(EVERY_KIND)
    engine.reset(frame(x=-1.7e308), 0.0)
    outcome = engine.step(frame(x=1.7e308), 0.1)  # the difference overflows to infinity
    assert math.isfinite(outcome.reward)


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 1e308, -1e308, 5e-324]),
    st.integers(min_value=-(2**63), max_value=2**64),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries({name: finite_or_not for name in VARIABLES}), min_size=2, max_size=30))
def test_fuzz_every_rule_kind_on_any_numbers(frames: list[dict[str, float]]) -> None:
    """Whatever the memory reads give, a step returns a finite reward and never raises."""
    engine = RulesEngine(EVERY_KIND, unknown_timeout_s=0.5)
    engine.reset(frames[0], 0.0)
    for index, values in enumerate(frames[1:], start=1):
        outcome = engine.step(values, index * 0.1)
        assert math.isfinite(outcome.reward)
        assert sum(outcome.terms) == outcome.reward and all(math.isfinite(paid) for paid in outcome.terms)
        assert set(outcome.unknown) == {n for n, v in values.items() if not math.isfinite(v)}


def test_the_backend_counts_unknown_frames_and_truncations_and_says_which_variable_once(caplog) -> None:
    rules = profile(rewards=[{"kind": "delta", "variable": "x"}])
    inner = ScriptedBackend([frame(x=0), *[frame(x=NAN)] * 30])
    backend = with_rules(inner, rules, unknown_timeout_s=1.0)
    assert isinstance(backend, RulesBackend)
    backend.reset()
    with caplog.at_level("WARNING"):
        ends = [backend.step(1)[3] for _ in range(25)]
    assert ends.index(True) == 10  # step 11 at 10 Hz: 1 s after the first unknown read, at step 1
    assert backend.unknown_variable_frames == 25
    assert backend.unknown_variable_truncations == 15  # it stays unknown: every step from the eleventh on
    sentences = [r.getMessage() for r in caplog.records if "unreadable or not a finite number" in r.getMessage()]
    assert len(sentences) == 1
    assert "'x'" in sentences[0] and "module game.exe, pointers [0x10]" in sentences[0]
