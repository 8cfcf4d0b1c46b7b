"""Graceful shutdown on SIGTERM (docker stop, kubelet) and SIGINT (Ctrl-C), the same way in every service."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from rtrl.orphans import watch_parent

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """Sets `stop` on SIGTERM or SIGINT, and when the `rtrl up` that started this service is gone where the
    kernel cannot signal that (rtrl/orphans.py); returns a function that puts the previous handlers back.

    Python delivers signals to the main thread only, and only it may install handlers: from another
    thread (a test running a service in-process) nothing is installed and `stop` is the only way out.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    watch_parent(stop)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore
