"""Where the kernel cannot end a service with `rtrl up` (not Linux), the service watches RTRL_PARENT_PID and
stops as on SIGTERM once that process is gone (rtrl/orphans.py). Exercised here with real processes: the
watch itself in this process, and a real service whose "parent" is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from rtrl.local_redis import free_port
from rtrl.orphans import PARENT_PID_VARIABLE, process_alive, watch_parent

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_watch_stops_once_the_parent_is_gone_and_not_before() -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop = threading.Event()
    try:
        thread = watch_parent(stop, {PARENT_PID_VARIABLE: str(parent.pid)}, interval_s=0.05)
        assert thread is not None
        assert not stop.wait(0.3)  # the parent runs: nothing happens
        parent.kill()
        parent.wait()  # reaped: a zombie would still count as running
        assert stop.wait(5.0)
        assert not process_alive(parent.pid)
    finally:
        stop.set()
        if parent.poll() is None:
            parent.kill()


def test_without_the_variable_or_with_nonsense_there_is_no_watch() -> None:
    assert watch_parent(threading.Event(), {}) is None
    assert watch_parent(threading.Event(), {PARENT_PID_VARIABLE: "not-a-pid"}) is None


def test_a_service_stops_when_the_process_named_as_its_parent_ends(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        PARENT_PID_VARIABLE: str(parent.pid),
        "RTRL_DASHBOARD_PORT": str(free_port()),
        "RTRL_DASHBOARD_GATEWAYS": f"127.0.0.1:{free_port()}",
    }
    log_path = tmp_path / "dashboard.log"
    with open(log_path, "wb") as log:
        service = subprocess.Popen([sys.executable, "-m", "rtrl.services.dashboard"], env=env, stdout=log, stderr=log)
    try:
        time.sleep(3)
        assert service.poll() is None, log_path.read_text()
        parent.kill()
        parent.wait()
        assert service.wait(timeout=30) == 0, log_path.read_text()
        assert f"rtrl up (pid {parent.pid}) is gone; shutting down" in log_path.read_text()
    finally:
        for process in (service, parent):
            if process.poll() is None:
                process.kill()
                process.wait()
