"""Backend for Atari games (ale-py) and any gymnasium environment with discrete actions.

"ale:<Game>" runs `ALE/<Game>-v5` with the emulator's own frame skip turned off (the gateway's clock
decides how long an action is held) and sticky actions as configured; its frames are the RGB screen
at the Atari's 60 Hz. "gym:<id>" runs any gymnasium id with `render_mode="rgb_array"`, one env step
per frame, at the env's `render_fps` (60 when it declares none). RTRL_OBSERVATION says what a frame is:
"pixels", its observation when that is an RGB image, else what it renders; "state", its observation
vector as float32 (only for a 1-D Box observation space, e.g. CartPole's 4 numbers), rendered only
when a viewer asks; auto (unset), state for a 1-D Box and pixels otherwise.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import gymnasium as gym
import numpy as np

from rtrl.config import PREFIX, SettingsError
from rtrl.extras import missing_extra
from rtrl.services.env_gateway.backends.base import BackendError
from rtrl.services.env_gateway.settings import ENV_FORMS, OBSERVATION_AUTO, OBSERVATION_NAMES, EnvSpec, GatewaySettings

ALE_FRAME_RATE_HZ = 60.0
DEFAULT_GYM_FRAME_RATE_HZ = 60.0


class GymnasiumBackend:
    """A gymnasium env stepped once per frame; frames are its RGB observations or renders ("pixels"), or its
    state vectors ("state"); `observation` "auto" picks state for a 1-D Box observation space."""

    def __init__(
        self, env_id: str, frame_rate_hz: float | None = None, observation: str = OBSERVATION_AUTO, **make_kwargs: Any
    ) -> None:
        self._env = make_env(env_id, **make_kwargs)
        try:
            space = self._env.action_space
            if not isinstance(space, gym.spaces.Discrete):
                raise SettingsError(
                    f"{env_id!r} has action space {space}, but the gateway needs discrete actions; "
                    f"set {PREFIX}ENV to an environment with a Discrete action space."
                )
            self._observation_kind = observation_kind_of(self._env.observation_space, observation, env_id)
        except BaseException:
            self._env.close()
            raise
        state_shape = self._env.observation_space.shape
        self._state_size = int(state_shape[0]) if self._observation_kind == "state" and state_shape else 0
        self._action_offset = int(space.start)
        self._action_count = int(space.n)
        meanings = getattr(self._env.unwrapped, "get_action_meanings", None)
        self._action_meanings = (
            tuple(meanings()) if callable(meanings) else tuple(str(a) for a in range(self._action_count))
        )
        self._frame_rate_hz = float(frame_rate_hz or self._env.metadata.get("render_fps") or DEFAULT_GYM_FRAME_RATE_HZ)
        self._last_frame: np.ndarray | None = None
        """The picture last returned by a pixels backend (what `render` shows)."""

    @property
    def action_count(self) -> int:
        return self._action_count

    @property
    def action_meanings(self) -> tuple[str, ...]:
        return self._action_meanings

    @property
    def native_frame_rate_hz(self) -> float:
        return self._frame_rate_hz

    @property
    def observation_kind(self) -> str:
        return self._observation_kind

    @property
    def state_size(self) -> int:
        return self._state_size

    def _frame(self, observation: Any) -> np.ndarray:
        if self._observation_kind == "state":
            # A new array every frame (the clock keeps it), in the dtype observations travel in.
            return np.array(observation, dtype=np.float32)
        frame = observation if _is_rgb(observation) else self._rendered()
        self._last_frame = frame
        return frame

    def _rendered(self) -> np.ndarray:
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

    def render(self) -> np.ndarray:
        if self._observation_kind == "state":
            return self._rendered()
        assert self._last_frame is not None, "render() shows the frame last produced: reset the backend first"
        return self._last_frame

    def read_variables(self) -> dict[str, float]:
        # Gymnasium envs expose their state through rewards and observations, not named variables.
        return {}

    def close(self) -> None:
        self._env.close()


def _is_rgb(frame: object) -> TypeGuard[np.ndarray]:
    return isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3


def make_env(env_id: str, **make_kwargs: Any) -> gym.Env:
    """`gym.make`, with an id that names nothing installed turned into a SettingsError naming RTRL_ENV."""
    try:
        return gym.make(env_id, **make_kwargs)
    except (gym.error.Error, ImportError) as error:
        # ImportError: an id "module:Env-v0" whose module is not installed.
        raise SettingsError(
            f"gymnasium cannot make {env_id!r} ({error}); set {PREFIX}ENV to {ENV_FORMS} naming an "
            "installed environment."
        ) from error


def observation_kind_of(space: gym.Space[Any], observation: str, env_id: str) -> str:
    """What `observation` ("auto", "pixels" or "state") comes to for an env whose observation space is `space`."""
    if observation not in (OBSERVATION_AUTO, *OBSERVATION_NAMES):
        raise ValueError(f"observation {observation!r} is unknown; use one of auto, {', '.join(OBSERVATION_NAMES)}")
    is_vector = isinstance(space, gym.spaces.Box) and len(space.shape) == 1
    if observation == "state" and not is_vector:
        raise SettingsError(
            f"{PREFIX}OBSERVATION=state needs an observation space that is a 1-D Box, but {env_id!r} has {space}; "
            f"set {PREFIX}OBSERVATION to pixels, or unset it to pick by the observation space."
        )
    if observation == OBSERVATION_AUTO:
        return "state" if is_vector else "pixels"
    return observation


def gym_observation_kind(env_id: str, observation: str) -> str:
    """What `observation` comes to for gymnasium id `env_id`; makes the env (without rendering) to read its
    observation space, and closes it. Raises SettingsError when the id names nothing installed."""
    register_ale(required=env_id.startswith("ALE/"))
    env = make_env(env_id)
    try:
        return observation_kind_of(env.observation_space, observation, env_id)
    finally:
        env.close()


def register_ale(required: bool) -> None:
    """Registers the ALE's games with gymnasium (idempotent). ale-py is an extra (rtrl[atari]): without it a
    game that needs it is a SettingsError saying what to install, and any other game runs."""
    try:
        import ale_py
    except ModuleNotFoundError as error:
        message = missing_extra(error, "an Atari game (ale: or gym:ALE/...)")
        if required and message is not None:
            raise SettingsError(message) from error
        if message is None:
            raise
        return
    gym.register_envs(ale_py)


def make_gymnasium_backend(settings: GatewaySettings) -> GymnasiumBackend:
    """Creates the "ale:" or "gym:" backend RTRL_ENV names; raises SettingsError when it names nothing installed."""
    spec: EnvSpec = settings.env
    # "gym:ALE/..." ids need the ALE as much as "ale:" specs do.
    register_ale(required=spec.kind == "ale" or spec.gymnasium_id.startswith("ALE/"))
    if spec.kind == "ale":
        return GymnasiumBackend(
            spec.gymnasium_id,
            frame_rate_hz=ALE_FRAME_RATE_HZ,
            observation=settings.observation,
            obs_type="rgb",
            frameskip=1,
            repeat_action_probability=settings.sticky_actions,
        )
    # Made with rgb_array rendering in either kind: a state env still renders pictures for viewers.
    return GymnasiumBackend(spec.gymnasium_id, observation=settings.observation, render_mode="rgb_array")
