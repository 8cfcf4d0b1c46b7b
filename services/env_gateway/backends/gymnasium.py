"""Backend for Atari games (ale-py) and any gymnasium environment with discrete actions.

"ale:<Game>" runs `ALE/<Game>-v5` with the emulator's own frame skip turned off (the gateway's clock
decides how long an action is held) and sticky actions as configured; its frames are the RGB screen
at the Atari's 60 Hz. "gym:<id>" runs any gymnasium id with `render_mode="rgb_array"`, one env step
per frame, at the env's `render_fps` (60 when it declares none); its frames are its observations
when those are RGB images, else what it renders.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import ale_py
import gymnasium as gym
import numpy as np

from rtrl.config import PREFIX, SettingsError
from services.env_gateway.backends.base import BackendError
from services.env_gateway.settings import ENV_FORMS, EnvSpec, GatewaySettings

ALE_FRAME_RATE_HZ = 60.0
DEFAULT_GYM_FRAME_RATE_HZ = 60.0


class GymnasiumBackend:
    """A gymnasium env stepped once per frame; frames are its RGB observations, else its renders."""

    def __init__(self, env_id: str, frame_rate_hz: float | None = None, **make_kwargs: Any) -> None:
        try:
            self._env = gym.make(env_id, **make_kwargs)
        except gym.error.Error as error:
            raise SettingsError(
                f"gymnasium cannot make {env_id!r} ({error}); set {PREFIX}ENV to {ENV_FORMS} naming an "
                "installed environment."
            ) from error
        space = self._env.action_space
        if not isinstance(space, gym.spaces.Discrete):
            self._env.close()
            raise SettingsError(
                f"{env_id!r} has action space {space}, but the gateway needs discrete actions; "
                f"set {PREFIX}ENV to an environment with a Discrete action space."
            )
        self._action_offset = int(space.start)
        self._action_count = int(space.n)
        meanings = getattr(self._env.unwrapped, "get_action_meanings", None)
        self._action_meanings = (
            tuple(meanings()) if callable(meanings) else tuple(str(a) for a in range(self._action_count))
        )
        self._frame_rate_hz = float(frame_rate_hz or self._env.metadata.get("render_fps") or DEFAULT_GYM_FRAME_RATE_HZ)

    @property
    def action_count(self) -> int:
        return self._action_count

    @property
    def action_meanings(self) -> tuple[str, ...]:
        return self._action_meanings

    @property
    def native_frame_rate_hz(self) -> float:
        return self._frame_rate_hz

    def _frame(self, observation: Any) -> np.ndarray:
        if _is_rgb(observation):
            return observation
        try:
            frame = self._env.render()
        except gym.error.DependencyNotInstalled as error:
            raise BackendError(f"the environment cannot render RGB frames: {error}") from error
        if not _is_rgb(frame):
            raise BackendError(
                f"the environment renders {type(frame).__name__} of shape {getattr(frame, 'shape', None)}; "
                "the gateway needs uint8 RGB arrays [height, width, 3]"
            )
        return frame

    def reset(self, seed: int | None = None) -> np.ndarray:
        observation, _ = self._env.reset(seed=seed)
        return self._frame(observation)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        observation, reward, terminated, truncated, _ = self._env.step(action + self._action_offset)
        return self._frame(observation), float(reward), bool(terminated), bool(truncated)

    def read_variables(self) -> dict[str, float]:
        # Gymnasium envs expose their state through rewards and observations, not named variables.
        return {}

    def close(self) -> None:
        self._env.close()


def _is_rgb(frame: object) -> TypeGuard[np.ndarray]:
    return isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3


def make_gymnasium_backend(settings: GatewaySettings) -> GymnasiumBackend:
    """Creates the "ale:" or "gym:" backend RTRL_ENV names; raises SettingsError when it names nothing installed."""
    # Registering is idempotent; "gym:ALE/..." ids need it as much as "ale:" specs do.
    gym.register_envs(ale_py)
    spec: EnvSpec = settings.env
    if spec.kind == "ale":
        return GymnasiumBackend(
            spec.gymnasium_id,
            frame_rate_hz=ALE_FRAME_RATE_HZ,
            obs_type="rgb",
            frameskip=1,
            repeat_action_probability=settings.sticky_actions,
        )
    # Image observations are used as they are; other envs are rendered.
    return GymnasiumBackend(spec.gymnasium_id, render_mode="rgb_array")
