"""Screen signals on synthetic frames: a textured level seen through a moving camera, templates pasted in.

The level is random coloured rectangles on a sky colour (like a platformer's scenery, and not periodic, so
every shift has one answer); a frame is the camera's window onto it, so the true camera position of every
frame is known exactly.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtrl.services.env_gateway.game_rules import RulesBackend, RulesEngine, with_rules
from rtrl.services.env_gateway.profiles import GameProfile, parse_profile
from rtrl.services.env_gateway.screen_signals import ScreenSignals, phase_correlate, spectrum

FRAME_W, FRAME_H = 320, 240
LEVEL_W, LEVEL_H = 7000, 1400
START_X, START_Y = 400, 400


def make_level(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level = np.empty((LEVEL_H, LEVEL_W, 3), np.uint8)
    level[:] = (90, 140, 220)
    for _ in range(LEVEL_W * LEVEL_H // 2000):
        x, y = rng.integers(0, LEVEL_W), rng.integers(0, LEVEL_H)
        w, h = rng.integers(4, 40), rng.integers(4, 30)
        level[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return level


LEVEL = make_level()


def view(x: float, y: float = START_Y, width: int = FRAME_W, height: int = FRAME_H) -> np.ndarray:
    """What a camera whose top left corner is at (x, y) of the level shows."""
    left, top = round(x), round(y)
    assert 0 <= left <= LEVEL_W - width and 0 <= top <= LEVEL_H - height
    return np.ascontiguousarray(LEVEL[top : top + height, left : left + width])


def profile(
    screen: dict[str, dict[str, Any]] | None = None,
    rewards: list[dict[str, Any]] = (),  # type: ignore[assignment]
    termination: list[dict[str, Any]] = (),  # type: ignore[assignment]
    folder: Path = Path("/profiles"),
) -> GameProfile:
    data = {
        "game": {"name": "screen", "backend": "desktop"},
        "window": {"title": "Game"},
        "actions": {"keys": [[], ["Right"]]},
        "screen": screen or {},
        "rewards": list(rewards),
        "termination": list(termination) or [{"kind": "time_cap", "seconds": 600}],
    }
    return parse_profile(data, folder / "screen.toml")


SCROLL = profile({"progress": {"kind": "scroll"}, "change": {"kind": "screen_change"}})


def follow(signals: ScreenSignals, positions: list[tuple[float, float]]) -> list[dict[str, float]]:
    """Resets on the first camera position and measures the others; the values of every frame."""
    values = [signals.reset(view(*positions[0]))]
    values += [signals.measure(view(*position)) for position in positions[1:]]
    return values


# -- scroll --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dx", "dy"), [(1, 0), (2, 0), (5, 0), (12, -3), (-7, 0), (0, 9), (30, 0), (-25, 14)])
def test_scroll_recovers_a_known_camera_shift_within_a_pixel(dx: int, dy: int) -> None:
    before, after = follow(ScreenSignals(SCROLL), [(START_X, START_Y), (START_X + dx, START_Y + dy)])
    assert (before["progress_x"], before["progress_y"]) == (0.0, 0.0)
    assert after["progress_x"] == pytest.approx(dx, abs=1.0)
    assert after["progress_y"] == pytest.approx(dy, abs=1.0)


@pytest.mark.parametrize(("x", "y", "dy"), [(202, 102, 18), (202, 102, 14), (206, 104, -22)])
def test_a_jump_from_rest_is_not_taken_for_the_small_peak_of_no_shift(x: int, y: int, dy: int) -> None:
    """Found by the fuzz test below: with the view at rest on its key frame, a correlation peak within the
    prediction's two shrunk pixels of no shift won over the true one, and these jumps read as 0, 4 or -8."""
    _, after = follow(ScreenSignals(SCROLL), [(x, y), (x, y + dy)])
    assert after["progress_x"] == pytest.approx(0, abs=1.0)
    assert after["progress_y"] == pytest.approx(dy, abs=1.0)


