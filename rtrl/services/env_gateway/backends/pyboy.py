"""Backend for Game Boy games on PyBoy: the user's ROM, checked against its profile, one tick per frame.

`pyboy:<rom path>` runs headless with PyBoy's own speed limit off (the gateway's clock paces it at
the Game Boy's 59.7275 Hz). An action holds its profile's buttons: on a change the buttons no longer
held are released and the new ones pressed. Variables are read from RAM through `pyboy.memory` or
from PyBoy's game wrapper (Tetris's score, lines and game over) when the profile allows it. Resets
follow the profile's [reset] procedure (docs/profiles.md).
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtrl.config import PREFIX, SettingsError
from rtrl.services.env_gateway.backends.base import BackendError
from rtrl.services.env_gateway.profiles import GameProfile, ProfileError, VariableSpec, read_rom

if TYPE_CHECKING:
    from rtrl.services.env_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

with warnings.catch_warnings():
    # pysdl2 announces which SDL binaries it found when PyBoy imports its window plugins; the
    # backend runs headless and never opens an SDL window, so the notice is noise (and pytest
    # turns warnings into errors).
    warnings.filterwarnings("ignore", message="Using SDL2 binaries", category=UserWarning)
    from pyboy import PyBoy


class PyBoyBackend:
    """One PyBoy emulator running `rom_path` as `profile` describes."""

    def __init__(self, rom_path: str | Path, profile: GameProfile) -> None:
        if profile.game.backend != "pyboy" or profile.rom is None:
            raise ProfileError(f"profile {profile.label}: game.backend is {profile.game.backend!r}; expected 'pyboy'.")
        self.profile = profile
        rom = read_rom(rom_path)
        self.rom_path = Path(rom_path).expanduser()
        _check_digest(rom, self.rom_path, profile)
        savestate = profile.reset.savestate
        if savestate is not None and not savestate.is_file():
            raise profile.error(
                "reset.savestate",
                str(savestate),
                "a PyBoy state file saved at the point episodes start (paths are relative to the profile's folder)",
            )
        # The ROM runs from the verified bytes, so what was checked is what runs, and PyBoy neither
        # reads nor writes battery saves next to the user's ROM.
        self._pyboy = PyBoy(io.BytesIO(rom), window="null", sound_emulated=False, log_level="ERROR")
        try:
            self._pyboy.set_emulation_speed(0)
            wrapper = self._pyboy.game_wrapper
            # The generic wrapper has no cartridge title; a game-specific one names (or checks) its game.
            specific = wrapper is not None and type(wrapper).__name__ != "PyBoyGameWrapper"
            self._wrapper: Any = wrapper if specific and profile.rom.game_wrapper else None
            self._readers = [self._reader(spec) for spec in profile.variables.values()]
        except BaseException:
            self._pyboy.stop(save=False)
            raise
        self._names = tuple(profile.variables)
        self._combos = tuple(frozenset(combo) for combo in profile.actions.inputs)
        self._held: frozenset[str] = frozenset()
        self._snapshot: io.BytesIO | None = None
        self._rng = np.random.default_rng()
        self.cartridge_title: str = self._pyboy.cartridge_title
        self._last_frame: np.ndarray | None = None

    def _reader(self, spec: VariableSpec) -> Callable[[], float]:
        """A function reading one variable, chosen once so each frame's reads do no dispatching."""
        if spec.wrapper is not None and self._wrapper is not None:
            if not hasattr(self._wrapper, spec.wrapper):
                raise self.profile.error(
                    f"variables.{spec.name}.wrapper",
                    spec.wrapper,
                    f"an attribute of PyBoy's {type(self._wrapper).__name__}",
                )
            wrapper, attribute = self._wrapper, spec.wrapper

            def read_wrapper() -> float:
                value = getattr(wrapper, attribute)
                return float(value() if callable(value) else value)

            return read_wrapper
        if spec.address is None:
            raise self.profile.error(
                f"variables.{spec.name}.wrapper",
                spec.wrapper,
                f"PyBoy's game wrapper for this cartridge ({self._pyboy.cartridge_title!r}) to exist and "
                "rom.game_wrapper to be true, or an address for the variable",
            )
        memory, address, size = self._pyboy.memory, spec.address, spec.size
        if spec.type == "u8":
            return lambda: float(memory[address])
        return lambda: spec.decode(memory[address : address + size])

    # -- Backend -----------------------------------------------------------------------------------

    @property
    def action_count(self) -> int:
        return self.profile.actions.count

    @property
    def action_meanings(self) -> tuple[str, ...]:
        return self.profile.actions.names

    @property
    def native_frame_rate_hz(self) -> float:
        rate = self.profile.frame_rate_hz
        assert rate is not None, "pyboy profiles always have a frame rate"
        return rate

    observation_kind = "pixels"
    state_size = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._hold(frozenset())
        if self._snapshot is None:
            self._first_reset()
        elif self._wrapper_resets:
            # The wrapper's reset also re-seeds the game's RNG through the timer, so episodes differ.
            self._wrapper.reset_game(timer_div=self._timer_div())
            self._run_reset_inputs()
        else:
            self._snapshot.seek(0)
            self._pyboy.load_state(self._snapshot)
        return self._tick()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        self._hold(self._combos[action])
        return self._tick(), 0.0, False, False

    def render(self) -> np.ndarray:
        assert self._last_frame is not None, "render() shows the frame last produced: reset the backend first"
        return self._last_frame

    def read_variables(self) -> dict[str, float]:
        return {name: read() for name, read in zip(self._names, self._readers, strict=True)}

    def close(self) -> None:
        # save=False: never write battery RAM for a cartridge the gateway only borrows.
        self._pyboy.stop(save=False)

    # -- internals ---------------------------------------------------------------------------------

    @property
    def _wrapper_resets(self) -> bool:
        return self._wrapper is not None and self.profile.reset.savestate is None

    def _timer_div(self) -> int:
        return int(self._rng.integers(256))

    def _first_reset(self) -> None:
        savestate = self.profile.reset.savestate
        if savestate is not None:
            with savestate.open("rb") as state:
                self._pyboy.load_state(state)
        elif self._wrapper is not None:
            self._wrapper.start_game(timer_div=self._timer_div())
        self._run_reset_inputs()
        self._snapshot = io.BytesIO()
        self._pyboy.save_state(self._snapshot)

    def _run_reset_inputs(self) -> None:
        reset = self.profile.reset
        for entry in reset.keys:
            if isinstance(entry, int):
                self._advance(entry)
            else:
                self._hold(frozenset(entry))
                self._advance(reset.press_frames)
        self._hold(frozenset())
        self._advance(reset.wait_frames)

    def _advance(self, frames: int) -> None:
        # Frames nobody sees are not rendered: resets stay fast.
        if frames and not self._pyboy.tick(frames, False, False):
            raise BackendError("PyBoy stopped emulating during the reset procedure")

    def _hold(self, buttons: frozenset[str]) -> None:
        for button in self._held - buttons:
            self._pyboy.button_release(button)
        for button in buttons - self._held:
            self._pyboy.button_press(button)
        self._held = buttons

    def _tick(self) -> np.ndarray:
        if not self._pyboy.tick(1, True, False):
            raise BackendError("PyBoy stopped emulating")
        # The screen buffer is RGBA and reused by the next tick: the clock needs its own RGB copy.
        self._last_frame = np.ascontiguousarray(self._pyboy.screen.ndarray[:, :, :3])
        return self._last_frame


def _check_digest(rom: bytes, path: Path, profile: GameProfile) -> None:
    assert profile.rom is not None
    if profile.rom.any_rom:
        log.warning('profile %s accepts any ROM (sha256 = "any"); that is meant for development only', profile.label)
        return
    sha256 = hashlib.sha256(rom).hexdigest()
    sha1 = hashlib.sha1(rom).hexdigest()
    if sha256 in profile.rom.sha256 or sha1 in profile.rom.sha1:
        return
    expected = [f"SHA-256 {digest}" for digest in profile.rom.sha256] + [f"SHA-1 {d}" for d in profile.rom.sha1]
    raise SettingsError(
        f"ROM file {path} has SHA-256 {sha256} (SHA-1 {sha1}), but profile {profile.label} expects "
        f"{' or '.join(expected)}; use the ROM dump the profile was written for, or set {PREFIX}PROFILE to a "
        "profile for your ROM."
    )


def create_backend(profile: GameProfile, settings: GatewaySettings) -> PyBoyBackend:
    """The make_backend hook for "pyboy:<rom path>"."""
    return PyBoyBackend(settings.env.name, profile)
