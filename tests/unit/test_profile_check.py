"""`rtrl profile check`'s lines and summary on plain values, and how it picks the game (no game runs here: the
checks against the box game and the test ROM are in tests/integration/env_gateway)."""

from __future__ import annotations

import json

import pytest

from rtrl.profile_check import (
    CheckError,
    CheckOptions,
    EpisodeEnd,
    Tick,
    describe_summary,
    in_check_terms,
    resolve_env,
)
from rtrl.services.env_gateway.profiles import ProfileError


def tick(**changes: object) -> Tick:
    values: dict[str, object] = {
        "t_s": 1.2345,
        "frame": 72,
        "episode": 2,
        "episode_frames": 30,
        "variables": {"x": 120.5, "score": 12.0, "broken": None},
        "terms": {"milestone(x)": 1.0, "constant": -0.06},
        "reward": 0.94,
        "episode_return": 3.5,
        "ends": [],
    }
    values.update(changes)
    return Tick(**values)  # type: ignore[arg-type]


def test_a_line_shows_every_variable_unknown_as_a_question_mark_each_term_and_the_sums() -> None:
    assert tick().describe() == (
        "   1.23 s  frame 72  episode 2 | x=120.5 score=12 broken=? | milestone(x) +1 constant -0.06 "
        "| reward +0.94  return +3.5"
    )


def test_an_episode_end_is_named_with_its_rules_on_the_line_of_its_tick() -> None:
    end = EpisodeEnd(1, "terminated", ("x_teleport",), 412, 12.0)
    line = tick(ends=[end], episode_return=0.0).describe()
    assert line.endswith("| END episode 1 terminated by x_teleport after 412 frames, return +12")


def test_a_json_line_has_stable_keys_and_null_for_an_unknown_variable() -> None:
    end = EpisodeEnd(1, "truncated", ("time_cap",), 60, -0.5)
    decoded = json.loads(json.dumps(tick(ends=[end]).to_json()))
    assert list(decoded) == [
        "t_s",
        "frame",
        "episode",
        "episode_frames",
        "variables",
        "terms",
        "reward",
        "episode_return",
        "ends",
    ]
    assert decoded["variables"]["broken"] is None and decoded["t_s"] == 1.234
    assert decoded["ends"] == [
        {"episode": 1, "outcome": "truncated", "rules": ["time_cap"], "frames": 60, "return": -0.5}
    ]


def test_the_summary_is_one_sentence_with_the_returns_and_the_unknown_variables() -> None:
    summary = {
        "seconds": 12.34,
        "frames": 740,
        "frame_rate_hz": 59.97,
        "episodes_ended": [{"return": 12.0}, {"return": -1.5}],
        "episode": 3,
        "episode_running": True,
        "episode_frames": 120,
        "episode_return": 1.5,
        "unknown_variable_frames": {"broken": 740},
    }
    assert describe_summary(summary) == (
        "rtrl profile check: 12.3 s, 740 frames at 60.0 fps; 2 episodes ended (returns +12, -1.5); "
        "episode 3 at +1.5 after 120 frames; unknown: broken on 740 frames."
    )
    calm = {**summary, "episodes_ended": [], "episode_running": False, "unknown_variable_frames": {}}
    assert describe_summary(calm).endswith("740 frames at 60.0 fps; every variable known on every frame.")


def test_a_desktop_profile_is_checked_on_its_own_window_and_a_pyboy_one_needs_its_rom() -> None:
    assert resolve_env(CheckOptions("supertux"), {}) == "desktop:supertux"
    assert resolve_env(CheckOptions("tetris"), {"RTRL_ENV": "pyboy:/roms/tetris.gb"}) == "pyboy:/roms/tetris.gb"
    assert resolve_env(CheckOptions("tetris", env="pyboy:/roms/t.gb"), {}) == "pyboy:/roms/t.gb"
    with pytest.raises(CheckError, match=r"tetris.toml is for a Game Boy game.*pass --env pyboy:<path to the ROM>"):
        resolve_env(CheckOptions("tetris"), {"RTRL_ENV": "ale:Pong"})
    with pytest.raises(CheckError, match="--env gym:CartPole-v1 is not a game played with a profile"):
        resolve_env(CheckOptions("supertux", env="gym:CartPole-v1"), {})
    with pytest.raises(ProfileError, match="profile 'nothing' not found"):
        resolve_env(CheckOptions("nothing"), {})


def test_settings_messages_speak_of_the_commands_arguments() -> None:
    message = "profile 'x' not found (looked for x.toml); set RTRL_PROFILE to a shipped profile (tetris)."
    assert in_check_terms(message).endswith("; give PROFILE as a shipped profile (tetris).")
    assert in_check_terms("RTRL_ENV='pyboy:a.gb' needs a ROM") == "--env 'pyboy:a.gb' needs a ROM"