@pytest.mark.parametrize(("speed_x", "speed_y"), [(0.5, 0.0), (2.0, 0.0), (7.0, -1.0), (-3.0, 2.0), (16.0, 0.0)])
def test_scroll_accumulates_across_many_frames_without_drifting(speed_x: float, speed_y: float) -> None:
    """300 frames: comparing consecutive frames would lose about a fifth of a slow scroll; the key frame does not."""
    frames = 300
    positions = [(START_X + 1000 + speed_x * i, START_Y + speed_y * i) for i in range(frames)]
    values = follow(ScreenSignals(SCROLL), positions)
    true_x, true_y = round(positions[-1][0]) - positions[0][0], round(positions[-1][1]) - positions[0][1]
    assert not any(math.isnan(v["progress_x"]) for v in values)
    assert values[-1]["progress_x"] == pytest.approx(true_x, abs=1.0 + 0.01 * abs(true_x))
    assert values[-1]["progress_y"] == pytest.approx(true_y, abs=1.0 + 0.01 * abs(true_y))
    # Every frame on the way, not only the last, is where the camera is.
    for index in range(0, frames, 37):
        assert values[index]["progress_x"] == pytest.approx(
            round(positions[index][0]) - positions[0][0], abs=1.0 + 0.01 * abs(speed_x * index)
        )


def test_a_scene_cut_is_unknown_for_that_frame_and_not_a_jump() -> None:
    signals = ScreenSignals(SCROLL)
    positions = [(START_X + 3 * i, START_Y) for i in range(20)]
    values = follow(signals, positions)
    assert values[-1]["progress_x"] == pytest.approx(57, abs=1.0)
    # Cut to a far part of the level (a death screen, a new room): no overlap with what was shown.
    cut = signals.measure(view(4000, 900))
    assert math.isnan(cut["progress_x"]) and math.isnan(cut["progress_y"])
    # From there it measures on, from where it was before the cut.
    after = [signals.measure(view(4000 + 4 * i, 900)) for i in range(1, 11)]
    assert after[-1]["progress_x"] == pytest.approx(57 + 40, abs=1.5)
    assert after[-1]["progress_y"] == pytest.approx(0, abs=1.0)


def test_a_jump_over_max_shift_px_counts_as_a_cut() -> None:
    bounded = profile({"progress": {"kind": "scroll", "max_shift_px": 20}})
    values = follow(ScreenSignals(bounded), [(START_X, START_Y), (START_X + 10, START_Y), (START_X + 50, START_Y)])
    assert values[1]["progress_x"] == pytest.approx(10, abs=1.0)
    assert math.isnan(values[2]["progress_x"])  # 40 px in one frame: over the 20 px limit
    free = follow(ScreenSignals(SCROLL), [(START_X, START_Y), (START_X + 10, START_Y), (START_X + 50, START_Y)])
    assert free[2]["progress_x"] == pytest.approx(50, abs=1.0)  # the default limit is a quarter of 320 px


def test_a_still_or_black_screen_is_no_movement_and_no_change() -> None:
    signals = ScreenSignals(SCROLL)
    still = [signals.reset(view(START_X))] + [signals.measure(view(START_X)) for _ in range(5)]
    assert all((v["progress_x"], v["progress_y"], v["change"]) == (0.0, 0.0, 0.0) for v in still)
    black = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    signals.reset(black)
    assert [signals.measure(black)["progress_x"] for _ in range(3)] == [0.0, 0.0, 0.0]


def test_a_picture_that_correlates_with_nothing_is_unknown() -> None:
    rng = np.random.default_rng(1)
    signals = ScreenSignals(SCROLL)
    signals.reset(rng.integers(0, 256, (FRAME_H, FRAME_W, 3), dtype=np.uint8))
    noise = signals.measure(rng.integers(0, 256, (FRAME_H, FRAME_W, 3), dtype=np.uint8))
    assert math.isnan(noise["progress_x"])
    assert noise["change"] > 5  # the change itself is measured (noise averages out in the shrunk picture)


