"""`rtrl up` killed with SIGKILL leaves no service behind and no port held: each child gets SIGTERM from
the kernel when `rtrl up` dies (rtrl/orphans.py), and a second `rtrl up` on the same ports starts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from up_processes import alive, children_of, port_is_free, up_command

from rtrl.grpc_util import health_status
from rtrl.local_redis import free_port

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal, and /proc to find the children, are Linux's"
)

ORPHAN_TIMEOUT_S = 15.0  # the target is 5 s; the margin is for a loaded CI machine (the test prints the time)


def test_rtrl_up_killed_with_sigkill_leaves_no_service_and_no_port(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gateway", "learner", "inference", "dashboard")}
    log_path = tmp_path / "rtrl-up.log"
    with open(log_path, "w") as log:
        up = subprocess.Popen(
            up_command(tmp_path, ports, 300, "--inference-replicas", "1"), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while health_status(f"127.0.0.1:{ports['gateway']}") != "SERVING":
            assert up.poll() is None, f"rtrl up exited early:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"the gateway did not serve within 120 s:\n{log_path.read_text()}"
            time.sleep(0.2)
        services = ("redis-server", "rtrl.services.learner", "rtrl.services.inference", "rtrl.services.env_gateway")
        services += ("rtrl.services.dashboard",)  # started last, once the gateway serves
        while True:
            children = children_of(up.pid)
            commands = " | ".join(children.values())
            if all(service in commands for service in services):
                break
            assert time.monotonic() < deadline, f"rtrl up's children are {commands}; expected each of {services}"
            time.sleep(0.2)
        redis = [command for command in children.values() if "redis-server" in command]
        ports["redis"] = int(redis[0].split(":")[-1].split()[0])

        up.kill()
        up.wait()
        killed = time.monotonic()
        while any(alive(pid) for pid in children) and time.monotonic() - killed < ORPHAN_TIMEOUT_S:
            time.sleep(0.05)
        survivors = {pid: command for pid, command in children.items() if alive(pid)}
        assert not survivors, f"still running {ORPHAN_TIMEOUT_S} s after rtrl up was killed: {survivors}"
        gone_s = time.monotonic() - killed
        held = {name: port for name, port in ports.items() if not port_is_free(port)}
        assert not held, f"ports still held after every service ended: {held}"
        print(f"every service of rtrl up ended {gone_s:.2f} s after it was killed; no port held")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()

    # The next run on the same ports starts and ends cleanly.
    second_log = tmp_path / "rtrl-up-again.log"
    with open(second_log, "w") as log:
        again = subprocess.run(
            up_command(tmp_path, ports, 3, "--inference-replicas", "1"),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=180,
        )
    assert again.returncode == 0, second_log.read_text()
