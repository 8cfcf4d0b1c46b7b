"""The gymnasium backend on real emulators, and the start-up errors that name what to set."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from rtrl.config import SettingsError
from services.env_gateway.backends import make_backend
from services.env_gateway.server import Gateway
from services.env_gateway.settings import EnvSpec, GatewaySettings


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
