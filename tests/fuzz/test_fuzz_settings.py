"""Settings from hostile environments: any RTRL_* variable a service reads, set to any text, either
gives a working settings object or a SettingsError whose sentence names the variable; never another
exception at start (a traceback instead of "set RTRL_X to ...")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtrl.config import SettingsError
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.services.inference.settings import InferenceSettings
from rtrl.services.learner.settings import LearnerSettings
from rtrl.settings import service_settings


def variables_read_by(service: str) -> list[str]:
    """The RTRL_* names a service's settings table declares (tests/unit/test_settings.py checks that its
    `from_env` reads exactly those)."""
    return sorted(setting.variable for setting in service_settings()[service])


VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**66), 2**66).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "0", "-1", "1e309", "nan", "true", "0x10", "127.0.0.1:99999", "a,b,,c"]),
)

SERVICES: list[tuple[str, Callable[[dict[str, str]], Any]]] = [
    ("gateway", GatewaySettings.from_env),
    ("inference", InferenceSettings.from_env),
    ("learner", LearnerSettings.from_env),
]


@pytest.mark.parametrize(("service", "from_env"), SERVICES, ids=[s[0] for s in SERVICES])
def test_any_value_of_any_variable_gives_settings_or_a_settings_error(
    service: str, from_env: Callable[[dict[str, str]], Any], resilience_ledger
) -> None:
    names = variables_read_by(service)
    assert len(names) >= 10, names

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(env=st.dictionaries(st.sampled_from(names), VALUES, min_size=1, max_size=3))
    def start(env: dict[str, str]) -> None:
        resilience_ledger.inputs[f"{service} settings (RTRL_* values)"] += 1
        try:
            from_env(env)
        except SettingsError as error:
            assert any(name in str(error) for name in env), f"{error!s} names none of {sorted(env)}"

    start()
