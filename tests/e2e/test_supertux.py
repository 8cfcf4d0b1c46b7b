"""The shipped supertux_linux profile on the real game: Debian's SuperTux 0.6.3 under a private Xvfb.

The game is started straight into Welcome to Antarctica, as docs/your-game.md says. Through the
desktop backend and the profile's rules: Tux's x (read from the global `rtrl scan` found) grows while
Right is held, holding on runs him into the level's first snowball and the episode ends by the
profile's death rule, and the reset (the pause menu's Restart Level) puts him back at the start.
Then `rtrl up` plays it for 60 s with the learner training, and the summary is checked. Before all
that, `rtrl scan` walks Tux itself and finds the profile's x among its chains.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from desktop_game import boxgame

from rtrl.local_redis import free_port, free_ports_in_a_row
from rtrl.services.env_gateway.backends import make_backend
from rtrl.services.env_gateway.backends.desktop import WindowNotFoundError
from rtrl.services.env_gateway.backends.desktop_linux import LinuxPlatform
from rtrl.services.env_gateway.game_rules import RulesBackend
from rtrl.services.env_gateway.settings import GatewaySettings

SUPERTUX = shutil.which("supertux2") or "/usr/games/supertux2"
LEVEL = Path("/usr/share/games/supertux2/levels/world1/welcome_antarctica.stl")
START_X, START_Y = 96.0, 608.0  # where Tux stands at the start of this level
RIGHT, NOOP = 2, 0  # the profile's actions
FRAME_S = 1 / 60
RUN_SECONDS = 60

pytestmark = pytest.mark.skipif(
    not (os.path.exists(SUPERTUX) and LEVEL.exists()),
    reason="SuperTux is not installed: it is the Debian package supertux in scripts/debian-packages-dev.txt, "
    "which scripts/test installs",
)


@pytest.fixture(scope="module")
def supertux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SuperTux in the level on a private Xvfb, past the level's intro; yields the display."""
    server, display = boxgame.start_xvfb("800x600x24")
    home = tmp_path_factory.mktemp("supertux-home")  # its config and savegame go here, not to the user's
    options = ["--window", "--geometry", "640x480", "--renderer", "sdl", "--disable-sound", "--disable-music"]
    game = subprocess.Popen(
        [SUPERTUX, *options, str(LEVEL)],
        env={**os.environ, "DISPLAY": display, "HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        platform = LinuxPlatform(display)
        deadline = time.monotonic() + 30
        while True:
            try:
                window = platform.find_window("SuperTux", "supertux2")
                break
            except WindowNotFoundError:
                assert time.monotonic() < deadline and game.poll() is None, "SuperTux did not open its window"
                time.sleep(0.5)
        keys = platform.open_keys(window)
        time.sleep(3)  # the level's intro screen
        window.focus()
        keys.native_key("Return")
        keys.press("Return")
        time.sleep(0.1)
        keys.release("Return")
        keys.close()
        window.close()
        time.sleep(2)  # the level fades in
        yield display
    finally:
        game.terminate()
        game.wait()
        server.terminate()
        server.wait()


def test_rtrl_scan_finds_the_profiles_x_while_it_walks_tux_itself(supertux: str) -> None:
    # First in the file: the level has just started, and Tux is far from the first snowball.
    window = LinuxPlatform(supertux).find_window("SuperTux", "supertux2")
    pid = window.pid
    window.close()
    steps = ["--unknown", "--hold", "Right", "0.4s", "--wait", "0.4s", "--increased"]
    steps += ["--hold", "Left", "0.3s", "--wait", "0.6s", "--decreased", "--wait", "0.3s", "--unchanged"]
    steps += ["--hold", "Right", "0.3s", "--wait", "0.5s", "--increased"]
    # A second round: on a busy machine the first leaves up to a hundred floats that moved with Tux by chance.
    steps += ["--hold", "Left", "0.3s", "--wait", "0.6s", "--decreased", "--wait", "0.3s", "--unchanged"]
    steps += ["--hold", "Right", "0.3s", "--wait", "0.5s", "--increased", "--pointers", "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "rtrl.cli", "scan", str(pid), "--type", "f32", "--name", "x", *steps],
        env={**os.environ, "DISPLAY": supertux},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    profile_x = ("supertux2", [0x5F97C8])  # what rtrl/services/env_gateway/profiles/supertux_linux.toml reads
    assert profile_x in [(chain["module"], chain["pointers"]) for chain in found["chains"]], found["chains"]
    assert found["toml"].startswith("[variables.x]")


def play(backend: RulesBackend, action: int, seconds: float) -> tuple[bool, bool]:
    """Steps `action` at 60 Hz for `seconds` (the game runs on its own); stops at an episode's end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _, _, terminated, truncated = backend.step(action)
        if terminated or truncated:
            return terminated, truncated
        time.sleep(FRAME_S)
    return False, False


def test_x_grows_to_the_right_a_death_ends_the_episode_and_the_reset_restarts_the_level(
    supertux: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", supertux)
    backend = make_backend(GatewaySettings.from_env({"RTRL_ENV": "desktop:supertux_linux", "DISPLAY": supertux}))
    try:
        assert isinstance(backend, RulesBackend)
        backend.reset()
        start = backend.read_variables()
        assert start["x"] == pytest.approx(START_X, abs=3) and start["y"] == pytest.approx(START_Y, abs=3)

        play(backend, RIGHT, 1.0)
        moved = backend.read_variables()
        assert moved["x"] > start["x"] + 100, moved  # about 300 px/s at full speed

        # Walking on, Tux meets the level's first snowball (about 600 px in) and is thrown off the screen.
        terminated, truncated = play(backend, RIGHT, 15.0)
        assert terminated and not truncated, backend.read_variables()
        assert "above" in backend.last_outcome.ended_by or "x_teleport" in backend.last_outcome.ended_by

        backend.reset()
        again = backend.read_variables()
        assert again["x"] == pytest.approx(START_X, abs=3) and again["y"] == pytest.approx(START_Y, abs=3)
    finally:
        backend.close()


def test_rtrl_up_plays_supertux_for_a_minute_with_the_learner_training(supertux: str, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    inference = free_ports_in_a_row(2)
    command = [
        sys.executable, "-m", "rtrl.cli", "up",
        "--env", "desktop:supertux_linux",
        "--duration", str(RUN_SECONDS),
        "--gateway-port", str(free_port()),
        "--learner-port", str(free_port()),
        "--inference-base-port", str(inference),
        "--checkpoint-dir", str(tmp_path / "checkpoints"),
        "--run-dir", str(tmp_path / "runs"),
        "--summary-json", str(summary),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        env={**os.environ, "DISPLAY": supertux},
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS + 180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = json.loads(summary.read_text())
    gateway, learner = found["gateway"], found["learner"]
    assert gateway["coverage"] >= 0.99, gateway
    assert int(gateway["frames"]) >= 0.9 * 60 * RUN_SECONDS  # the clock kept the game's 60 fps
    assert int(gateway["transitions_dropped"]) == 0
    assert int(learner["updates"]) > 0 and int(learner["transitions_consumed"]) > 0
    variables = {variable["name"]: variable for variable in gateway["variables"]}
    assert variables["x"]["known"] and variables["y"]["known"]
    assert [term["label"] for term in gateway["reward_terms"]] == ["delta(x)", "milestone(x)"]
