"""`rtrl up` killed with SIGKILL leaves no service behind and no port held: each child gets SIGTERM from
the kernel when `rtrl up` dies (rtrl/orphans.py), and a second `rtrl up` on the same ports starts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtrl.grpc_util import health_status
from rtrl.local_redis import free_port

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal, and /proc to find the children, are Linux's"
)

ORPHAN_TIMEOUT_S = 15.0  # the target is 5 s; the margin is for a loaded CI machine (the test prints the time)


def up_command(tmp: Path, ports: dict[str, int], duration_s: float) -> list[str]:
    return [
        sys.executable, "-m", "rtrl.cli", "up",
        "--env", "gym:CartPole-v1",
        "--duration", str(duration_s),
        "--inference-replicas", "1",
        "--gateway-port", str(ports["gateway"]),
        "--learner-port", str(ports["learner"]),
        "--inference-base-port", str(ports["inference"]),
        "--dashboard-port", str(ports["dashboard"]),
        "--checkpoint-dir", str(tmp / "checkpoints"),
        "--run-dir", str(tmp / "runs"),
    ]  # fmt: skip


def children_of(pid: int) -> dict[int, str]:
    """Live (not zombie) processes whose parent is `pid`: their command lines."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # it ended while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(stat.parent.name)] = cmdline.strip()
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie holds no port; whoever adopted it reaps it


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as every server here binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_rtrl_up_killed_with_sigkill_leaves_no_service_and_no_port(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gateway", "learner", "inference", "dashboard")}
    log_path = tmp_path / "rtrl-up.log"
    with open(log_path, "w") as log:
        up = subprocess.Popen(up_command(tmp_path, ports, 300), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while health_status(f"127.0.0.1:{ports['gateway']}") != "SERVING":
            assert up.poll() is None, f"rtrl up exited early:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"the gateway did not serve within 120 s:\n{log_path.read_text()}"
            time.sleep(0.2)
        services = ("redis-server", "services.learner", "services.inference", "services.env_gateway")
        services += ("services.dashboard",)  # started last, once the gateway serves
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
        again = subprocess.run(up_command(tmp_path, ports, 3), stdout=log, stderr=subprocess.STDOUT, timeout=180)
    assert again.returncode == 0, second_log.read_text()
