"""Every RTRL_* setting rtrl reads, gathered from the tables that declare them, and what is made from them:
the check that refuses a name nothing reads ("did you mean ...?"), the run file of `rtrl up --config`, the
settings `rtrl <service> --help` lists, and docs/settings.md (rtrl/settings_doc.py).

Each table lives beside the code that reads it: `SETTINGS` in rtrl/services/<service>/settings.py, the transport
security every service shares in rtrl/security.py, RTRL_CPUS in rtrl/cpus.py, and the learner's
hyperparameters, made from each algorithm's config dataclass (rtrl/services/learner/settings.py).
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtrl.config import PREFIX, Setting, SettingsError, SettingsTable
from rtrl.cpus import CPUS_SETTING
from rtrl.orphans import PARENT_PID_SETTING
from rtrl.security import SETTINGS as SECURITY_SETTINGS

# As in `rtrl <service>`, and the run file's sections.
SERVICES = ("gateway", "inference", "learner", "dashboard")
# [up]: rtrl up's own options; [all]: a setting for every service; then one section per service.
RUN_FILE_SECTIONS = ("up", "all", *SERVICES)

# Read by every service (and, for security, by every client rtrl makes).
SHARED_SETTINGS = SettingsTable(*SECURITY_SETTINGS, CPUS_SETTING, PARENT_PID_SETTING)
# docker compose's own variables (docker-compose.yml): no service reads them, but a shell that runs compose
# may pass them on to `rtrl up`.
COMPOSE_SETTINGS = SettingsTable(
    Setting("IMAGE", str, "rtrl:latest", "docker compose: the image the services run."),
    Setting("GATEWAY_IMAGE", str, "rtrl-gateway:latest", "docker compose: the gateway's image (no torch)."),
)


@functools.cache
def service_settings() -> dict[str, SettingsTable]:
    """Each service's own settings (without the learner's hyperparameters), by service."""
    # Imported here, not at the top: each of these modules imports this one for check_environment.
    from rtrl.services.dashboard.settings import SETTINGS as dashboard
    from rtrl.services.env_gateway.settings import SETTINGS as gateway
    from rtrl.services.inference.settings import SETTINGS as inference
    from rtrl.services.learner.settings import SETTINGS as learner

    return {"gateway": gateway, "inference": inference, "learner": learner, "dashboard": dashboard}


@functools.cache
def hyperparameter_settings() -> dict[str, SettingsTable]:
    """The learner's RTRL_<ALGORITHM>_<FIELD> settings, by algorithm. Imports the algorithms, so torch."""
    from rtrl.services.learner.algorithms import ALGORITHMS
    from rtrl.services.learner.settings import hyperparameter_settings as table

    return {name: table(algorithm.config_class, f"{name.upper()}_") for name, algorithm in ALGORITHMS.items()}


def _algorithm_prefixes() -> tuple[str, ...]:
    from rtrl.services.learner.settings import ALGORITHM_NAMES

    return tuple(f"{PREFIX}{name.upper()}_" for name in ALGORITHM_NAMES)


@functools.cache
def _base_variables() -> frozenset[str]:
    tables = [*service_settings().values(), SHARED_SETTINGS, COMPOSE_SETTINGS]
    return frozenset(setting.variable for table in tables for setting in table)


