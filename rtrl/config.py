"""Reading settings from environment variables, with errors that say what to set.

Every service has one frozen settings object built by `from_env()`; the variables share the `RTRL_`
prefix so that `rtrl up`, docker compose and a shell all configure the services the same way. Each
service declares its variables in one table of `Setting`s (name, type, default, one line of meaning):
`from_env` reads through it, and rtrl/settings.py builds the run file, `--help` and docs/settings.md
from the same tables. Checks that several services share (ports, the model) are here too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

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
# The networks the learner trains and inference serves (rtrl/models.py builds them); "" as RTRL_MODEL_ARCH
# leaves the choice to rtrl (Nature CNN for images, MLP otherwise). Here rather than in rtrl/models.py,
# which imports torch, so that every service's settings table loads without it.
MODEL_ARCHS = ("nature_cnn", "mlp", "impala_cnn")
MODEL_ARCH_CHOICES = ("", *MODEL_ARCHS)

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


def checked_metrics_port(port: int, name: str) -> int:
    """A Prometheus /metrics port read from RTRL_<name>: METRICS_DISABLED when unset or negative; 0 picks a
    free port."""
    if port > MAX_PORT:
        raise SettingsError(
            f"{PREFIX}{name}={port} is too large; set it to a port from 1 to {MAX_PORT}, 0 for a free one, "
            "or -1 to turn the metrics endpoint off."
        )
    return max(port, METRICS_DISABLED)


def checked_model(arch: str, width: int) -> tuple[str, int]:
    """RTRL_MODEL_ARCH and RTRL_MODEL_WIDTH, which the learner builds its network from (and inference its
    fresh policy before the first checkpoint); raises SettingsError for a combination no network has."""
    if width != 1 and arch != "impala_cnn":
        raise SettingsError(
            f"{PREFIX}MODEL_WIDTH={width} only sizes impala_cnn, but {PREFIX}MODEL_ARCH is "
            f"{arch or 'unset'}; set it to 1, or set {PREFIX}MODEL_ARCH=impala_cnn."
        )
    return arch, width


def environ() -> Mapping[str, str]:
    return os.environ


_DECLARED: Any = object()


@dataclass(frozen=True)
class Setting:
    """One RTRL_* variable a service reads: the one declaration its reader, the run file's key, `--help` and
    docs/settings.md all come from."""

    name: str
    """The variable without its prefix: "GATEWAY_PORT" is RTRL_GATEWAY_PORT, and gateway_port in a run file."""
    type: type
    """int, float, bool, str, or tuple for a comma-separated list."""
    default: Any
    """The value when the variable is unset or empty."""
    meaning: str
    """One line: what it changes."""
    minimum: float | None = None
    """Smallest value accepted (int and float settings)."""
    choices: tuple[str, ...] = ()
    """The values accepted (a str setting; matched without regard to case)."""
    default_text: str = ""
    """Shown as the default instead of `default` where the service works it out at start."""

    @property
    def variable(self) -> str:
        return PREFIX + self.name

    @property
    def key(self) -> str:
        """Its key in a run file's section."""
        return self.name.lower()

    def read(self, env: Mapping[str, str], default: Any = _DECLARED) -> Any:
        """The value in `env`, parsed and checked by the declared type; `default` replaces the declared one
        where the service works it out (a profile's frame stack, say). Raises SettingsError naming it."""
        value = self.default if default is _DECLARED else default
        if self.choices:
            return env_choice(env, self.name, value, self.choices)
        if self.type is bool:
            return env_bool(env, self.name, value)
        if self.type is int:
            return env_int(env, self.name, value, None if self.minimum is None else int(self.minimum))
        if self.type is float:
            return env_float(env, self.name, value, self.minimum)
        if self.type is tuple:
            return env_list(env, self.name, value)
        return env_str(env, self.name, value)

    def type_text(self) -> str:
        """The type as `--help` and docs/settings.md show it."""
        if self.choices:
            return " | ".join(choice or '""' for choice in self.choices)
        names = {bool: "bool", int: "int", float: "float", tuple: "list", str: "str"}
        return names[self.type]

    def default_shown(self) -> str:
        if self.default_text:
            return self.default_text
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.default, float):
            return f"{self.default:g}"
        if isinstance(self.default, tuple):
            return ",".join(self.default) or '""'
        return str(self.default) if self.default != "" else '""'


class SettingsTable:
    """The settings a service (or a part shared by every service) reads, by name, in the order declared."""

    def __init__(self, *settings: Setting) -> None:
        self._by_name = {setting.name: setting for setting in settings}
        assert len(self._by_name) == len(settings), "a setting is declared twice"

    def __iter__(self) -> Iterator[Setting]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Setting:
        return self._by_name[name]

    def read(self, env: Mapping[str, str], name: str, default: Any = _DECLARED) -> Any:
        """RTRL_<name> from `env` as declared; a KeyError for a name the table does not declare."""
        return self._by_name[name].read(env, default)
