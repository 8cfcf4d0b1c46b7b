"""The scheduler registry is the one list of policy names: settings, `rtrl up --scheduler` and the staggering
benchmark offer exactly its names, and nothing outside scheduler.py asks a scheduler for its class."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from rtrl.cli import build_parser
from rtrl.config import SettingsError
from rtrl.services.env_gateway import scheduler as scheduler_module
from rtrl.services.env_gateway.scheduler import SCHEDULERS, Scheduler
from rtrl.services.env_gateway.settings import GatewaySettings

REPO_ROOT = Path(__file__).resolve().parents[2]


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(action for action in parser._actions if flag in action.option_strings)


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return commands.choices[name]


def test_rtrl_up_offers_exactly_the_registered_schedulers() -> None:
    choices = option(subcommand(build_parser(), "up"), "--scheduler").choices
    assert choices is not None and list(choices) == list(SCHEDULERS)


def test_the_staggering_benchmark_measures_exactly_the_registered_schedulers(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_staggering", REPO_ROOT / "bench" / "staggering.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts the repository first on the path
    spec.loader.exec_module(bench)
    schedulers = option(bench.build_parser(), "--schedulers")
    assert schedulers.choices is not None and list(schedulers.choices) == list(SCHEDULERS)
    assert schedulers.default == list(SCHEDULERS)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_the_gateway_settings_accept_every_registered_scheduler(name: str) -> None:
    assert GatewaySettings.from_env({"RTRL_SCHEDULER": name}).scheduler == name


def test_the_gateway_settings_refuse_a_scheduler_that_is_not_registered() -> None:
    with pytest.raises(SettingsError, match="RTRL_SCHEDULER='round_robin' is not valid"):
        GatewaySettings.from_env({"RTRL_SCHEDULER": "round_robin"})


def test_no_code_outside_scheduler_py_asks_a_scheduler_for_its_class() -> None:
    """What a policy does is said by its hooks (scheduler.py); isinstance on a policy class elsewhere
    would bring back the per-policy branches that the hooks replaced."""
    policy_classes = {
        name
        for name, value in vars(scheduler_module).items()
        if isinstance(value, type) and issubclass(value, Scheduler)
    }
    sources = [
        path
        for folder in ("rtrl", "bench")
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if path != REPO_ROOT / "rtrl" / "services" / "env_gateway" / "scheduler.py"
    ]
    found = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in ("isinstance", "issubclass") or len(node.args) != 2:
                continue
            named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if named & policy_classes:
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not found, f"ask the scheduler's hooks instead of its class at {', '.join(found)}"
