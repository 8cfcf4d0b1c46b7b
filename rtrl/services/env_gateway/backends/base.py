"""The protocol every game backend implements, so the clock can step ALE, PyBoy or a desktop alike.

A backend is driven from one thread at a time (the clock's): emulators are not thread-safe. Frames
are returned as new arrays that the caller may keep, because the clock hands them to other threads
(preprocessing, viewers) without copying: uint8 RGB pictures [height, width, 3] for a "pixels"
backend, float32 state vectors [state_size] for a "state" one (a gym env played from its state,
which still renders a picture for viewers when asked, on the clock's thread). A backend with a
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

    @property
    def observation_kind(self) -> str:
        """Whether reset and step return RGB pictures ("pixels") or state vectors ("state")."""
        ...

    @property
    def state_size(self) -> int:
        """Length of the state vectors of a "state" backend (0 for "pixels"), known before the first frame."""
        ...

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Starts a new episode and returns its first frame."""
        ...

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """Applies `action` for one frame; returns (frame, reward, terminated, truncated)."""
        ...

    def render(self) -> np.ndarray:
        """A uint8 RGB picture [height, width, 3] of the frame last produced, for viewers (a pixels backend
        returns that frame itself, which costs nothing)."""
        ...

    def read_variables(self) -> dict[str, float]:
        """The profile's game variables at the frame last produced ({} for a backend without a profile)."""
        ...

    def close(self) -> None:
        """Releases the emulator."""
        ...
