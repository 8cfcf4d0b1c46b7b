"""The gymnasium backend on real emulators and on CartPole (from its state or its pictures), and the start-up
errors that name what to set."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from rtrl.config import SettingsError
from rtrl.services.env_gateway.backends import make_backend
from rtrl.services.env_gateway.server import Gateway
from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings


def settings_for(spec: str) -> GatewaySettings:
    return replace(GatewaySettings(), env=EnvSpec.parse(spec))


def test_ale_backend_steps_one_frame_at_a_time_at_60_hz() -> None:
    backend = make_backend(settings_for("ale:Pong"))
    try:
        first = backend.reset(seed=0)
        frames = [backend.step(0)[0] for _ in range(3)]
        assert (first.shape, first.dtype) == ((210, 160, 3), np.uint8)
        assert backend.native_frame_rate_hz == 60.0
        assert backend.action_count == len(backend.action_meanings) == 6
        # Each frame is a new array the clock may hand to other threads.
        assert not any(np.shares_memory(a, b) for a, b in itertools.pairwise(frames))
        _frame, reward, terminated, truncated = backend.step(1)
        assert isinstance(reward, float) and not terminated and not truncated
    finally:
        backend.close()


def test_gym_spec_runs_any_gymnasium_id_with_image_observations() -> None:
    backend = make_backend(settings_for("gym:ALE/Breakout-v5"))
    try:
        assert backend.reset(seed=0).shape == (210, 160, 3)
        assert backend.action_meanings[:2] == ("NOOP", "FIRE")
    finally:
        backend.close()


@pytest.mark.parametrize("spec", ["ale:NoSuchGame", "gym:NoSuchEnv-v0"])
def test_unknown_game_fails_naming_rtrl_env(spec: str) -> None:
    with pytest.raises(SettingsError, match="RTRL_ENV"):
        make_backend(settings_for(spec))


def test_env_without_discrete_actions_is_refused() -> None:
    with pytest.raises(SettingsError, match="Discrete"):
        make_backend(settings_for("gym:Pendulum-v1"))


def test_fallback_action_outside_the_games_actions_is_refused() -> None:
    with pytest.raises(SettingsError, match="RTRL_FALLBACK_ACTION"):
        Gateway(replace(settings_for("ale:Pong"), fallback_action=6))


def test_cartpole_from_its_state_gives_new_float32_states_and_renders_pictures_on_demand() -> None:
    backend = make_backend(GatewaySettings.from_env({"RTRL_ENV": "gym:CartPole-v1"}))
    try:
        assert (backend.observation_kind, backend.state_size, backend.native_frame_rate_hz) == ("state", 4, 50.0)
        first = backend.reset(seed=0)
        states = [backend.step(1)[0] for _ in range(3)]
        assert all((s.shape, s.dtype) == ((4,), np.float32) for s in [first, *states])
        assert states[0][1] > first[1]  # pushed right: the cart's velocity grows
        assert not any(np.shares_memory(a, b) for a, b in itertools.pairwise([first, *states]))
        picture = backend.render()
        assert (picture.ndim, picture.shape[2], picture.dtype) == (3, 3, np.uint8)
        assert picture.min() < picture.max()  # a cart on a white background, not a blank frame
    finally:
        backend.close()


def test_cartpole_asked_for_pixels_gives_its_rendered_frames() -> None:
    backend = make_backend(GatewaySettings.from_env({"RTRL_ENV": "gym:CartPole-v1", "RTRL_OBSERVATION": "pixels"}))
    try:
        assert (backend.observation_kind, backend.state_size) == ("pixels", 0)
        frame = backend.reset(seed=0)
        assert (frame.ndim, frame.shape[2], frame.dtype) == (3, 3, np.uint8)
        assert backend.render() is frame  # a pixels backend shows its last frame, rendering nothing more
    finally:
        backend.close()


def test_a_gym_env_with_image_observations_refuses_state() -> None:
    with pytest.raises(SettingsError, match="RTRL_OBSERVATION=state"):
        make_backend(replace(settings_for("gym:ALE/Breakout-v5"), observation="state"))