def test_a_static_score_bar_outside_the_region_does_not_hold_the_scroll_back() -> None:
    def with_hud(x: float) -> np.ndarray:
        frame = view(x)
        frame[:60] = LEVEL[:60, :FRAME_W]  # the same bar on every frame: a quarter of the picture
        return frame

    positions = [START_X + 2 * i for i in range(60)]
    below_bar = ScreenSignals(profile({"progress": {"kind": "scroll", "region": [0, 60, FRAME_W, FRAME_H - 60]}}))
    values = [below_bar.reset(with_hud(positions[0]))] + [below_bar.measure(with_hud(x)) for x in positions[1:]]
    assert values[-1]["progress_x"] == pytest.approx(118, abs=1.5)


def test_a_region_without_the_player_follows_the_scenery_where_a_bold_player_would_hold_it_back() -> None:
    """A player the camera keeps in the middle does not scroll; when it is most of the detail (here a black and
    white 80 px square), the whole frame's measure sticks to it, so the profile gives a band without it."""

    def with_player(x: float) -> np.ndarray:
        frame = view(x)
        frame[110:190, 120:200] = 255
        frame[130:170, 140:180] = 0
        return frame

    positions = [START_X + 2 * i for i in range(60)]
    above_player = ScreenSignals(profile({"progress": {"kind": "scroll", "region": [0, 0, FRAME_W, 100]}}))
    values = [above_player.reset(with_player(positions[0]))] + [
        above_player.measure(with_player(x)) for x in positions[1:]
    ]
    assert values[-1]["progress_x"] == pytest.approx(118, abs=1.5)


def test_phase_correlation_says_how_far_the_picture_moved() -> None:
    picture = cv2.cvtColor(view(START_X), cv2.COLOR_RGB2GRAY)
    moved = np.roll(picture, (3, -5), axis=(0, 1))  # 3 down, 5 left
    window = cv2.createHanningWindow((FRAME_W, FRAME_H), cv2.CV_32F)
    dx, dy, peak = phase_correlate(spectrum(picture, window), spectrum(moved, window))
    assert (dx, dy) == (pytest.approx(-5, abs=0.1), pytest.approx(3, abs=0.1))
    assert peak > 0.8


@settings(max_examples=40, deadline=None)
@given(dx=st.integers(-60, 60), dy=st.integers(-40, 40), x=st.integers(0, 4000), y=st.integers(0, 600))
def test_fuzz_any_shift_within_the_limit_is_found_within_a_pixel(dx: int, dy: int, x: int, y: int) -> None:
    _, after = follow(ScreenSignals(SCROLL), [(200 + x, 100 + y), (200 + x + dx, 100 + y + dy)])
    assert after["progress_x"] == pytest.approx(dx, abs=1.0)
    assert after["progress_y"] == pytest.approx(dy, abs=1.0)


# -- screen change -------------------------------------------------------------------------------------


def test_screen_change_sums_how_much_the_picture_changes() -> None:
    signals = ScreenSignals(SCROLL)
    moving = follow(signals, [(START_X + 2 * i, START_Y) for i in range(10)])
    totals = [v["change"] for v in moving]
    assert totals[0] == 0.0 and all(b > a for a, b in itertools.pairwise(totals))
    signals.reset(view(START_X))
    assert [signals.measure(view(START_X))["change"] for _ in range(5)] == [0.0] * 5


def test_min_change_ignores_small_changes_such_as_a_blinking_cursor() -> None:
    def cursor(on: bool) -> np.ndarray:
        frame = view(START_X)
        if on:
            frame[100:120, 100:110] = 255
        return frame

    def total(min_change: float) -> float:
        signals = ScreenSignals(profile({"change": {"kind": "screen_change", "min_change": min_change}}))
        signals.reset(cursor(False))
        return [signals.measure(cursor(i % 2 == 1))["change"] for i in range(1, 8)][-1]

    assert total(0.0) > 0.5  # 7 blinks of 200 of the 76,800 pixels
    assert total(1.0) == 0.0


