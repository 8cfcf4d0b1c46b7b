"""Gateway settings: defaults, the env spec forms, and errors that name the variable to set."""

from __future__ import annotations

import pytest

from rtrl.config import DEFAULT_GATEWAY_PORT, DEFAULT_STREAM, SettingsError
from rtrl.services.env_gateway.settings import FallbackPolicy, GatewaySettings


def test_defaults() -> None:
    settings = GatewaySettings.from_env({})
    assert settings.port == DEFAULT_GATEWAY_PORT
    assert settings.env.gymnasium_id == "ALE/Pong-v5"
    assert (settings.decision_interval_frames, settings.lead_frames, settings.max_staleness_frames) == (4, 2, 6)
    assert settings.fallback_policy is FallbackPolicy.NOOP
    assert settings.observation_shape == (4, 84, 84)
    assert settings.inference_addresses == ()  # replicas are found in the registry
    assert settings.replica_registry == "rtrl:replicas"
    assert (settings.scheduler, settings.interaction) == ("next_idle", "async")
    assert (settings.learner_address, settings.sequential_updates) == ("127.0.0.1:50052", 1)
    assert settings.stream == DEFAULT_STREAM
    assert settings.gateway_id.startswith("gateway-")


def test_values_are_read_with_the_prefix() -> None:
    settings = GatewaySettings.from_env(
        {
            "RTRL_ENV": "gym:CartPole-v1",
            "RTRL_OBSERVATION": "pixels",
            "RTRL_DECISION_INTERVAL_FRAMES": "2",
            "RTRL_LEAD_FRAMES": "3",
            "RTRL_FALLBACK_POLICY": "repeat_last",
            "RTRL_OBS_GRAYSCALE": "false",
            "RTRL_FRAME_STACK": "2",
            "RTRL_INFERENCE_ADDRESSES": "inference:50061, [::1]:7000",
            "RTRL_GATEWAY_ID": "g1",
            "RTRL_SCHEDULER": "max_time",
            "RTRL_INTERACTION": "sequential",
            "RTRL_LEARNER_ADDRESS": "learner:50052",
            "RTRL_SEQUENTIAL_UPDATES": "8",
        }
    )
    assert (settings.env.gymnasium_id, settings.observation) == ("CartPole-v1", "pixels")
    assert settings.max_staleness_frames == 5  # 0 means lead + interval
    assert settings.fallback_policy is FallbackPolicy.REPEAT_LAST
    assert settings.observation_shape == (6, 84, 84)
    assert settings.inference_addresses == ("inference:50061", "[::1]:7000")
    assert settings.gateway_id == "g1"
    assert (settings.scheduler, settings.interaction, settings.learner_address) == (
        "max_time",
        "sequential",
        "learner:50052",
    )
    assert settings.sequential_updates == 8


@pytest.mark.parametrize("spec", ["nonsense", "atari:Pong", "ale:", "gym:"])
def test_unknown_env_spec_names_rtrl_env_and_the_accepted_forms(spec: str) -> None:
    with pytest.raises(SettingsError, match="RTRL_ENV") as raised:
        GatewaySettings.from_env({"RTRL_ENV": spec})
    assert "ale:<Game>" in str(raised.value) and "gym:<gymnasium id>" in str(raised.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FALLBACK_POLICY", "pray"),
        ("LEAD_FRAMES", "-1"),
        ("DECISION_INTERVAL_FRAMES", "0"),
        ("STICKY_ACTIONS", "1.5"),
        ("INFERENCE_ADDRESSES", "no-port"),
        ("FRAME_STACK", "0"),
        ("SCHEDULER", "round_robin"),
        ("INTERACTION", "turn_based"),
        ("LEARNER_ADDRESS", "learner"),
        ("SEQUENTIAL_UPDATES", "0"),
        ("OBSERVATION", "vector"),
    ],
)
def test_invalid_values_fail_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"RTRL_{name}"):
        GatewaySettings.from_env({f"RTRL_{name}": value})


def test_staleness_below_lead_is_refused() -> None:
    with pytest.raises(SettingsError, match="RTRL_MAX_STALENESS_FRAMES"):
        GatewaySettings.from_env({"RTRL_LEAD_FRAMES": "3", "RTRL_MAX_STALENESS_FRAMES": "2"})


def test_a_jitter_reserve_beyond_the_staleness_bound_is_refused() -> None:
    with pytest.raises(SettingsError, match="RTRL_JITTER_RESERVE_FRAMES=7 is above RTRL_MAX_STALENESS_FRAMES=6"):
        GatewaySettings.from_env({"RTRL_MAX_STALENESS_FRAMES": "6", "RTRL_JITTER_RESERVE_FRAMES": "7"})
    settings = GatewaySettings.from_env({"RTRL_MAX_STALENESS_FRAMES": "6", "RTRL_JITTER_RESERVE_FRAMES": "1"})
    assert settings.jitter_reserve_frames == 1


def timing(settings: GatewaySettings) -> tuple[int, int, int, int]:
    """(k, L, S, jitter reserve)."""
    return (
        settings.decision_interval_frames,
        settings.lead_frames,
        settings.max_staleness_frames,
        settings.jitter_reserve_frames,
    )


def test_auto_observation_plays_cartpole_from_its_state_deciding_every_step() -> None:
    settings = GatewaySettings.from_env({"RTRL_ENV": "gym:CartPole-v1"})
    assert settings.observation == "state"
    assert timing(settings) == (1, 1, 2, 0)


def test_auto_observation_plays_ale_pong_from_pixels_with_the_pixel_defaults() -> None:
    settings = GatewaySettings.from_env({"RTRL_ENV": "ale:Pong", "RTRL_OBSERVATION": ""})
    assert settings.observation == "pixels"
    assert timing(settings) == (4, 2, 6, 1)


def test_pixels_asked_for_cartpole_keep_the_pixel_defaults() -> None:
    settings = GatewaySettings.from_env({"RTRL_ENV": "gym:CartPole-v1", "RTRL_OBSERVATION": "pixels"})
    assert settings.observation == "pixels"
    assert timing(settings) == (4, 2, 6, 1)


def test_explicit_timing_wins_over_the_state_defaults() -> None:
    settings = GatewaySettings.from_env(
        {
            "RTRL_ENV": "gym:CartPole-v1",
            "RTRL_DECISION_INTERVAL_FRAMES": "2",
            "RTRL_LEAD_FRAMES": "3",
            "RTRL_JITTER_RESERVE_FRAMES": "1",
        }
    )
    assert settings.observation == "state"
    assert timing(settings) == (2, 3, 5, 1)


@pytest.mark.parametrize("spec", ["ale:Pong", "gym:ALE/Pong-v5"])
def test_state_asked_for_a_game_without_a_state_vector_names_rtrl_observation(spec: str) -> None:
    with pytest.raises(SettingsError, match="RTRL_OBSERVATION=state") as raised:
        GatewaySettings.from_env({"RTRL_ENV": spec, "RTRL_OBSERVATION": "state"})
    assert "RTRL_OBSERVATION to pixels" in str(raised.value)


def test_an_unknown_gym_id_fails_naming_rtrl_env_when_its_observation_is_resolved() -> None:
    with pytest.raises(SettingsError, match="RTRL_ENV"):
        GatewaySettings.from_env({"RTRL_ENV": "gym:NoSuchEnv-v0"})
