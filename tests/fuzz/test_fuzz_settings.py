"""Settings from hostile environments: any RTRL_* variable a service reads, set to any text, either
gives a working settings object or a SettingsError whose sentence names the variable; never another
exception at start (a traceback instead of "set RTRL_X to ...")."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtrl.config import SettingsError
from services.env_gateway.settings import GatewaySettings
from services.inference.settings import InferenceSettings
from services.learner.settings import LearnerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
_READ = re.compile(r'env_[a-z_]+\(\s*env,\s*"([A-Z0-9_]+)"')


def variables_read_by(settings_file: str) -> list[str]:
    """The RTRL_* names a settings module reads through rtrl.config's env_* helpers."""
    return sorted({f"RTRL_{name}" for name in _READ.findall((REPO_ROOT / settings_file).read_text())})


VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**66), 2**66).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "0", "-1", "1e309", "nan", "true", "0x10", "127.0.0.1:99999", "a,b,,c"]),
)

SERVICES: list[tuple[str, str, Callable[[dict[str, str]], Any]]] = [
    ("env_gateway", "services/env_gateway/settings.py", GatewaySettings.from_env),
    ("inference", "services/inference/settings.py", InferenceSettings.from_env),
    ("learner", "services/learner/settings.py", LearnerSettings.from_env),
]


@pytest.mark.parametrize(("service", "settings_file", "from_env"), SERVICES, ids=[s[0] for s in SERVICES])
def test_any_value_of_any_variable_gives_settings_or_a_settings_error(
    service: str, settings_file: str, from_env: Callable[[dict[str, str]], Any], resilience_ledger
) -> None:
    names = variables_read_by(settings_file)
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
