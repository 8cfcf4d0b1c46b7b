"""Measures what screen signals cost the game clock per frame, on 640x480 RGB frames of a scrolling level.

    python bench/screen_signals.py                   # 600 frames per row and thread setting, 6 rounds
    python bench/screen_signals.py --frames 1200 --rounds 12

Each row times `ScreenSignals.measure(frame)` for one profile, which is what RulesBackend adds to the clock
thread's work on every frame (grey conversion and shrinking of the region included): scroll at three
widths, screen change, both sharing one shrunk picture, and template matching in a typical region, shrunk
or not, and over the whole frame. Two more rows time the alternatives the scroll did not take on the same
shrunk pictures: cv2.phaseCorrelate of consecutive frames and numpy's FFT. Every row is measured with
OpenCV's own number of threads and with one (cv2.setNumThreads(1)): on a machine whose cores are busy, a
call split over threads waits for a worker the OS has not scheduled, which shows in the p99. The rows and
both settings are measured in interleaved rounds of the same run, so a busy machine slows them alike; the
last column is the median's share of one frame at 60 fps (16.7 ms). Figures are copied into
docs/profiles.md ("Screen signals").
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rtrl.services.env_gateway.profiles import GameProfile, parse_profile  # noqa: E402
from rtrl.services.env_gateway.screen_signals import ScreenSignals, grey_region  # noqa: E402

FRAME_W, FRAME_H = 640, 480
SPEED_PX = 3
FRAME_BUDGET_US = 1e6 / 60
WARM_UP_FRAMES = 30


def make_level(frames: int, seed: int) -> np.ndarray:
    """Random coloured blocks on a sky colour, long enough for `frames` frames scrolling SPEED_PX a frame."""
    rng = np.random.default_rng(seed)
    width = FRAME_W + SPEED_PX * (frames + WARM_UP_FRAMES)
    level = np.empty((FRAME_H, width, 3), np.uint8)
    level[:] = (90, 140, 220)
    for _ in range(width * FRAME_H // 1500):
        x, y = rng.integers(0, width), rng.integers(0, FRAME_H)
        level[y : y + rng.integers(6, 60), x : x + rng.integers(6, 80)] = rng.integers(0, 256, 3)
    return level


def profile(folder: Path, screen: dict[str, Any] | None = None, termination: list[dict[str, Any]] = ()) -> GameProfile:  # type: ignore[assignment]
    data = {
        "game": {"name": "bench", "backend": "desktop"},
        "window": {"title": "bench"},
        "actions": {"keys": [[]]},
        "screen": screen or {},
        "termination": list(termination) or [{"kind": "time_cap", "seconds": 60}],
    }
    return parse_profile(data, folder / "bench.toml")


def template_rule(region: list[int] | None, downscale: int = 1) -> dict[str, Any]:
    rule: dict[str, Any] = {"kind": "template", "image": "banner.png", "downscale": downscale}
    if region is not None:
        rule["region"] = region
    return rule


def write_banner(folder: Path) -> None:
    """A 160x40 "GAME OVER" banner, about the size of such a screen's text at 640x480."""
    banner = np.zeros((40, 160, 3), np.uint8)
    cv2.putText(banner, "GAME OVER", (6, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (40, 40, 230), 2)
    cv2.imwrite(str(folder / "banner.png"), banner)


class Alternative:
    """A scroll measured another way, on the same shrunk grey pictures: what screen_signals did not choose."""

    def __init__(self, width: int, correlate: Callable[[np.ndarray, np.ndarray, np.ndarray], object]) -> None:
        self.factor = FRAME_W // width
        self.correlate = correlate
        self.window = cv2.createHanningWindow((FRAME_W // self.factor, FRAME_H // self.factor), cv2.CV_32F)
        self.previous: np.ndarray | None = None

    def reset(self, frame: np.ndarray) -> None:
        self.previous = self._picture(frame)

    def measure(self, frame: np.ndarray) -> None:
        current = self._picture(frame)
        assert self.previous is not None
        self.correlate(self.previous, current, self.window)
        self.previous = current

    def _picture(self, frame: np.ndarray) -> np.ndarray:
        picture = grey_region(frame, None, self.factor)
        assert picture is not None
        return picture.astype(np.float32)


def numpy_phase_correlate(previous: np.ndarray, current: np.ndarray, window: np.ndarray) -> tuple[int, ...]:
    a = np.fft.rfft2((previous - previous.mean()) * window)
    b = np.fft.rfft2((current - current.mean()) * window)
    cross = b * np.conj(a)
    cross /= np.abs(cross) + 1e-9
    surface = np.fft.irfft2(cross, s=previous.shape)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(surface)), surface.shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600, help="timed frames per row (default 600)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds the frames are split into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # The whole-frame template row is meant to cost too much: its once-only warning would cut into the table.
    logging.disable(logging.WARNING)
    default_threads = cv2.getNumThreads()
    settings = (default_threads, 1)

    level = make_level(args.frames, args.seed)
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        write_banner(folder)
        rows: list[tuple[str, Any]] = [
            ("scroll, width 64 (shrunk 10x)", ScreenSignals(profile(folder, {"p": {"kind": "scroll", "width": 64}}))),
            ("scroll, width 80 (default, 8x)", ScreenSignals(profile(folder, {"p": {"kind": "scroll"}}))),
            ("scroll, width 128 (5x)", ScreenSignals(profile(folder, {"p": {"kind": "scroll", "width": 128}}))),
            ("screen_change, width 80", ScreenSignals(profile(folder, {"c": {"kind": "screen_change"}}))),
            (
                "scroll + screen_change, width 80",
                ScreenSignals(profile(folder, {"p": {"kind": "scroll"}, "c": {"kind": "screen_change"}})),
            ),
            (
                "template 160x40 in a 320x120 region",
                ScreenSignals(profile(folder, termination=[template_rule([160, 180, 320, 120])])),
            ),
            (
                "  same, downscale 2",
                ScreenSignals(profile(folder, termination=[template_rule([160, 180, 320, 120], 2)])),
            ),
            ("template 160x40, whole frame", ScreenSignals(profile(folder, termination=[template_rule(None)]))),
            ("  same, downscale 2", ScreenSignals(profile(folder, termination=[template_rule(None, 2)]))),
            ("(not used) cv2.phaseCorrelate, width 80", Alternative(80, cv2.phaseCorrelate)),
            ("(not used) numpy FFT, width 80", Alternative(80, numpy_phase_correlate)),
        ]

        def frame(index: int) -> np.ndarray:
            left = SPEED_PX * index
            return np.ascontiguousarray(level[:, left : left + FRAME_W])

        samples_us = {(row, threads): [] for row in range(len(rows)) for threads in settings}
        per_round = max(1, args.frames // args.rounds)
        position = [0] * len(rows)
        for _, signals in rows:
            signals.reset(frame(0))
        for round_index in range(args.rounds):
            for row, (_, signals) in enumerate(rows):
                for threads in settings:
                    cv2.setNumThreads(threads)
                    warm_up = WARM_UP_FRAMES if round_index == 0 else 0
                    for step in range(warm_up + per_round):
                        position[row] += 1
                        picture = frame(position[row] % (args.frames + WARM_UP_FRAMES))
                        started = time.perf_counter_ns()
                        signals.measure(picture)
                        elapsed_us = (time.perf_counter_ns() - started) / 1000.0
                        if step >= warm_up:
                            samples_us[row, threads].append(elapsed_us)
        cv2.setNumThreads(default_threads)

    print(
        f"{FRAME_W}x{FRAME_H} RGB frames scrolling {SPEED_PX} px a frame; {per_round * args.rounds} timed frames per "
        f"row and thread setting in {args.rounds} interleaved rounds; OpenCV {cv2.__version__}"
    )
    default_label, one_label = f"OpenCV's {default_threads} threads", "1 thread"
    print(f"{'':<40} {default_label:^19}  {one_label:^19}")
    print(f"{'per frame':<40} {'median us':>9} {'p99 us':>9}  {'median us':>9} {'p99 us':>9}  {'share of 16.7 ms':>16}")
    for row, (label, _) in enumerate(rows):
        cells = []
        for threads in settings:
            samples = samples_us[row, threads]
            cells.append(f"{np.median(samples):>9.0f} {np.percentile(samples, 99):>9.0f}")
        share = float(np.median(samples_us[row, default_threads])) / FRAME_BUDGET_US
        print(f"{label:<40} {cells[0]}  {cells[1]}  {share:>16.1%}")


if __name__ == "__main__":
    main()