class FrameBackend:
    """A pixels backend showing a scripted list of frames, one per produced frame; it reads no memory."""

    action_count = 2
    action_meanings = ("noop", "right")
    native_frame_rate_hz = 10.0
    observation_kind = "pixels"
    state_size = 0

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.position = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.position = 0
        return self.frames[0]

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        self.position += 1
        return self.frames[self.position], 0.0, False, False

    def render(self) -> np.ndarray:
        return self.frames[self.position]

    def read_variables(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


def play(rules: GameProfile, frames: list[np.ndarray]) -> list[tuple[float, bool, bool]]:
    backend = with_rules(FrameBackend(frames), rules)
    assert isinstance(backend, RulesBackend)
    backend.reset()
    return [backend.step(1)[1:] for _ in frames[1:]]


def test_stagnation_on_screen_change_fires_on_a_still_screen_and_not_on_a_moving_one() -> None:
    rules = profile(
        {"change": {"kind": "screen_change"}},
        termination=[{"kind": "stagnation", "variable": "change", "epsilon_px": 5.0, "window_s": 1.0}],
    )
    still = play(rules, [view(START_X)] * 15)  # 10 Hz: 1 s without change at step 10
    assert [truncated for _, _, truncated in still].index(True) == 9
    moving = play(rules, [view(START_X + 3 * i) for i in range(30)])
    assert not any(truncated for _, _, truncated in moving)


def test_milestones_and_deltas_on_scroll_progress_pay_for_moving_right() -> None:
    rules = profile(
        {"progress": {"kind": "scroll"}},
        rewards=[
            {"kind": "milestone", "variable": "progress_x", "every_px": 50, "reward": 1.0},
            {"kind": "delta", "variable": "progress_x", "scale": 0.01},
        ],
    )
    outcomes = play(rules, [view(START_X + 4 * i) for i in range(40)])  # 156 px to the right
    assert sum(reward for reward, _, _ in outcomes) == pytest.approx(3 + 1.56, abs=0.05)
    back = play(rules, [view(START_X - 4 * i + 200) for i in range(40)])
    assert sum(reward for reward, _, _ in back) == pytest.approx(-1.56, abs=0.05)  # no milestone backwards


def test_the_rules_backend_shows_screen_values_with_the_variables() -> None:
    rules = profile({"progress": {"kind": "scroll"}}, rewards=[{"kind": "delta", "variable": "progress_x"}])
    backend = with_rules(FrameBackend([view(START_X), view(START_X + 6)]), rules)
    backend.reset()
    assert backend.read_variables() == {"progress_x": 0.0, "progress_y": 0.0}
    backend.step(1)
    assert backend.read_variables()["progress_x"] == pytest.approx(6, abs=1.0)


def test_an_unknown_screen_value_is_never_an_unknown_variable_timeout() -> None:
    engine = RulesEngine(SCROLL, unknown_timeout_s=0.5)
    engine.reset({"progress_x": 0.0, "progress_y": 0.0, "change": 0.0}, 0.0)
    for second in range(1, 5):
        outcome = engine.step({"progress_x": math.nan, "progress_y": math.nan, "change": math.nan}, float(second))
        assert not outcome.truncated and outcome.unknown == ()


# -- templates ---------------------------------------------------------------------------------------


def game_over_image() -> np.ndarray:
    """An RGB "GAME OVER" banner: red letters on black, 120x30."""
    banner = np.zeros((30, 120, 3), np.uint8)
    cv2.putText(banner, "GAME OVER", (4, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (230, 30, 30), 2)
    return banner


BANNER = game_over_image()


def with_banner(frame: np.ndarray, x: int, y: int) -> np.ndarray:
    frame = frame.copy()
    frame[y : y + BANNER.shape[0], x : x + BANNER.shape[1]] = BANNER
    return frame


@pytest.fixture
def banner_file(tmp_path: Path) -> Path:
    path = tmp_path / "game_over.png"
    cv2.imwrite(str(path), cv2.cvtColor(BANNER, cv2.COLOR_RGB2BGR))
    return path


def template_profile(folder: Path, **fields: Any) -> GameProfile:
    rule = {"kind": "template", "image": "game_over.png", **fields}
    return profile(termination=[rule], folder=folder)


def test_a_template_is_found_where_it_is_shown_and_not_elsewhere(banner_file: Path) -> None:
    rules = template_profile(banner_file.parent, region=[100, 100, 200, 100])
    (match,) = rules.templates
    signals = ScreenSignals(rules)
    assert signals.reset(with_banner(view(START_X), 150, 130))[match.signal] > 0.99
    assert signals.measure(view(START_X))[match.signal] < 0.5  # not shown
    assert signals.measure(with_banner(view(START_X), 10, 10))[match.signal] < 0.5  # shown, outside the region
    assert signals.measure(with_banner(view(START_X + 500), 170, 160))[match.signal] > 0.99  # elsewhere in it


def test_a_downscaled_template_still_finds_its_image(banner_file: Path) -> None:
    rules = template_profile(banner_file.parent, downscale=2)
    (match,) = rules.templates
    assert match.pixels.shape == (15, 60)
    signals = ScreenSignals(rules)
    assert signals.reset(with_banner(view(START_X), 150, 130))[match.signal] > 0.8
    assert signals.measure(view(START_X))[match.signal] < 0.5


def test_a_template_rule_ends_the_episode_on_the_frame_the_image_appears(banner_file: Path) -> None:
    rules = template_profile(banner_file.parent, region=[100, 100, 200, 100])
    frames = [view(START_X + 2 * i) for i in range(6)]
    frames[4] = with_banner(frames[4], 140, 120)
    ends = [terminated for _, terminated, _ in play(rules, frames)]
    assert ends == [False, False, False, True, False]


def test_a_template_reward_is_paid_once_per_appearance(banner_file: Path) -> None:
    rules = profile(
        rewards=[{"kind": "template", "image": "game_over.png", "reward": -1.0, "threshold": 0.9}],
        folder=banner_file.parent,
    )
    shown = [False, True, True, True, False, False, True, True]
    frames = [with_banner(view(START_X), 50, 50) if on else view(START_X) for on in shown]
    rewards = [reward for reward, _, _ in play(rules, frames)]
    assert rewards == [-1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0]


def test_an_image_still_shown_when_the_episode_starts_does_not_fire(banner_file: Path) -> None:
    rules = template_profile(banner_file.parent)
    frames = [with_banner(view(START_X), 50, 50)] * 3 + [view(START_X), with_banner(view(START_X), 60, 60)]
    assert [terminated for _, terminated, _ in play(rules, frames)] == [False, False, False, True]


def test_a_region_outside_the_frame_gives_nothing_says_so_once_and_crashes_nothing(
    banner_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = profile(
        {"progress": {"kind": "scroll", "region": [200, 0, 300, 200]}, "change": {"kind": "screen_change"}},
        rewards=[{"kind": "template", "image": "game_over.png", "region": [280, 0, 160, 60], "reward": 1.0}],
        termination=[{"kind": "stagnation", "variable": "progress_x", "epsilon_px": 1, "window_s": 0.1}],
        folder=banner_file.parent,
    )
    with caplog.at_level("WARNING"):
        outcomes = play(rules, [view(START_X + i) for i in range(6)])  # 320 px wide: both regions stick out
    assert outcomes == [(0.0, False, False)] * 5
    sentences = [record.getMessage() for record in caplog.records]
    assert len(sentences) == 2
    assert "region [200, 0, 300, 200] of screen signal screen.progress does not fit in the 320x240" in sentences[0]
    assert "fix screen.progress.region in profile screen.toml" in sentences[0]
    assert "region [280, 0, 160, 60] of the template rule rewards[0] (game_over.png)" in sentences[1]


def test_a_template_larger_than_the_whole_frame_gives_nothing(banner_file: Path, caplog) -> None:
    rules = template_profile(banner_file.parent)
    small = [np.zeros((20, 100, 3), np.uint8)] * 3  # a tiny window
    with caplog.at_level("WARNING"):
        assert play(rules, small) == [(0.0, False, False)] * 2
    assert "is larger than the 100x20 captured frame" in caplog.records[0].getMessage()


@pytest.fixture(scope="module")
def every_signal(tmp_path_factory: pytest.TempPathFactory) -> GameProfile:
    """A profile with a scroll, a screen change in a region and a template rule, for frames of any size."""
    folder = tmp_path_factory.mktemp("every_signal")
    cv2.imwrite(str(folder / "game_over.png"), cv2.cvtColor(BANNER[5:25, :40], cv2.COLOR_RGB2BGR))
    return profile(
        {"progress": {"kind": "scroll", "width": 16}, "change": {"kind": "screen_change", "region": [4, 4, 30, 20]}},
        termination=[{"kind": "template", "image": "game_over.png"}],
        folder=folder,
    )


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 80), st.integers(1, 80)), min_size=2, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_fuzz_frames_of_any_size_and_content_never_raise(
    every_signal: GameProfile, shapes: list[tuple[int, int]], seed: int
) -> None:
    """A window resized to anything, even 1x1: every value is a number or unknown, and nothing raises."""
    rng = np.random.default_rng(seed)
    signals = ScreenSignals(every_signal)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for width, height in shapes]
    for values in [signals.reset(frames[0])] + [signals.measure(frame) for frame in frames[1:]]:
        assert set(values) == {"progress_x", "progress_y", "change", "termination[0]"}
        assert all(isinstance(value, float) for value in values.values())


