"""docker-compose.yml (and its overrides) against the services' own settings objects: every RTRL_*
variable set on a service is one its `from_env` reads and accepts, and the ports, commands, health
checks and volumes agree with the settings that result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_settings import HTTP_COMMANDS, METRICS_COMMANDS, ROOT, read_settings

from rtrl.cli import SERVICES
from rtrl.services.env_gateway.settings import DEFAULT_ENV

BASE = ROOT / "docker-compose.yml"
OVERRIDES = sorted(path for path in ROOT.glob("docker-compose.*.yml"))
# Values for compose's own variables that have no default in the files (the hybrid file's HYBRID_HOST).
SAMPLE_VARIABLES = {"HYBRID_HOST": "192.0.2.10"}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?message} with SAMPLE_VARIABLES, else the default."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, op, arg = match.group("name", "op", "arg")
            if name in SAMPLE_VARIABLES:
                return SAMPLE_VARIABLES[name]
            assert op and "-" in op, f"${{{name}}} has no default; add a sample value to SAMPLE_VARIABLES"
            return arg

        return INTERPOLATION.sub(substitute, value)
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    return value


def load(path: Path) -> dict[str, Any]:
    return interpolate(yaml.safe_load(path.read_text()))


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def services_of(*paths: Path) -> dict[str, dict[str, Any]]:
    """The services as compose runs them with `-f` for each path in order, `extends` resolved."""
    services: dict[str, Any] = {}
    for path in paths:
        services = merge(services, load(path).get("services") or {})
    for name, service in services.items():
        extends = service.get("extends")
        if extends:
            source = services_of(ROOT / extends["file"]) if "file" in extends else services
            services[name] = merge(source[extends["service"]], {k: v for k, v in service.items() if k != "extends"})
    return services


def rtrl_command(service: Mapping[str, Any]) -> str | None:
    """The `rtrl` subcommand a service runs (the image's entrypoint is `rtrl`), or None for others."""
    command = service.get("command")
    if isinstance(command, list) and command and command[0] in SERVICES:
        return command[0]
    return None


def rtrl_services(services: Mapping[str, dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {name: (command, s) for name, s in services.items() if (command := rtrl_command(s))}


BASE_SERVICES = services_of(BASE)


def test_the_image_runs_rtrl_so_commands_name_services():
    entrypoint = re.findall(r"^ENTRYPOINT\s+(.*)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert entrypoint == ['["rtrl"]'], "docker-compose.yml's commands are `rtrl` subcommands"
    commands = {command for command, _ in rtrl_services(BASE_SERVICES).values()}
    assert commands == set(SERVICES), f"compose runs {sorted(commands)}; every service command should run once"


@pytest.mark.parametrize("files", [[BASE], *([BASE, override] for override in OVERRIDES)], ids=lambda f: f[-1].name)
def test_every_rtrl_variable_is_a_setting_its_service_reads(files):
    for name, (command, service) in rtrl_services(services_of(*files)).items():
        read = read_settings(command, environment(service))
        assert not read.unread, (
            f"{files[-1].name}: service {name} (rtrl {command}) sets {sorted(read.unread)}, which its settings "
            "never read: a typo, or a setting of another service"
        )


def test_health_checks_ask_each_service_on_its_own_port():
    for name, (command, service) in rtrl_services(BASE_SERVICES).items():
        settings = read_settings(command, environment(service)).settings
        if command in HTTP_COMMANDS:
            [check] = [part for part in service["healthcheck"]["test"] if "urlopen" in part]
            assert f"'http://127.0.0.1:{settings.port}/healthz'" in check, name
        else:
            assert service["healthcheck"]["test"] == ["CMD", "rtrl", "health", f"127.0.0.1:{settings.port}"], name
        # Reachable from the other containers (and from the published port).
        assert settings.host == "0.0.0.0", f"{name} must bind 0.0.0.0 in its container, not {settings.host}"


def test_only_the_gateway_and_dashboard_ports_are_published_on_loopback():
    published = {name: service["ports"] for name, service in BASE_SERVICES.items() if service.get("ports")}
    assert sorted(published) == ["dashboard", "env_gateway"]
    for name, command in (("env_gateway", "gateway"), ("dashboard", "dashboard")):
        settings = read_settings(command, environment(BASE_SERVICES[name])).settings
        [port] = published[name]
        host, _host_port, container_port = str(port).split(":")
        assert host == "127.0.0.1"
        assert int(container_port) == settings.port


def test_the_dashboard_watches_the_compose_gateway_learner_and_registry():
    dashboard = read_settings("dashboard", environment(BASE_SERVICES["dashboard"])).settings
    gateway = read_settings("gateway", environment(BASE_SERVICES["env_gateway"])).settings
    learner = read_settings("learner", environment(BASE_SERVICES["learner"])).settings
    assert dashboard.gateways == (f"env_gateway:{gateway.port}",)
    assert dashboard.learner_address == f"learner:{learner.port}"
    assert (dashboard.redis_url, dashboard.replica_registry) == (gateway.redis_url, gateway.replica_registry)


def test_the_gateway_runs_the_default_game_and_finds_replicas_in_the_registry():
    gateway = read_settings("gateway", environment(BASE_SERVICES["env_gateway"])).settings
    inference = read_settings("inference", environment(BASE_SERVICES["inference"])).settings
    assert gateway.env.spec == DEFAULT_ENV
    assert gateway.inference_addresses == (), "replicas come from the registry, which lists only ready ones"
    assert inference.redis_url == gateway.redis_url, "replicas must register in the Redis the gateway reads"
    assert inference.replica_registry == gateway.replica_registry
    assert inference.redis_url.startswith("redis://redis:")


def test_inference_scales_and_reads_the_checkpoints_the_learner_writes():
    inference, learner = BASE_SERVICES["inference"], BASE_SERVICES["learner"]
    # podman-compose honours deploy.replicas only with an explicit mode.
    assert inference["deploy"] == {"mode": "replicated", "replicas": 2}
    assert "container_name" not in inference and not inference.get("ports"), "a fixed name or port cannot scale"
    checkpoint_dir = str(read_settings("learner", environment(learner)).settings.checkpoint_dir)
    assert read_settings("inference", environment(inference)).settings.checkpoint_dir == checkpoint_dir
    assert learner["volumes"] == [f"checkpoints:{checkpoint_dir}"]
    assert inference["volumes"] == [f"checkpoints:{checkpoint_dir}:ro"]


def test_the_gateway_starts_after_everything_it_uses_is_healthy():
    depends = BASE_SERVICES["env_gateway"]["depends_on"]
    assert depends == {name: {"condition": "service_healthy"} for name in ("redis", "learner", "inference")}
    assert all("healthcheck" in service for name, service in BASE_SERVICES.items() if "profiles" not in service)


def test_every_service_serves_metrics_on_a_port_exposed_only_inside_the_network():
    served = set()
    for name, (command, service) in rtrl_services(BASE_SERVICES).items():
        if command not in METRICS_COMMANDS:
            continue
        settings = read_settings(command, environment(service)).settings
        assert settings.metrics_port > 0, f"{name} must serve /metrics on a fixed port for Prometheus to scrape"
        # A replica also exposes its act socket, on the port it binds (the gateway dials the port it names).
        act_socket = [str(settings.act_socket_port)] if command == "inference" else []
        exposed = [*act_socket, str(settings.metrics_port)]
        assert service.get("expose") == exposed, f"{name} must expose its metrics port"
        published = [str(port).rsplit(":", 1)[-1] for port in service.get("ports", [])]
        assert str(settings.metrics_port) not in published, f"{name}'s metrics are for the compose network only"
        served.add(command)
    assert served == METRICS_COMMANDS