def _hyperparameter_variables() -> frozenset[str]:
    return frozenset(setting.variable for table in hyperparameter_settings().values() for setting in table)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ " did you mean X?" for the known name closest to `name`, or "" when none is close. The RTRL_ every
    variable starts with is left out of the comparison, or it would make any two names look alike."""
    by_stem = {candidate.removeprefix(PREFIX): candidate for candidate in known}
    matches = difflib.get_close_matches(name.removeprefix(PREFIX), sorted(by_stem), n=1, cutoff=0.6)
    return f" did you mean {by_stem[matches[0]]}?" if matches else ""


def check_variable(name: str, hyperparameters: bool = True) -> None:
    """Raises SettingsError when no part of rtrl reads the variable `name` (RTRL_...). With `hyperparameters`
    False (or without torch), RTRL_<ALGORITHM>_* names pass unchecked: knowing them means importing the algorithms
    and so torch, which the gateway and the dashboard do without; the learner and `rtrl up` check them."""
    known = _base_variables()
    if name in known:
        return
    if hyperparameters:
        try:
            known = known | _hyperparameter_variables()
        except ModuleNotFoundError:  # no torch (a gateway-only install): as the gateway checks
            hyperparameters = False
    if name in known or (not hyperparameters and name.startswith(_algorithm_prefixes())):
        return
    suggestion = did_you_mean(name, known)
    if suggestion:
        raise SettingsError(f"{name} is not a setting;{suggestion}")
    raise SettingsError(f"{name} is not a setting of any rtrl service; unset it (docs/settings.md lists them all).")


def check_environment(env: Mapping[str, str], hyperparameters: bool) -> None:
    """Raises SettingsError for the first RTRL_* variable in `env` that no part of rtrl reads (a typo would
    otherwise do nothing). A service calls it first thing in `from_env`; see `check_variable`."""
    for name in sorted(env):
        if name.startswith(PREFIX):
            check_variable(name, hyperparameters)


# -- the run file -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFile:
    """A run file of `rtrl up --config`: TOML with [up] (rtrl up's options), [all] and one section per service
    (settings, keyed by the variable's name without RTRL_ in lower case). docs/settings.md shows one."""

    path: Path
    up: dict[str, Any] = field(default_factory=dict)
    """[up] as written: rtrl up's options by name (checked by the CLI, which knows them)."""
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    """[all] and each service's section as environment variables: {section: {RTRL_NAME: value}}."""

    def service_env(self, service: str) -> dict[str, str]:
        """The variables the file gives `service`: [all], then its own section over it."""
        return {**self.env.get("all", {}), **self.env.get(service, {})}


def _as_text(value: Any) -> str:
    """A TOML value as the environment variable would hold it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_as_text(item) for item in value)
    return str(value)


def _keys(section: str, key: str) -> dict[str, Setting]:
    """The settings a run file's [section] accepts, by key. The learner's hyperparameters only when `key` looks
    like one: knowing them imports torch."""
    if section == "all":
        tables: list[Iterable[Setting]] = [*service_settings().values(), SHARED_SETTINGS]
    else:
        tables = [service_settings()[section], [CPUS_SETTING]]
    if section in ("all", "learner") and key.upper().startswith(tuple(p[len(PREFIX) :] for p in _algorithm_prefixes())):
        tables += hyperparameter_settings().values()
    return {setting.key: setting for table in tables for setting in table}


def _setting_in_section(path: Path, section: str, key: str) -> Setting:
    """The setting `key` names in [section], or SettingsError saying where it belongs or what was meant."""
    accepted = _keys(section, key)
    if key in accepted:
        return accepted[key]
    if key in {setting.key for setting in SHARED_SETTINGS}:
        raise SettingsError(
            f"{path}: [{section}] {key} is a setting every service shares, and rtrl up's own clients; move it to [all]."
        )
    owners = [service for service in SERVICES if key in _keys(service, key)]
    if owners:
        raise SettingsError(f"{path}: [{section}] {key} is not a {section} setting; move it to [{owners[0]}].")
    suggestion = did_you_mean(key, accepted)
    raise SettingsError(f"{path}: [{section}] {key} is not a setting;{suggestion or ' docs/settings.md lists them.'}")


def load_run_file(path: Path) -> RunFile:
    """Reads and checks a run file: every section known, every key a setting of its section with a value of
    its type. Raises SettingsError with a sentence naming the file, the section and the key."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise SettingsError(
            f"run file {path} cannot be read ({error.strerror or error}); pass a TOML file to --config."
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SettingsError(
            f"{path} is not valid TOML ({error}); fix it (docs/settings.md shows a run file)."
        ) from None
    run_file = RunFile(path)
    for section, values in data.items():
        if section not in RUN_FILE_SECTIONS or not isinstance(values, dict):
            suggestion = did_you_mean(section, RUN_FILE_SECTIONS) if section not in RUN_FILE_SECTIONS else ""
            sections = ", ".join(f"[{name}]" for name in RUN_FILE_SECTIONS)
            raise SettingsError(
                f"{path}: {section} is not a section of a run file;{suggestion or ''} the sections are {sections}."
            )
        if section == "up":
            run_file.up.update(values)
            continue
        env = run_file.env.setdefault(section, {})
        for key, value in values.items():
            setting = _setting_in_section(path, section, key)
            if isinstance(value, dict):
                raise SettingsError(f"{path}: [{section}] {key} is a table; give it a single value.")
            text = _as_text(value)
            try:
                setting.read({setting.variable: text})
            except SettingsError as error:
                raise SettingsError(f"{path}: [{section}] {key} = {value!r}: {error}") from None
            env[setting.variable] = text
    return run_file


# -- --help ---------------------------------------------------------------------------------------------


def _help_lines(title: str, table: Iterable[Setting]) -> list[str]:
    lines = [title]
    for setting in table:
        lines.append(f"  {setting.variable} ({setting.type_text()}, default {setting.default_shown()})")
        lines.append(f"      {setting.meaning}")
    return lines


def settings_help(services: Iterable[str]) -> str:
    """The settings of `services` (and those every service shares) as `rtrl <service> --help` ends."""
    lines: list[str] = []
    for service in services:
        lines += _help_lines(
            f"settings of rtrl {service} (environment variables; in a run file: under [{service}], the name in "
            "lower case without RTRL_):",
            service_settings()[service],
        )
        if service == "learner":
            for algorithm, table in hyperparameter_settings().items():
                lines += ["", *_help_lines(f"hyperparameters of {algorithm} (under [learner] too):", table)]
        lines.append("")
    lines += _help_lines("settings every service shares (in a run file: under [all]):", SHARED_SETTINGS)
    lines.append("")
    lines.append("docs/settings.md lists them all, with the order in which they override each other.")
    return "\n".join(lines)
