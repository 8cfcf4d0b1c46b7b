"""What the deployment tests share: which settings object each `rtrl` command reads, and which RTRL_*
variables its `from_env` really reads for a given environment.

Reading is observed, not parsed from source: `from_env` gets a mapping that records every name it
looks up, so a variable counts as a setting exactly when the service's own code asks for it (with
this environment: a setting that only matters for another game or algorithm is not read either).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtrl.cli import SERVICES
from rtrl.config import PREFIX
from rtrl.services.dashboard.settings import DashboardSettings
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.services.inference.settings import InferenceSettings
from rtrl.services.learner.settings import LearnerSettings

ROOT = Path(__file__).resolve().parents[2]

SETTINGS_BY_COMMAND: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "gateway": GatewaySettings.from_env,
    "inference": InferenceSettings.from_env,
    "learner": LearnerSettings.from_env,
    "dashboard": DashboardSettings.from_env,
}
# Commands that serve HTTP, not gRPC: health is GET /healthz on their port instead of grpc.health.v1.
HTTP_COMMANDS = {"dashboard"}
# Commands that serve Prometheus /metrics on RTRL_<SERVICE>_METRICS_PORT (docs/metrics.md).
METRICS_COMMANDS = {"gateway", "inference", "learner"}


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.looked_up: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.looked_up.add(name)
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        self.looked_up.add(name)
        return self._values.get(name, default)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.looked_up.add(name)
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass(frozen=True)
class SettingsRead:
    settings: Any
    """The settings object `from_env` built (it raised if a value was invalid)."""
    unread: set[str]
    """RTRL_* names given but never looked up: not settings of this service."""


def read_settings(command: str, environment: Mapping[str, str]) -> SettingsRead:
    """Builds the settings of `rtrl COMMAND` from `environment` and reports the RTRL_* names it ignored."""
    assert command in SERVICES, f"`rtrl {command}` is not a service command; expected one of {sorted(SERVICES)}"
    env = RecordingEnv(environment)
    settings = SETTINGS_BY_COMMAND[command](env)
    given = {name for name in environment if name.startswith(PREFIX)}
    return SettingsRead(settings=settings, unread=given - env.looked_up)
