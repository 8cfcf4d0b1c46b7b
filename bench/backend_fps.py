"""Measures how many frames per second a game backend sustains with capture and preprocessing, unpaced.

    python bench/backend_fps.py                              # PyBoy on the test ROM built from source
    python bench/backend_fps.py --rom tetris.gb --profile tetris --seconds 10
    python bench/backend_fps.py --backend desktop --window-size 800x600 --obs-size 84x84
    python bench/backend_fps.py --backend desktop --desktop-profile supertux   # the running game

Each frame is what the gateway's clock thread does (step the backend with the action held, copy the
RGB screen, read the profile's variables and apply its rules) plus what the dispatcher does on a
decision frame (resize, grey, stack), done on every frame here so the number is a worst case.
The result line compares it with the game's native rate: the headroom is what the realtime clock
has left. Without --rom it runs the project's own test ROM (tests/fixtures/gbrom), which is
cheaper to emulate than a commercial game: pass a real ROM for a number that predicts training.

Backends register in BENCHMARKS. The desktop backend's frames are screen captures of a window
(mss), so its number is the capture rate of that window's size; without --desktop-profile it runs
the test game in a private Xvfb.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rtrl.services.env_gateway.backends.base import Backend  # noqa: E402
from rtrl.services.env_gateway.game_rules import with_rules  # noqa: E402
from rtrl.services.env_gateway.preprocess import FrameHistory, Preprocessor, SampledFrame  # noqa: E402
from rtrl.services.env_gateway.profiles import GameProfile, load_profile  # noqa: E402

GBROM_DIR = REPO_ROOT / "tests" / "fixtures" / "gbrom"
BOXGAME_DIR = REPO_ROOT / "tests" / "fixtures" / "desktop_game"
TEST_PROFILE = """
[game]
name = "joypad test"
backend = "pyboy"
[rom]
sha256 = "any"
[actions]
buttons = [[], ["a"], ["b"], ["a", "b"]]
[variables.counter]
address = 0xC001
[[rewards]]
kind = "delta"
variable = "counter"
[reset]
wait_frames = 70
"""


def measure(backend: Backend, profile: GameProfile, seconds: float, seed: int = 0) -> dict[str, float]:
    """Steps `backend` unpaced for `seconds` with a random action every frame_skip frames."""
    backend = with_rules(backend, profile)
    pre = profile.preprocess
    preprocessor = Preprocessor(pre.width, pre.height, pre.grayscale)
    history = FrameHistory(pre.frame_stack)
    rng = np.random.default_rng(seed)
    history.reset(SampledFrame(0, backend.reset(seed)))
    frames = episodes = 0
    action = profile.actions.fallback
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        if frames % pre.frame_skip == 0:
            action = int(rng.integers(backend.action_count))
        rgb, _reward, terminated, truncated = backend.step(action)
        # Preprocessing every frame (the gateway does it once per decision): a worst case.
        preprocessor.stack(history.add(SampledFrame(frames, rgb)))
        frames += 1
        if terminated or truncated:
            episodes += 1
            history.reset(SampledFrame(frames, backend.reset()))
    elapsed = time.perf_counter() - start
    backend.close()
    return {"frames": frames, "seconds": elapsed, "fps": frames / elapsed, "episodes": episodes}


def bench_pyboy(args: argparse.Namespace) -> tuple[str, dict[str, float], float]:
    from rtrl.services.env_gateway.backends.pyboy import PyBoyBackend

    with tempfile.TemporaryDirectory(prefix="rtrl-bench-") as tmp:
        if args.rom is None:
            spec = importlib.util.spec_from_file_location("gbasm", GBROM_DIR / "gbasm.py")
            assert spec is not None and spec.loader is not None
            gbasm = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(gbasm)
            rom = Path(tmp) / "joypad_test.gb"
            rom.write_bytes(gbasm.build_rom((GBROM_DIR / "joypad_test.asm").read_text(encoding="utf-8")))
            profile_path = Path(tmp) / "joypad_test.toml"
            profile_path.write_text(TEST_PROFILE, encoding="utf-8")
            profile = load_profile(profile_path)
            label = "test ROM"
        else:
            rom = Path(args.rom)
            profile = load_profile(args.profile)
            label = rom.name
        result = measure(PyBoyBackend(rom, profile), profile, args.seconds)
    native = profile.frame_rate_hz or 60.0
    return f"pyboy ({label}, {profile.preprocess.width}x{profile.preprocess.height})", result, native


def bench_desktop(args: argparse.Namespace) -> tuple[str, dict[str, float], float]:
    """The desktop backend: mss capture of a window's client area, XTest keys, /proc pointer-chain reads.

    With --desktop-profile it plays the game that profile names, which must be running (on DISPLAY).
    Without, it starts its own: a private Xvfb and the test game (tests/fixtures/desktop_game) in a
    window of --window-size, with --obs-size observations; Linux only (Xvfb, gcc, libx11-dev).
    """
    from rtrl.services.env_gateway.backends.desktop import DesktopBackend

    if args.desktop_profile:
        profile = load_profile(args.desktop_profile)
        result = measure(DesktopBackend(profile), profile, args.seconds)
        return f"desktop ({profile.game.name})", result, profile.frame_rate_hz or 60.0

    spec = importlib.util.spec_from_file_location("boxgame", BOXGAME_DIR / "boxgame.py")
    assert spec is not None and spec.loader is not None
    boxgame = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boxgame)
    window = tuple(int(n) for n in args.window_size.lower().split("x"))
    obs_width, obs_height = (int(n) for n in args.obs_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="rtrl-bench-") as tmp:
        binary = boxgame.build(Path(tmp))
        server, display = boxgame.start_xvfb(f"{max(window[0] + 64, 640)}x{max(window[1] + 64, 480)}x24")
        title = "rtrl bench box game"
        game, ready = boxgame.launch(binary, display, title, window)
        previous_display = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = display
        try:
            profile_path = Path(tmp) / "boxgame.toml"
            profile_path.write_text(boxgame.profile_toml(ready, title, width=obs_width, height=obs_height))
            profile = load_profile(profile_path)
            result = measure(DesktopBackend(profile), profile, args.seconds)
        finally:
            if previous_display is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = previous_display
            game.terminate()
            game.wait()
            assert game.stdout is not None
            game.stdout.close()
            server.terminate()
            server.wait()
    label = f"desktop (test game, {window[0]}x{window[1]} window -> {obs_width}x{obs_height} grey, Xvfb)"
    return label, result, 60.0


# name -> function(args) -> (label, measure() result, native frame rate).
BENCHMARKS: dict[str, Callable[[argparse.Namespace], tuple[str, dict[str, float], float]]] = {
    "pyboy": bench_pyboy,
    "desktop": bench_desktop,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=sorted(BENCHMARKS), default="pyboy")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to step (default 5)")
    parser.add_argument("--rom", help="pyboy: a Game Boy ROM (default: the test ROM built from source)")
    parser.add_argument("--profile", default="tetris", help="pyboy with --rom: profile name or path")
    parser.add_argument("--desktop-profile", help="desktop: the profile of a running game (default: the test game)")
    parser.add_argument("--window-size", default="800x600", help="desktop test game: window size (default 800x600)")
    parser.add_argument("--obs-size", default="64x64", help="desktop test game: observation size (default 64x64)")
    args = parser.parse_args()
    label, result, native = BENCHMARKS[args.backend](args)
    print(
        f"{label}: {result['fps']:.0f} frames/s with capture, rules and preprocessing "
        f"({result['frames']:.0f} frames in {result['seconds']:.1f} s, {result['episodes']:.0f} episodes); "
        f"{result['fps'] / native:.1f}x the native {native:.2f} Hz"
    )


if __name__ == "__main__":
    main()
