"""The protocol every game backend implements, so the clock can step ALE, PyBoy or a desktop alike.

A backend is driven from one thread at a time (the clock's): emulators are not thread-safe. Frames
are returned as new uint8 RGB arrays of shape [height, width, 3] that the caller may keep, because
the clock hands them to other threads (preprocessing, viewers) without copying. A backend with a
game profile also reads the profile's variables; the profile's rules are applied around it by
`game_rules.RulesBackend`, not by the backend itself.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class BackendError(RuntimeError):
    """The game could not be created or stepped; the message says what to fix."""


class Backend(Protocol):
    """A game stepped one frame at a time."""

    @property
    def action_count(self) -> int:
        """Number of discrete actions."""
        ...

    @property
    def action_meanings(self) -> tuple[str, ...]:
        """Human-readable name of each action, indexed by action."""
        ...

    @property
    def native_frame_rate_hz(self) -> float:
        """Frames per second the game runs at on its own hardware."""
        ...

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Starts a new episode and returns its first frame."""
        ...

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """Applies `action` for one frame; returns (frame, reward, terminated, truncated)."""
        ...

    def read_variables(self) -> dict[str, float]:
        """The profile's game variables at the frame last produced ({} for a backend without a profile)."""
        ...

    def close(self) -> None:
        """Releases the emulator."""
        ...
