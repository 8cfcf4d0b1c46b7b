"""Loading a Python file that is not on the import path (a fixture's script, a benchmark) as a module, and
GitHub's rule for a Markdown heading's anchor: helpers any test can import (pytest puts tests/ on sys.path
for tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType


def load_file(name: str, path: Path) -> ModuleType:
    """The module in `path`, run once under `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (hyphens and underscores kept),
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
