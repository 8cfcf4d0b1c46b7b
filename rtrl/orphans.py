"""The processes `rtrl up` starts die with it, however it ends: SIGKILL and a crash included.

A service runs in a session of its own (so that Ctrl-C reaches only `rtrl up`, which stops the services
in order), so nothing would otherwise end it when `rtrl up` is killed: it would keep running and keep
its port, and the next `rtrl up` could not listen there. On Linux each child asks the kernel, between
fork and exec, for SIGTERM when its parent dies (PR_SET_PDEATHSIG); a service then stops as on any
SIGTERM (the learner writes its final checkpoint), and redis-server exits. Elsewhere the kernel has no
such signal: `rtrl up` passes its pid as RTRL_PARENT_PID instead, and each service watches it
(`watch_parent`, started by rtrl/shutdown.py's `stop_on_signals`) and stops as on SIGTERM when it is gone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from rtrl.config import Setting

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
PARENT_PID_VARIABLE = "RTRL_PARENT_PID"
# Set by `rtrl up` for its children, never by hand (rtrl/settings.py lists it among the shared settings).
PARENT_PID_SETTING = Setting(
    "PARENT_PID", str, "", "Set by rtrl up where the kernel cannot stop a child with it: the pid the service watches."
)
PARENT_WATCH_INTERVAL_S = 0.5


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up once, before any fork: the child only calls it.
_PRCTL = _load_prctl()


def dies_with_parent() -> dict[str, Any]:
    """Keyword arguments for `subprocess.Popen` that make the child receive SIGTERM when this process dies
    (Linux; an empty dict elsewhere). Start children from the main thread: the kernel ties the signal to
    the thread that forked, and a thread that ends early would end the child with it."""
    if _PRCTL is None:
        return {}
    prctl = _PRCTL
    parent = os.getpid()

    def set_parent_death_signal() -> None:  # runs in the child, between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return {"preexec_fn": set_parent_death_signal}


def parent_watch_env() -> dict[str, str]:
    """Environment for a child where `dies_with_parent` can do nothing (not Linux): RTRL_PARENT_PID, which
    the child's `watch_parent` watches. Empty on Linux, where the kernel does it."""
    return {} if _PRCTL is not None else {PARENT_PID_VARIABLE: str(os.getpid())}


def watch_parent(
    stop: threading.Event, env: Mapping[str, str] = os.environ, interval_s: float = PARENT_WATCH_INTERVAL_S
) -> threading.Thread | None:
    """Sets `stop` once the process RTRL_PARENT_PID names has ended (checked every `interval_s`); None when
    the variable is unset (a service not started by `rtrl up`, or on Linux)."""
    value = env.get(PARENT_PID_VARIABLE, "")
    if not value:
        return None
    try:
        parent = int(value)
    except ValueError:
        log.warning("%s=%r is not a process id; not watching the parent", PARENT_PID_VARIABLE, value)
        return None

    def watch() -> None:
        while not stop.wait(interval_s):
            if not process_alive(parent):
                log.warning("rtrl up (pid %d) is gone; shutting down", parent)
                stop.set()
                return

    thread = threading.Thread(target=watch, name="rtrl-parent-watch", daemon=True)
    thread.start()
    return thread


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie counts as running until it is reaped)."""
    if sys.platform == "win32":
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: only checks; on Windows it would send Ctrl-C, hence the branch above
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _windows_process_alive(pid: int) -> bool:
    synchronize, wait_timeout = 0x00100000, 0x102
    kernel32 = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(synchronize, False, pid)
    if not handle:
        return False
    try:
        return bool(kernel32.WaitForSingleObject(handle, 0) == wait_timeout)
    finally:
        kernel32.CloseHandle(handle)
