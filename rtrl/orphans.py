"""The processes `rtrl up` starts die with it, however it ends: SIGKILL and a crash included.

A service runs in a session of its own (so that Ctrl-C reaches only `rtrl up`, which stops the services
in order), so nothing would otherwise end it when `rtrl up` is killed: it would keep running and keep
its port, and the next `rtrl up` could not listen there. On Linux each child asks the kernel, between
fork and exec, for SIGTERM when its parent dies (PR_SET_PDEATHSIG); a service then stops as on any
SIGTERM (the learner writes its final checkpoint), and redis-server exits. Elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1


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
