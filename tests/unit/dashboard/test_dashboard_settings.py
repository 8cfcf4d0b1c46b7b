"""The dashboard's settings from RTRL_* variables: defaults on loopback, and sentences for bad values."""

from __future__ import annotations

import pytest

from rtrl.config import SettingsError
from rtrl.services.dashboard.settings import DashboardSettings


def test_defaults_serve_on_loopback_and_watch_the_local_stack():
    settings = DashboardSettings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8050)
    assert settings.gateways == ("127.0.0.1:50051",)
    assert settings.learner_address == "127.0.0.1:50052"
    assert settings.redis_url == ""  # no registry unless told where it is
    assert settings.refresh_hz >= 5.0


def test_the_recordings_directory_is_read_and_is_off_unless_set():
    assert DashboardSettings.from_env({}).recordings_dir == ""
    settings = DashboardSettings.from_env({"RTRL_DASHBOARD_RECORDINGS_DIR": "runs/x/recordings"})
    assert settings.recordings_dir == "runs/x/recordings"


def test_several_gateways_and_replicas_are_read_as_lists():
    settings = DashboardSettings.from_env(
        {
            "RTRL_DASHBOARD_GATEWAYS": "game-a:50051, game-b:50051",
            "RTRL_INFERENCE_ADDRESSES": "10.0.0.5:50061",
            "RTRL_REDIS_URL": "redis://redis:6379/0",
            "RTRL_DASHBOARD_FRAME_EVERY": "2",
        }
    )
    assert settings.gateways == ("game-a:50051", "game-b:50051")
    assert settings.inference_addresses == ("10.0.0.5:50061",)
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.frame_every == 2


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("RTRL_DASHBOARD_GATEWAYS", "gateway", "RTRL_DASHBOARD_GATEWAYS entry 'gateway' is not host:port"),
        ("RTRL_DASHBOARD_GATEWAYS", ",", "RTRL_DASHBOARD_GATEWAYS is empty"),
        ("RTRL_LEARNER_ADDRESS", "learner:0", "RTRL_LEARNER_ADDRESS entry 'learner:0' is not host:port"),
        ("RTRL_DASHBOARD_PORT", "70000", "RTRL_DASHBOARD_PORT=70000 is not a TCP port"),
        ("RTRL_DASHBOARD_REFRESH_HZ", "100", "RTRL_DASHBOARD_REFRESH_HZ=100.0 polls the services too often"),
        ("RTRL_DASHBOARD_REFRESH_HZ", "0.5", "RTRL_DASHBOARD_REFRESH_HZ=0.5 is too small"),
        ("RTRL_REDIS_URL", "localhost:6379", "RTRL_REDIS_URL: 'localhost:6379' is not a Redis URL"),
    ],
)
def test_bad_values_fail_with_a_sentence_naming_the_variable(variable, value, says):
    with pytest.raises(SettingsError, match="^" + says.replace("(", r"\(").replace(".", r"\.")):
        DashboardSettings.from_env({variable: value})