def test_a_gap_while_the_region_does_not_fit_keeps_the_position_from_before_it() -> None:
    signals = ScreenSignals(profile({"progress": {"kind": "scroll", "region": [0, 0, 300, 200]}}))
    values = follow(signals, [(START_X + 5 * i, START_Y) for i in range(5)])
    assert values[-1]["progress_x"] == pytest.approx(20, abs=1.0)
    assert math.isnan(signals.measure(np.zeros((100, 100, 3), np.uint8))["progress_x"])  # the window shrank
    assert math.isnan(signals.measure(view(START_X + 300))["progress_x"])  # back: a new key frame, unknown
    assert signals.measure(view(START_X + 310))["progress_x"] == pytest.approx(30, abs=1.0)


def test_a_template_score_unknown_on_the_frame_before_fires_nothing_on_plain_numbers(banner_file: Path) -> None:
    rules = template_profile(banner_file.parent)
    engine = RulesEngine(rules)
    engine.reset({"termination[0]": 0.1}, 0.0)
    assert not engine.step({"termination[0]": math.nan}, 0.1).terminated
    assert not engine.step({"termination[0]": 0.95}, 0.2).terminated  # compared with an unknown frame
    assert not engine.step({"termination[0]": 0.95}, 0.3).terminated  # still shown: not a new appearance
    assert not engine.step({"termination[0]": 0.2}, 0.4).terminated
    outcome = engine.step({"termination[0]": 0.8}, 0.5)  # the default threshold, reached
    assert outcome.terminated and outcome.events == ("template",)


def test_signals_that_cost_a_large_share_of_a_frame_say_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """At 100,000 frames per second (10 us a frame) any scroll is too slow; at 60 it is not."""
    frames = [view(START_X + i) for i in range(130)]
    for rate_hz, warnings in ((60.0, 0), (100_000.0, 1)):
        caplog.clear()
        signals = ScreenSignals(SCROLL, frame_rate_hz=rate_hz)
        signals.reset(frames[0])
        with caplog.at_level("WARNING"):
            for frame in frames[1:]:
                signals.measure(frame)
        sentences = [r.getMessage() for r in caplog.records if "a frame on average" in r.getMessage()]
        assert len(sentences) == warnings
    assert "the screen signals of profile screen.toml take" in sentences[0]
    assert "of the 0.0 ms a frame lasts" in sentences[0] and "give template rules a region" in sentences[0]
