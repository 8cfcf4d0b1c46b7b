"""The PyBoy backend on real PyBoy, running a Game Boy ROM the tests assemble from the project's own source.

The ROM (tests/fixtures/gbrom/joypad_test.asm) keeps the held buttons at $C000, counts frames with
A held at $C001 and sets $C002 when START is pressed; it is built once per session by the tiny
assembler beside it, so no copyrighted ROM is involved.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np
import pytest
import redis
from file_modules import load_file
from gateway_doubles import Replica, assert_on_schedule

from rtrl.config import SettingsError
from rtrl.local_redis import LocalRedis
from rtrl.services.env_gateway.backends import make_backend
from rtrl.services.env_gateway.backends.pyboy import PyBoyBackend
from rtrl.services.env_gateway.game_rules import RulesBackend
from rtrl.services.env_gateway.profiles import ProfileError, load_profile
from rtrl.services.env_gateway.server import Gateway
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.transitions import STREAM_FIELD, decode

GBROM_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "gbrom"
# PyBoy's built-in boot ROM runs for about a second before the cartridge's code starts.
BOOT_FRAMES = 70
NOOP, PRESS_A, PRESS_START, PRESS_A_B = range(4)
COUNTER, GAME_OVER = 0xC001, 0xC002


def load_assembler() -> ModuleType:
    return load_file("gbasm", GBROM_DIR / "gbasm.py")


@pytest.fixture(scope="session")
def test_rom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = (GBROM_DIR / "joypad_test.asm").read_text(encoding="utf-8")
    rom = load_assembler().build_rom(source)
    path = tmp_path_factory.mktemp("gbrom") / "joypad_test.gb"
    path.write_bytes(rom)
    return path


def write_profile(folder: Path, sha256: str = '"any"', extra: str = "", reset: str = "") -> Path:
    path = folder / "joypad_test.toml"
    path.write_text(
        f"""
[game]
name = "joypad test"
backend = "pyboy"

[rom]
sha256 = {sha256}

[actions]
buttons = [[], ["a"], ["start"], ["a", "b"]]

[preprocess]
width = 80
height = 72
frame_stack = 2
frame_skip = 2

[variables.buttons]
address = 0xC000

[variables.counter]
address = 0xC001

[variables.game_over]
address = 0xC002

[[rewards]]
kind = "delta"
variable = "counter"
scale = 0.5

[[termination]]
kind = "equals"
variable = "game_over"
value = 1
{extra}
[reset]
wait_frames = {BOOT_FRAMES}
{reset}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def open_backend() -> Iterator[Callable[..., PyBoyBackend]]:
    backends: list[PyBoyBackend] = []

    def open_one(rom: Path, profile_path: Path) -> PyBoyBackend:
        backend = PyBoyBackend(rom, load_profile(profile_path))
        backends.append(backend)
        return backend

    yield open_one
    for backend in backends:
        backend.close()


def test_the_built_rom_has_a_valid_header(test_rom: Path) -> None:
    rom = test_rom.read_bytes()
    assert len(rom) == 0x8000 and rom[0x147] == 0 and rom[0x148] == 0
    assert rom[0x134:0x13C] == b"RTRLTEST"
    header_checksum = 0
    for byte in rom[0x134:0x14D]:
        header_checksum = (header_checksum - byte - 1) & 0xFF
    assert rom[0x14D] == header_checksum
    assert int.from_bytes(rom[0x14E:0x150], "big") == (sum(rom) - rom[0x14E] - rom[0x14F]) & 0xFFFF
    assert not any(rom[0x104:0x134])  # no Nintendo logo: PyBoy's boot ROM does not check it


