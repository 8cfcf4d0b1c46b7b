"""The box game of tests/fixtures/desktop_game (a real X11 game that boxgame.py builds with gcc), as one
module any test can import: pytest puts tests/ on sys.path for tests/conftest.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "boxgame", Path(__file__).resolve().parent / "fixtures" / "desktop_game" / "boxgame.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


boxgame = _load()
