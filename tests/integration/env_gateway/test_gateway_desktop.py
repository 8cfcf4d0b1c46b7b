"""The desktop backend on a real X server: Xvfb, a real game process written in C, real XTest and /proc.

The game (tests/fixtures/desktop_game/boxgame.c, built here with gcc) moves a box with Right/Left,
keeps its state on the heap behind a static global, and prints its own state whenever it changes.
The tests drive it through the backend (and once through the whole Gateway with test replicas, and
`rtrl profile check` as a process) and compare what the backend saw, captured and read with what the
game itself reports and with the X server's own key state (XQueryKeymap).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import pytest
import redis
from desktop_game import boxgame
from gateway_doubles import Replica
from Xlib import XK
from Xlib import display as xdisplay

from rtrl.local_redis import LocalRedis
from rtrl.services.env_gateway.backends.desktop import DesktopBackend, MemoryAccessError, WindowNotFoundError
from rtrl.services.env_gateway.backends.keyguard import GuardianError, KeyGuard, KeyInjector
from rtrl.services.env_gateway.game_rules import RulesBackend, with_rules
from rtrl.services.env_gateway.metrics import GatewayCollector
from rtrl.services.env_gateway.profiles import load_profile
from rtrl.services.env_gateway.server import Gateway
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.transitions import STREAM_FIELD, decode

REPO_ROOT = Path(__file__).resolve().parents[3]
# Generous bounds for things that take a few frames: the machine may be busy.
WAIT_S = 10.0
GAME_WIDTH, GAME_HEIGHT, BOX = 160, 120, 16
BOX_ROW = GAME_HEIGHT - 20 - BOX // 2  # a pixel row through the middle of the box
NOOP, RIGHT, LEFT = 0, 1, 2
# The game's state fields that write_profile's profile reads.
READ_BY_THE_PROFILE = ("x", "score", "coins", "keys", "paused")


# -- fixtures: the X server, the game binary, a running game ----------------------------------------


@dataclass
class Game:
    """A running boxgame and everything it has reported."""

    process: subprocess.Popen[str]
    title: str
    ready: dict[str, int]
    states: list[dict[str, float]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def pid(self) -> int:
        return self.process.pid

    def latest(self) -> dict[str, float]:
        with self.changed:
            return dict(self.states[-1])

    def wait_for(self, condition: Callable[[dict[str, float]], bool], what: str) -> dict[str, float]:
        """Waits until the game's latest report satisfies `condition`; fails naming `what` otherwise."""
        deadline = time.monotonic() + WAIT_S
        with self.changed:
            while not condition(self.states[-1]):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"the game never reported {what}; last report {self.states[-1]}"
                self.changed.wait(remaining)
            return dict(self.states[-1])

    def read_reports(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("state "):
                values = dict(pair.split("=") for pair in line.split()[1:])
                state = {
                    key: float(int(value, 16) if value.startswith("0x") else float(value))
                    for key, value in values.items()
                }
                # The game prints its BCD counter in hex: its digits are the decimal value.
                state["coins"] = float(values["coins_bcd"][2:])
                with self.changed:
                    self.states.append(state)
                    self.changed.notify_all()


@contextmanager
def running_game(x_display: str, game_binary: Path, title: str, *, scroll: bool = False) -> Iterator[Game]:
    process, ready = boxgame.launch(game_binary, x_display, title, scroll=scroll)
    try:
        game = Game(process, title, ready)
        threading.Thread(target=game.read_reports, daemon=True).start()
        game.wait_for(lambda state: True, "its first state")
        yield game
    finally:
        process.terminate()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def game(x_display: str, game_binary: Path, request: pytest.FixtureRequest) -> Iterator[Game]:
    with running_game(x_display, game_binary, f"rtrl box game {request.node.name}") as game:
        yield game


@pytest.fixture
def scrolling_game(x_display: str, game_binary: Path, request: pytest.FixtureRequest) -> Iterator[Game]:
    """The box game as a side-scroller: a long level of scenery, the camera following the box."""
    with running_game(x_display, game_binary, f"rtrl box game {request.node.name}", scroll=True) as game:
        yield game


@pytest.fixture
def keyboard(x_display: str) -> Iterator[Callable[[str], bool]]:
    """Asks the X server (XQueryKeymap) whether a key is down, independently of the backend."""
    connection = xdisplay.Display(x_display)

    def is_down(keysym_name: str) -> bool:
        keycode = connection.keysym_to_keycode(XK.string_to_keysym(keysym_name))
        keymap = connection.query_keymap()
        return bool(keymap[keycode // 8] >> (keycode % 8) & 1)

    yield is_down
    connection.close()


@pytest.fixture
def desktop_env(x_display: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", x_display)


def static_offset_from_symbols(binary: Path, symbol: str) -> int:
    """The symbol's offset from the module base, as `nm` reads it from the binary (how a user finds it)."""
    listing = subprocess.run(["nm", str(binary)], capture_output=True, text=True, check=True).stdout
    match = re.search(rf"^([0-9a-f]+) [bBdD] {symbol}$", listing, re.MULTILINE)
    assert match, f"{symbol} not in the symbol table of {binary}"
    return int(match.group(1), 16)


def write_profile(path: Path, game: Game, *, title: str | None = None, extra: str = "") -> Path:
    """A profile for the running game, its variables read through its pointer chain."""
    path.write_text(boxgame.profile_toml(game.ready, title or game.title, extra=extra))
    return path


@pytest.fixture
def open_backend(desktop_env: None) -> Iterator[Callable[[Path], DesktopBackend]]:
    backends: list[DesktopBackend] = []

    def open_(profile_path: Path) -> DesktopBackend:
        backend = DesktopBackend(load_profile(profile_path))
        backends.append(backend)
        return backend

    yield open_
    for backend in backends:
        backend.close()


def broken_chain(game: Game) -> str:
    """A variable "broken" whose chain follows x's float bits as if they were a pointer: an unmapped address."""
    r = game.ready
    return f"""
[variables.broken]
module = "boxgame"
pointers = [0x{r["world"]:x}, 0x{r["world.player"]:x}, 0x{r["player.x"]:x}, 0x0]
type = "u8"
"""


def box_left(frame: np.ndarray) -> int:
    """Left edge of the white box in a captured RGB frame."""
    white = np.flatnonzero((frame[BOX_ROW] == 255).all(axis=1))
    assert white.size == BOX, f"expected one {BOX}-px box on row {BOX_ROW}, found {white.size} white pixels"
    return int(white[0])


def frame_period() -> None:
    time.sleep(1 / 60)


# -- the tests ----------------------------------------------------------------------------------------


def test_the_profiles_pointer_chain_starts_at_the_static_global_nm_finds(game: Game, game_binary: Path) -> None:
    assert static_offset_from_symbols(game_binary, "g_world") == game.ready["world"]


def test_injected_keys_move_the_box_in_captured_frames_and_memory_reads_match_the_games_report(
    game: Game, open_backend: Callable[[Path], DesktopBackend], tmp_path: Path
) -> None:
    backend = open_backend(write_profile(tmp_path / "box.toml", game))
    first = backend.reset()
    assert first.shape == (GAME_HEIGHT, GAME_WIDTH, 3) and first.dtype == np.uint8
    assert box_left(first) == 0
    assert backend.action_meanings == ("noop", "Right", "Left")
    assert backend.native_frame_rate_hz == 60.0

    lefts = []
    for _ in range(20):
        frame, reward, terminated, truncated = backend.step(RIGHT)
        lefts.append(box_left(frame))
        frame_period()
    assert (reward, terminated, truncated) == (0.0, False, False)  # rewards are the rules' business
    assert lefts[-1] > lefts[0] and lefts == sorted(lefts)  # the injected key moves what we capture
    moving = backend.read_variables()
    assert moving["keys"] == 2  # the game itself sees Right held

    backend.step(NOOP)
    at_rest = game.wait_for(lambda state: state["keys"] == 0, "the key released")
    frame, *_ = backend.step(NOOP)
    values = backend.read_variables()
    assert values == {name: at_rest[name] for name in ("x", "score", "coins", "keys", "paused")}
    assert values["x"] > 20 and values["score"] == values["x"] // 10 and values["coins"] == values["score"] // 2
    assert box_left(frame) == int(values["x"])  # the picture and the memory agree
    assert backend.failed_reads == 0


def test_a_fallback_step_releases_every_held_key(
    game: Game, open_backend: Callable[[Path], DesktopBackend], keyboard: Callable[[str], bool], tmp_path: Path
) -> None:
    backend = open_backend(write_profile(tmp_path / "box.toml", game))
    backend.reset()
    backend.step(LEFT)
    backend.step(RIGHT)  # Left is let go as Right is pressed
    game.wait_for(lambda state: state["keys"] == 2, "Right alone held")
    assert keyboard("Right") and not keyboard("Left")
    assert backend.keys.held == {"Right"}

    backend.step(NOOP)  # the profile's fallback action
    game.wait_for(lambda state: state["keys"] == 0, "every key released")
    assert not keyboard("Right") and backend.keys.held == frozenset()


def test_closing_the_backend_releases_held_keys_and_stops_the_guardian(
    game: Game, open_backend: Callable[[Path], DesktopBackend], keyboard: Callable[[str], bool], tmp_path: Path
) -> None:
    backend = open_backend(write_profile(tmp_path / "box.toml", game))
    backend.reset()
    backend.step(RIGHT)
    game.wait_for(lambda state: state["keys"] == 2, "Right held")
    guardian = backend.keys.guardian_pid
    assert guardian is not None and process_running(guardian)
    backend.close()
    game.wait_for(lambda state: state["keys"] == 0, "the key released")
    assert not keyboard("Right") and not process_running(guardian)


def process_running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited, it is only not reaped yet


class UnreachableDisplayKeys:
    """An injector whose guardian is sent to an X display that does not exist."""

    platform = "linux"

    def guardian_options(self) -> dict[str, str]:
        return {"display": ":4999"}

    def close(self) -> None:
        pass


def test_a_guardian_that_cannot_reach_the_input_system_stops_the_start() -> None:
    with pytest.raises(GuardianError, match="could not reach the input system"):
        KeyGuard(cast(KeyInjector, UnreachableDisplayKeys()), ["Right"])


GATEWAY_SIDE = """
import sys, time
from rtrl.services.env_gateway.backends.desktop import DesktopBackend
from rtrl.services.env_gateway.profiles import load_profile
backend = DesktopBackend(load_profile(sys.argv[1]))
backend.reset()
backend.step(1)
print(backend.keys.guardian_pid, flush=True)
time.sleep(60)
"""


def test_sigkill_of_the_gateway_process_leaves_no_key_held(
    game: Game, x_display: str, keyboard: Callable[[str], bool], tmp_path: Path
) -> None:
    profile = write_profile(tmp_path / "box.toml", game)
    gateway_side = subprocess.Popen(
        [sys.executable, "-c", GATEWAY_SIDE, str(profile)],
        env={**os.environ, "DISPLAY": x_display},
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert gateway_side.stdout is not None
        guardian = int(gateway_side.stdout.readline())
        game.wait_for(lambda state: state["keys"] == 2, "Right held by the gateway process")
        assert keyboard("Right")
        gateway_side.send_signal(signal.SIGKILL)
        gateway_side.wait()
        game.wait_for(lambda state: state["keys"] == 0, "Right released after the gateway was killed")
        assert not keyboard("Right")
        deadline = time.monotonic() + WAIT_S
        while process_running(guardian) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_running(guardian), "the guardian should exit once it has released the keys"
    finally:
        if gateway_side.poll() is None:
            gateway_side.kill()
            gateway_side.wait()
        if gateway_side.stdout is not None:
            gateway_side.stdout.close()


def test_the_pause_key_and_the_reset_procedure_reach_the_game(
    game: Game, open_backend: Callable[[Path], DesktopBackend], tmp_path: Path
) -> None:
    # The reset procedure holds Right for 6 frames, waits 2, and lets everything go.
    extra = '\n[reset]\nkeys = [["Right"], 2]\npress_frames = 6\n'
    backend = open_backend(write_profile(tmp_path / "box.toml", game, extra=extra))
    backend.reset()
    after_reset = game.wait_for(lambda state: state["keys"] == 0 and state["x"] > 0, "the reset's Right press")
    with game.changed:
        assert any(state["keys"] == 2 for state in game.states)  # Right was held, then let go

    backend.toggle_pause()
    game.wait_for(lambda state: state["paused"] == 1, "the pause")
    backend.step(RIGHT)
    game.wait_for(lambda state: state["keys"] == 2, "Right held while paused")
    for _ in range(6):
        frame_period()
        backend.step(RIGHT)
    assert game.latest()["x"] == after_reset["x"]  # paused: Right does nothing
    backend.step(NOOP)
    backend.toggle_pause()
    game.wait_for(lambda state: state["paused"] == 0, "the game resumed")
    assert not backend.paused


def test_a_broken_pointer_chain_keeps_the_last_value_and_counts_the_failure(
    game: Game, open_backend: Callable[[Path], DesktopBackend], tmp_path: Path
) -> None:
    backend = open_backend(write_profile(tmp_path / "box.toml", game, extra=broken_chain(game)))
    backend.reset()
    backend.step(NOOP)
    values = backend.read_variables()
    assert np.isnan(values["broken"]) and values["score"] == 0
    assert backend.failed_reads == 2


def test_a_missing_window_says_which_title_and_to_start_the_game(
    game: Game, open_backend: Callable[[Path], DesktopBackend], x_display: str, tmp_path: Path
) -> None:
    with pytest.raises(WindowNotFoundError) as raised:
        open_backend(write_profile(tmp_path / "box.toml", game, title="No Such Game"))
    message = str(raised.value)
    assert "'No Such Game'" in message and "start the game" in message and x_display in message
    assert repr(game.title) in message  # it lists the windows it saw


def test_a_missing_module_is_named_with_the_modules_present(
    game: Game, open_backend: Callable[[Path], DesktopBackend], tmp_path: Path
) -> None:
    profile = write_profile(tmp_path / "box.toml", game)
    profile.write_text(profile.read_text().replace('module = "boxgame"', 'module = "libgame.so"', 1))
    with pytest.raises(MemoryAccessError, match=r"no module 'libgame.so'.*boxgame"):
        open_backend(profile)


UNPRIVILEGED_READ = """
import os, sys
from rtrl.services.env_gateway.backends.desktop import MemoryAccessError
from rtrl.services.env_gateway.backends.desktop_linux import ProcMemory
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # nobody, after the imports (root's interpreter may live where nobody cannot read)
try:
    ProcMemory(int(sys.argv[1]))
except MemoryAccessError as error:
    print(error)
"""


def test_unreadable_memory_names_the_pid_and_the_permission_needed(game: Game) -> None:
    # A process of another user may not read the game's memory: as root the reader drops to nobody;
    # otherwise it tries init's memory, which belongs to root.
    target = game.pid if os.geteuid() == 0 else 1
    result = subprocess.run(
        [sys.executable, "-c", UNPRIVILEGED_READ, str(target)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    message = result.stdout
    assert f"process {target}" in message and "permission denied" in message
    assert "ptrace_scope" in message and "CAP_SYS_PTRACE" in message and "same user" in message


# -- rtrl profile check ------------------------------------------------------------------------------

CHECK_REWARDS = """
[[rewards]]
kind = "milestone"
variable = "x"
every_px = 10

[[rewards]]
kind = "delta"
variable = "score"
scale = 0.5

[[rewards]]
kind = "constant"
reward = -0.01
"""


def rtrl_check(*args: str, display: str | None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "DISPLAY"}
    if display is not None:
        env["DISPLAY"] = display
    return subprocess.run(
        [sys.executable, "-m", "rtrl.cli", "profile", "check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_lines(result: subprocess.CompletedProcess[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The tick objects and the summary printed by `rtrl profile check --json`."""
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert "summary" in lines[-1] and not any("summary" in line for line in lines[:-1])
    return lines[:-1], lines[-1]["summary"]


def test_profile_check_prints_what_the_game_reports_and_terms_that_sum_to_the_reward(
    game: Game, x_display: str, tmp_path: Path
) -> None:
    profile = write_profile(tmp_path / "box.toml", game, extra=CHECK_REWARDS)
    result = rtrl_check(str(profile), "--json", "--random", "--seconds", "2", "--set", "RTRL_SEED=3", display=x_display)
    ticks, summary = json_lines(result)
    assert 15 <= len(ticks) <= 21  # 10 a second for 2 s (6 frames each at 60 fps), on a busy machine fewer
    assert [tick["frame"] for tick in ticks] == [6 * (i + 1) for i in range(len(ticks))]
    with game.changed:
        reported = [tuple(state[name] for name in READ_BY_THE_PROFILE) for state in game.states]
    # The random actions reached the game: it saw keys held and the box moved.
    assert any(keys for _, _, _, keys, _ in reported) and len({x for x, *_ in reported}) > 1
    read = [tuple(tick["variables"][name] for name in READ_BY_THE_PROFILE) for tick in ticks]
    # Each read is a state the game printed (reads race the game's own update once in a while: most, not all).
    assert sum(values in reported for values in read) >= 0.8 * len(read), (read, reported)
    for index, name in enumerate(READ_BY_THE_PROFILE):
        assert {values[index] for values in read} <= {state[index] for state in reported}, name
    for tick in ticks:
        assert list(tick["terms"]) == ["milestone(x)", "delta(score)", "constant"]
        assert sum(tick["terms"].values()) == pytest.approx(tick["reward"])
        assert tick["ends"] == []
    # The returns add up: what the ticks paid is the running episode's return (no end in 2 s without rules).
    assert ticks[-1]["episode_return"] == pytest.approx(sum(tick["reward"] for tick in ticks))
    assert summary["episodes_ended"] == [] and summary["episode"] == 1 and summary["frames"] >= ticks[-1]["frame"]
    assert summary["unknown_variable_frames"] == {}
    game.wait_for(lambda state: state["keys"] == 0, "the check's keys released when it ended")


def test_profile_check_shows_a_broken_chain_as_unknown_and_goes_on_through_its_truncations(
    game: Game, x_display: str, tmp_path: Path
) -> None:
    profile = write_profile(tmp_path / "box.toml", game, extra=broken_chain(game) + CHECK_REWARDS)
    timeout = ("--set", "RTRL_UNKNOWN_VARIABLE_TIMEOUT_S=0.5")
    ticks, summary = json_lines(rtrl_check(str(profile), "--json", "--seconds", "2", *timeout, display=x_display))
    assert ticks and all(tick["variables"]["broken"] is None for tick in ticks)
    assert all(tick["variables"]["x"] is not None for tick in ticks)
    ends = [end for tick in ticks for end in tick["ends"]]
    assert len(ends) >= 2 and {(end["outcome"], tuple(end["rules"])) for end in ends} == {
        ("truncated", ("unknown_variable",))
    }
    assert [end["episode"] for end in ends] == list(range(1, len(ends) + 1))
    assert ticks[-1]["frame"] > 90 and summary["unknown_variable_frames"]["broken"] > 90  # the check ran on
    # The same in words: ? for the variable, each end with its rule.
    result = rtrl_check(str(profile), "--seconds", "1.2", "--hz", "5", *timeout, display=x_display)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(" broken=? |" in line for line in lines[:-1]), lines
    assert any("END episode 1 truncated by unknown_variable after" in line for line in lines)
    assert lines[-1].startswith("rtrl profile check: ") and "unknown: broken on" in lines[-1]
    assert "variable 'broken' of profile box.toml" in result.stderr  # the gateway's own warning, once


def test_ctrl_c_ends_the_check_with_a_summary_and_no_key_held(
    game: Game, x_display: str, keyboard: Callable[[str], bool], tmp_path: Path
) -> None:
    profile = write_profile(tmp_path / "box.toml", game, extra=CHECK_REWARDS)
    check = subprocess.Popen(
        [sys.executable, "-m", "rtrl.cli", "profile", "check", str(profile), "--random"],
        env={**os.environ, "DISPLAY": x_display, "RTRL_SEED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert check.stdout is not None
        first = [check.stdout.readline() for _ in range(5)]
        assert all("| x=" in line for line in first), first
        game.wait_for(lambda state: state["keys"] != 0, "a random action holding a key")
        check.send_signal(signal.SIGINT)
        out, err = check.communicate(timeout=WAIT_S)
    finally:
        if check.poll() is None:
            check.kill()
            check.communicate()
    assert check.returncode == 0, err
    summary = out.splitlines()[-1]
    assert summary.startswith("rtrl profile check: ") and "frames at" in summary and "Traceback" not in err
    game.wait_for(lambda state: state["keys"] == 0, "every key released after Ctrl-C")
    assert not keyboard("Right") and not keyboard("Left")


def test_profile_check_refuses_bad_input_with_a_sentence_and_exit_code_2(
    game: Game, x_display: str, tmp_path: Path
) -> None:
    profile = write_profile(tmp_path / "box.toml", game)
    cases = [
        (write_profile(tmp_path / "gone.toml", game, title="No Such Game"), x_display, "start the game first"),
        (profile, None, "DISPLAY is not set"),
        (tmp_path / "missing.toml", x_display, "not found"),
    ]
    for path, display, sentence in cases:
        result = rtrl_check(str(path), "--seconds", "1", display=display)
        assert result.returncode == 2 and sentence in result.stderr, (path, display, result.stderr)
        assert result.stderr.startswith("rtrl profile check: ") and "Traceback" not in result.stderr
        assert result.stdout == ""
    result = rtrl_check("tetris", display=x_display)
    assert result.returncode == 2 and "pass --env pyboy:<path to the ROM>" in result.stderr


CHECK_AS_NOBODY = """
import os, sys
# Everything the check imports, imported while root: root's interpreter may live where nobody cannot read.
import ctypes.util, mss.linux, mss.linux.xlib
import rtrl.cli, rtrl.profile_check
import rtrl.services.env_gateway.backends.desktop, rtrl.services.env_gateway.backends.desktop_linux
import rtrl.services.env_gateway.game_rules, rtrl.services.env_gateway.settings
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(rtrl.cli.main(["profile", "check", *sys.argv[1:]]))
"""


def test_profile_check_as_another_user_says_which_permission_reading_memory_needs(game: Game, x_display: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the check as nobody against a game of another user")
    with tempfile.TemporaryDirectory() as folder:  # pytest's tmp_path is root's alone
        Path(folder).chmod(0o755)
        profile = write_profile(Path(folder) / "box.toml", game)
        profile.chmod(0o644)
        result = subprocess.run(
            [sys.executable, "-c", CHECK_AS_NOBODY, str(profile), "--seconds", "1"],
            env={**os.environ, "DISPLAY": x_display},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"rtrl profile check: cannot read the memory of process {game.pid}")
    assert "ptrace_scope" in result.stderr and "same user" in result.stderr


def test_the_gateway_plays_the_game_through_replicas_and_its_fallback_releases_the_keys(
    game: Game,
    desktop_env: None,
    local_redis: LocalRedis,
    start_replica: Callable[..., Replica],
    keyboard: Callable[[str], bool],
    tmp_path: Path,
) -> None:
    extra = '\n[[rewards]]\nkind = "milestone"\nvariable = "x"\nevery_px = 10\nreward = 1.0\n'
    profile = write_profile(tmp_path / "box.toml", game, extra=extra)
    replica = start_replica(delay_s=0.002, action=RIGHT, checkpoint_version=3)
    settings = GatewaySettings.from_env(
        {
            "RTRL_ENV": f"desktop:{profile}",
            "RTRL_GATEWAY_PORT": "0",
            "RTRL_GATEWAY_ID": "desktop-test",
            "RTRL_INFERENCE_ADDRESSES": replica.address,
            "RTRL_REDIS_URL": local_redis.url,
            "RTRL_STREAM": "test:desktop",
        }
    )
    gateway = Gateway(settings)
    try:
        gateway.start()
        game.wait_for(lambda state: state["keys"] == 2 and state["x"] >= 40, "the replicas' Right moving the box")
        replica.server.stop(None).wait()  # no more fresh actions: every step falls back to noop
        resting = game.wait_for(lambda state: state["keys"] == 0, "the fallback releasing Right")
        assert not keyboard("Right")
        time.sleep(0.1)  # a few frames read at rest
        # GetStats shows the variables the game reports and what the milestones paid (the dashboard's table).
        stats = gateway.stats()
        assert {v.name: v.value for v in stats.variables} == {name: resting[name] for name in READ_BY_THE_PROFILE}
        assert all(v.known for v in stats.variables)
        [milestones] = stats.reward_terms
        assert milestones.label == "milestone(x)" and milestones.last_frame_reward == 0.0
        assert milestones.episode_reward == resting["x"] // 10  # from x = 0 at the reset
        assert list(stats.last_episode_end_rules) == []
    finally:
        gateway.stop()

    client = redis.Redis.from_url(local_redis.url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange("test:desktop"))
    finally:
        client.close()
    transitions = [decode(fields[STREAM_FIELD.encode()]) for _, fields in entries]
    assert transitions and all(t.observation.shape == (4, 64, 64) for t in transitions)  # the profile's shape
    fresh = [t for t in transitions if t.fresh]
    assert fresh and all(t.action == RIGHT and t.policy_version == 3 for t in fresh)
    assert sum(t.reward for t in transitions) >= 4  # milestones every 10 px, from the x read in memory
    assert replica.servicer.observation_shapes == {(4, 64, 64)}


def test_an_unreadable_variable_never_stops_the_clock_and_ends_episodes_as_truncated(
    game: Game,
    desktop_env: None,
    local_redis: LocalRedis,
    start_replica: Callable[..., Replica],
    tmp_path: Path,
) -> None:
    """The crash users met with a placeholder chain: a milestone on a NaN x stopped the clock at frame 1."""
    extra = (
        broken_chain(game)
        + """
[[rewards]]
kind = "milestone"
variable = "broken"
every_px = 10
reward = 1.0

[[termination]]
kind = "x_teleport"
variable = "broken"
relative_drop = 0.5
absolute_drop_px = 10
"""
    )
    profile = write_profile(tmp_path / "box.toml", game, extra=extra)
    replica = start_replica(delay_s=0.002, action=RIGHT, checkpoint_version=1)
    settings = GatewaySettings.from_env(
        {
            "RTRL_ENV": f"desktop:{profile}",
            "RTRL_GATEWAY_PORT": "0",
            "RTRL_INFERENCE_ADDRESSES": replica.address,
            "RTRL_REDIS_URL": local_redis.url,
            "RTRL_STREAM": "test:desktop-unknown",
            "RTRL_UNKNOWN_VARIABLE_TIMEOUT_S": "0.5",
        }
    )
    gateway = Gateway(settings)
    try:
        gateway.start()
        deadline = time.monotonic() + WAIT_S
        while (stats := gateway.stats()).unknown_variable_truncations < 2:
            assert time.monotonic() < deadline, f"no truncations by an unknown variable: {stats}"
            time.sleep(0.1)
        later = gateway.stats()
        assert later.frames > 60 and later.unknown_variable_frames > 30  # the clock ticks on
        assert later.episodes >= 2 and later.last_episode_return == 0.0  # ended, and nothing paid for garbage
        assert list(later.last_episode_end_rules) == ["unknown_variable"]
        shown = {v.name: v.known for v in later.variables}
        assert shown["broken"] is False and shown["x"] is True
        assert [(t.label, t.episode_reward) for t in later.reward_terms] == [("milestone(broken)", 0.0)]
        scraped = {
            sample.name: sample.value for family in GatewayCollector(gateway).collect() for sample in family.samples
        }
        assert scraped["rtrl_gateway_unknown_variable_truncations_total"] >= later.unknown_variable_truncations
    finally:
        gateway.stop()


# -- screen signals: rewards from the picture of a game whose memory is not read ---------------------------

SCROLL_RULES = """
[screen.progress]
kind = "scroll"

[screen.moving]
kind = "screen_change"

[[rewards]]
kind = "milestone"
variable = "progress_x"
every_px = 20
reward = 1.0
"""


def steps(backend: RulesBackend, action: int, count: int) -> list[float]:
    """`count` steps of `action` at the game's pace; the reward of each."""
    rewards = []
    for _ in range(count):
        rewards.append(backend.step(action)[1])
        frame_period()
    return rewards


def steps_until(
    backend: RulesBackend, action: int, game: Game, reached: Callable[[dict[str, float]], bool]
) -> list[float]:
    """Steps of `action` at the game's pace until the game's report satisfies `reached`; the reward of each."""
    rewards = []
    deadline = time.monotonic() + WAIT_S
    while not reached(game.latest()):
        assert time.monotonic() < deadline, f"the game never got there: {game.latest()}"
        rewards.append(backend.step(action)[1])
        frame_period()
    return rewards


def settle(backend: RulesBackend, game: Game) -> dict[str, float]:
    """Releases the keys, waits until the game says the box stopped, and captures a few still frames."""
    backend.step(NOOP)
    state = game.wait_for(lambda state: state["keys"] == 0, "the keys released")
    steps(backend, NOOP, 6)
    assert game.latest() == state, "the box was still moving"
    return state


def test_scroll_progress_follows_the_camera_of_a_side_scroller_it_only_sees(
    scrolling_game: Game, open_backend: Callable[[Path], DesktopBackend], tmp_path: Path
) -> None:
    game = scrolling_game
    desktop = open_backend(write_profile(tmp_path / "box.toml", game, extra=SCROLL_RULES))
    backend = with_rules(desktop, desktop.profile, realtime=True)
    assert isinstance(backend, RulesBackend)
    backend.reset()
    start = game.latest()["camera"]
    assert backend.read_variables()["progress_x"] == 0.0

    # Right for about 2 s: the box leaves the level's start, then the camera follows it at 2 px a frame.
    paid = sum(steps(backend, RIGHT, 120))
    right = settle(backend, game)
    moved = right["camera"] - start
    values = backend.read_variables()
    assert moved >= 100, f"the camera hardly moved: {right}"
    assert values["progress_x"] == pytest.approx(moved, abs=2.0 + 0.02 * moved)
    assert abs(values["progress_y"]) <= 2.0
    assert paid + 1 >= moved // 20 >= paid - 1  # milestones every 20 px of what the screen showed
    assert values["moving"] > 0

    # Left: the view moves back, and progress with it.
    steps(backend, LEFT, 40)
    left = settle(backend, game)
    values = backend.read_variables()
    assert left["camera"] < right["camera"] - 40
    assert values["progress_x"] == pytest.approx(left["camera"] - start, abs=2.0 + 0.02 * moved)

    # Standing still: the screen does not change and neither does progress.
    still = backend.read_variables()
    steps(backend, NOOP, 10)
    assert backend.read_variables() == still


def box_on_ground_image(path: Path) -> Path:
    """The box standing on the ground with 4 px of the dark field around it, as the game draws it (BGR PNG)."""
    image = np.zeros((24, 24, 3), np.uint8)
    image[:] = (0x20, 0x20, 0x20)
    image[4:20, 4:20] = (255, 255, 255)
    image[20:] = (0x40, 0xA0, 0x30)  # 0x30a040 as blue, green, red
    cv2.imwrite(str(path), image)
    return path


def test_a_template_reward_is_paid_once_each_time_the_box_appears_in_its_region(
    game: Game, open_backend: Callable[[Path], DesktopBackend], tmp_path: Path
) -> None:
    box_on_ground_image(tmp_path / "box_on_ground.png")
    rule = f"""
[[rewards]]
kind = "template"
image = "box_on_ground.png"
region = [96, {GAME_HEIGHT - 50}, 64, 40]
threshold = 0.95
reward = 1.0
"""
    desktop = open_backend(write_profile(tmp_path / "box.toml", game, extra=rule))
    backend = with_rules(desktop, desktop.profile, realtime=True)
    assert isinstance(backend, RulesBackend)
    backend.reset()
    # Right from x = 0 to the wall at 144: the box is wholly in the region (with its margin) from x = 100 to 140.
    rewards = steps_until(backend, RIGHT, game, lambda state: state["x"] == GAME_WIDTH - BOX)
    rewards += steps(backend, RIGHT, 5)  # pushing against the wall: out of the region's reach, nothing more
    assert rewards.count(1.0) == 1 and sum(rewards) == 1.0
    # Back left across the region: a second appearance, paid once more; out of it to the left, nothing.
    rewards = steps_until(backend, LEFT, game, lambda state: state["x"] <= 60)
    rewards += steps(backend, NOOP, 5)
    assert rewards.count(1.0) == 1 and sum(rewards) == 1.0