def test_holding_a_counts_frames_in_ram_and_idle_frames_do_not(
    test_rom: Path, tmp_path: Path, open_backend: Callable[..., PyBoyBackend]
) -> None:
    both = "[variables.both]\naddress = 0xC000\ntype = 'u16'\n"  # buttons | counter << 8, read as one slice
    backend = open_backend(test_rom, write_profile(tmp_path, extra=both))
    first = backend.reset(seed=0)
    assert (first.shape, first.dtype) == ((144, 160, 3), np.uint8)
    assert backend.native_frame_rate_hz == pytest.approx(59.7275)
    assert backend.action_meanings == ("noop", "a", "start", "a+b")
    for _ in range(5):
        backend.step(NOOP)
    assert backend.read_variables() == {"buttons": 0.0, "counter": 0.0, "game_over": 0.0, "both": 0.0}

    frames = [backend.step(PRESS_A_B)[0] for _ in range(6)]
    held = backend.read_variables()
    assert (held["counter"], held["buttons"]) == (6.0, 0b11)  # A and B held
    assert held["both"] == 0b11 + 6 * 256
    # The program shades the screen with the counter, and every frame is the caller's own array.
    assert not np.array_equal(frames[0], frames[1])
    assert not np.shares_memory(frames[0], frames[1])

    backend.step(NOOP)  # releases A and B
    idle = backend.read_variables()
    for _ in range(5):
        backend.step(NOOP)
    assert backend.read_variables() == idle
    assert idle["buttons"] == 0.0


def test_profile_rules_reward_the_counter_and_start_ends_the_episode(test_rom: Path, tmp_path: Path) -> None:
    settings = GatewaySettings.from_env({"RTRL_ENV": f"pyboy:{test_rom}", "RTRL_PROFILE": str(write_profile(tmp_path))})
    assert (settings.obs_width, settings.obs_height, settings.frame_stack) == (80, 72, 2)
    assert settings.decision_interval_frames == 2
    backend = make_backend(settings)
    try:
        assert isinstance(backend, RulesBackend)
        backend.reset(seed=0)
        rewards = [backend.step(PRESS_A)[1] for _ in range(8)]
        assert sum(rewards) == pytest.approx(0.5 * 8)
        assert not any(backend.step(NOOP)[2] for _ in range(3))
        _frame, reward, terminated, truncated = backend.step(PRESS_START)
        assert terminated and not truncated and reward == 0.0
        assert backend.last_outcome.events == ("equals",)
    finally:
        backend.close()


