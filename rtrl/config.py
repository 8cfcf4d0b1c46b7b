"""Reading settings from environment variables, with errors that say what to set.

Every service has one frozen settings object built by `from_env()`; the variables share the `RTRL_`
prefix so that `rtrl up`, docker compose and a shell all configure the services the same way.
Settings that several services share (Redis, checkpoints, stream) are read by the helpers here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

PREFIX = "RTRL_"

DEFAULT_STREAM = "rtrl:transitions"
DEFAULT_CHECKPOINT_DIR = "checkpoints"
DEFAULT_GATEWAY_PORT = 50051
DEFAULT_LEARNER_PORT = 50052
DEFAULT_INFERENCE_PORT = 50061
DEFAULT_DASHBOARD_PORT = 8050
DEFAULT_HOST = "127.0.0.1"
# RTRL_*_METRICS_PORT: unset, empty or negative turns the Prometheus endpoint off; 0 picks a free port.
METRICS_DISABLED = -1
MAX_PORT = 65535

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing or has a value the service cannot use. The message says what to set."""


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _parse(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r} is not valid; set it to {expected}.") from None


def _number(raw: str) -> float:
    value = float(raw)
    if math.isnan(value):
        raise ValueError("not a number")
    return value


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _raw(env, name)
    return default if raw is None else raw


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int | None = None) -> int:
    value = _parse(env, name, default, int, "an integer")
    if minimum is not None and value < minimum:
        raise SettingsError(f"{PREFIX}{name}={value} is too small; set it to {minimum} or more.")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float | None = None) -> float:
    value = _parse(env, name, default, _number, "a number")
    if minimum is not None and value < minimum:
        raise SettingsError(f"{PREFIX}{name}={value} is too small; set it to {minimum} or more.")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    def parse(raw: str) -> bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)

    return _parse(env, name, default, parse, "true or false")


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(env, name, default).lower()
    if value not in choices:
        raise SettingsError(f"{PREFIX}{name}={value!r} is not valid; set it to one of: {', '.join(choices)}.")
    return value


def env_list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _raw(env, name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def env_metrics_port(env: Mapping[str, str], name: str) -> int:
    """A Prometheus /metrics port: METRICS_DISABLED when unset, empty or negative; 0 picks a free port."""
    port = env_int(env, name, METRICS_DISABLED)
    if port > MAX_PORT:
        raise SettingsError(
            f"{PREFIX}{name}={port} is too large; set it to a port from 1 to {MAX_PORT}, 0 for a free one, "
            "or -1 to turn the metrics endpoint off."
        )
    return max(port, METRICS_DISABLED)


def environ() -> Mapping[str, str]:
    return os.environ