def rtrl_check(profile: Path, rom: Path, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ticks and the summary of `rtrl profile check PROFILE --env pyboy:ROM --json ARGS`."""
    result = subprocess.run(
        [sys.executable, "-m", "rtrl.cli", "profile", "check", str(profile), "--env", f"pyboy:{rom}", "--json", *args],
        env={**os.environ, "RTRL_SEED": "5"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    *ticks, last = [json.loads(line) for line in result.stdout.splitlines()]
    return ticks, last["summary"]


def test_profile_check_shows_the_counter_and_what_holding_a_pays(test_rom: Path, tmp_path: Path) -> None:
    # The fallback holds A: the counter counts every frame after the reset, and delta(counter) pays half of it.
    ticks, summary = rtrl_check(write_profile(tmp_path), test_rom, "--seconds", "1", "--set", "RTRL_FALLBACK_ACTION=1")
    assert len(ticks) >= 8 and summary["episodes_ended"] == []
    for tick in ticks:
        variables = tick["variables"]
        assert variables["counter"] == tick["frame"] - 1 and variables["buttons"] == 1 and variables["game_over"] == 0
        assert tick["episode_return"] == 0.5 * variables["counter"]
        assert tick["terms"] == {"delta(counter)": tick["reward"]}
    assert [tick["reward"] for tick in ticks[1:]] == [3.0] * (len(ticks) - 1)  # 6 frames a line


def test_profile_check_with_random_actions_ends_episodes_by_their_rule_and_resets(
    test_rom: Path, tmp_path: Path
) -> None:
    # Random actions press START (one in four) within a few frames: game over, the equals rule, a reset.
    ticks, summary = rtrl_check(write_profile(tmp_path), test_rom, "--random", "--seconds", "1.5")
    ends = [end for tick in ticks for end in tick["ends"]]
    assert len(ends) >= 3 and summary["episodes_ended"][: len(ends)] == ends
    assert all((end["outcome"], end["rules"]) == ("terminated", ["equals"]) for end in ends)
    assert [end["episode"] for end in ends] == list(range(1, len(ends) + 1))
    assert sum(end["frames"] for end in ends) <= ticks[-1]["frame"]
    for tick in ticks:
        assert sum(tick["terms"].values()) == pytest.approx(tick["reward"])
    # A reset restores the counter: an episode's return is what its counted frames paid.
    assert all(end["return"] >= 0 and end["return"] % 0.5 == 0 for end in ends)


def test_screen_change_stagnation_ends_episodes_on_the_game_boys_still_screen(test_rom: Path, tmp_path: Path) -> None:
    """The ROM shades the screen with its counter: the picture changes while A is held and not otherwise."""
    extra = """
[screen.shade]
kind = "screen_change"

[[termination]]
kind = "stagnation"
variable = "shade"
epsilon_px = 0.5
window_s = 0.2
"""
    profile = write_profile(tmp_path, extra=extra)
    settings = GatewaySettings.from_env({"RTRL_ENV": f"pyboy:{test_rom}", "RTRL_PROFILE": str(profile)})
    backend = make_backend(settings)
    try:
        assert isinstance(backend, RulesBackend)
        backend.reset(seed=0)
        assert not any(backend.step(PRESS_A)[3] for _ in range(30))  # half a second of a changing picture
        assert backend.read_variables()["shade"] > 0.5
        still = [backend.step(NOOP)[3] for _ in range(20)]
        # 0.2 s of Game Boy frames (59.7 Hz) after the last change: truncated on the 12th or 13th still frame.
        assert 11 <= still.index(True) <= 12
        assert backend.last_outcome.events == ("stagnation",)
    finally:
        backend.close()


def test_reset_restores_the_state_after_the_reset_procedure(
    test_rom: Path, tmp_path: Path, open_backend: Callable[..., PyBoyBackend]
) -> None:
    backend = open_backend(test_rom, write_profile(tmp_path))
    backend.reset()
    for _ in range(7):
        backend.step(PRESS_A)
    backend.step(PRESS_START)
    assert backend.read_variables()["counter"] == 7.0 and backend.read_variables()["game_over"] == 1.0
    backend.reset()
    assert backend.read_variables() == {"buttons": 0.0, "counter": 0.0, "game_over": 0.0}


def test_a_savestate_reset_starts_every_episode_from_the_saved_counter(
    test_rom: Path, tmp_path: Path, open_backend: Callable[..., PyBoyBackend]
) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using SDL2 binaries", category=UserWarning)
        from pyboy import PyBoy

    pyboy = PyBoy(io.BytesIO(test_rom.read_bytes()), window="null", sound_emulated=False, log_level="ERROR")
    try:
        pyboy.set_emulation_speed(0)
        pyboy.tick(BOOT_FRAMES, False, False)
        pyboy.button_press("a")
        pyboy.tick(5, False, False)
        pyboy.button_release("a")
        pyboy.tick(1, False, False)
        assert pyboy.memory[COUNTER] == 5
        with (tmp_path / "five.state").open("wb") as state:
            pyboy.save_state(state)
    finally:
        pyboy.stop(save=False)

    backend = open_backend(test_rom, write_profile(tmp_path, reset='savestate = "five.state"'))
    backend.reset()
    assert backend.read_variables()["counter"] == 5.0
    for _ in range(3):
        backend.step(PRESS_A)
    assert backend.read_variables()["counter"] == 8.0
    backend.reset()
    assert backend.read_variables()["counter"] == 5.0


def test_a_rom_with_another_hash_is_refused_with_both_hashes(test_rom: Path, tmp_path: Path) -> None:
    actual = hashlib.sha256(test_rom.read_bytes()).hexdigest()
    expected = "ab" * 32
    profile = load_profile(write_profile(tmp_path, sha256=f'"{expected}"'))
    with pytest.raises(SettingsError) as raised:
        PyBoyBackend(test_rom, profile)
    message = str(raised.value)
    assert actual in message and expected in message and str(test_rom) in message
    matching = load_profile(write_profile(tmp_path, sha256=f'"{actual}"'))
    PyBoyBackend(test_rom, matching).close()


def test_a_missing_rom_is_named_with_what_to_set(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "game.gb"
    with pytest.raises(SettingsError, match=r"ROM file .*nowhere/game.gb not found; set RTRL_ENV=pyboy:"):
        PyBoyBackend(missing, load_profile(write_profile(tmp_path)))


def test_start_up_problems_of_a_profile_name_the_field(test_rom: Path, tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"reset.savestate is '.*absent.state'; expected a PyBoy state file"):
        PyBoyBackend(test_rom, load_profile(write_profile(tmp_path, reset='savestate = "absent.state"')))
    # The test ROM has no PyBoy game wrapper, so a wrapper-only variable cannot be read.
    wrapper_variable = "[variables.score]\nwrapper = 'score'\n"
    with pytest.raises(ProfileError, match=r"variables.score.wrapper is 'score'; expected PyBoy's game wrapper"):
        PyBoyBackend(test_rom, load_profile(write_profile(tmp_path, extra=wrapper_variable)))


def test_the_gateway_runs_the_rom_at_the_game_boy_rate_and_publishes_transitions(
    test_rom: Path,
    tmp_path: Path,
    local_redis: LocalRedis,
    start_replica: Callable[..., Replica],
) -> None:
    replica = start_replica(delay_s=0.002, action=PRESS_A, checkpoint_version=3)
    base = GatewaySettings.from_env({"RTRL_ENV": f"pyboy:{test_rom}", "RTRL_PROFILE": str(write_profile(tmp_path))})
    settings = replace(
        base,
        port=0,
        gateway_id="pyboy-gateway",
        inference_addresses=(replica.address,),
        redis_url=local_redis.url,
        stream="test:gateway:pyboy",
    )
    gateway = Gateway(settings)
    try:
        gateway.start()
        run_s = 2.0
        time.sleep(run_s)  # the gateway runs on its own threads; the test lets wall-clock time pass
        uptime_s, frames = gateway.clock.uptime_s(), gateway.clock.frame
    finally:
        gateway.stop()
    assert gateway.clock.failure is None
    assert gateway.clock.config.frame_rate_hz == pytest.approx(59.7275)  # the Game Boy's rate, not 60
    assert_on_schedule(gateway.clock, frames, uptime_s, rate_hz=59.7275)

    client = redis.Redis.from_url(local_redis.url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(settings.stream))
    finally:
        client.close()
    transitions = [decode(fields[STREAM_FIELD.encode()]) for _, fields in entries]
    assert transitions and all(t.observation.shape == (2, 72, 80) and t.action_count == 4 for t in transitions)
    fresh = [t for t in transitions if t.fresh]
    assert fresh and all(t.action == PRESS_A and t.policy_version == 3 for t in fresh)
    # The replica holds A, so the profile's delta reward (0.5 per counted frame) flows into transitions.
    assert sum(t.reward for t in transitions) > 0
    assert {t.reward for t in transitions} <= {0.0, 0.5, 1.0}  # 0..2 counted frames per 2-frame step


def test_wrapper_variables_read_pyboys_game_wrapper_for_the_cartridge(tmp_path: Path) -> None:
    # Titled TETRIS, the test ROM gets PyBoy's Tetris wrapper; a savestate keeps the wrapper's own
    # start_game (which waits for Tetris's title screen) out of the reset.
    source = (GBROM_DIR / "joypad_test.asm").read_text(encoding="utf-8")
    rom = tmp_path / "titled.gb"
    rom.write_bytes(load_assembler().build_rom(source, title="TETRIS"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using SDL2 binaries", category=UserWarning)
        from pyboy import PyBoy

    pyboy = PyBoy(io.BytesIO(rom.read_bytes()), window="null", sound_emulated=False, log_level="ERROR")
    try:
        pyboy.tick(BOOT_FRAMES, False, False)
        with (tmp_path / "booted.state").open("wb") as state:
            pyboy.save_state(state)
    finally:
        pyboy.stop(save=False)
    extra = "[variables.score]\nwrapper = 'score'\n[variables.over]\nwrapper = 'game_over'\n"
    profile = load_profile(write_profile(tmp_path, extra=extra, reset='savestate = "booted.state"'))
    backend = PyBoyBackend(rom, profile)
    try:
        backend.reset()
        backend.step(PRESS_A)
        values = backend.read_variables()
        assert (values["score"], values["over"], values["counter"]) == (0.0, 0.0, 1.0)
        assert backend.cartridge_title == "TETRIS"
    finally:
        backend.close()
