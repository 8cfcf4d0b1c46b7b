"""`rtrl up` as a user runs it, for the fault tests that kill it or its services: the command line, and
its children found through /proc (Linux)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def up_command(tmp: Path, ports: dict[str, int], duration_s: float, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "rtrl.cli", "up",
        "--env", "gym:CartPole-v1",
        "--duration", str(duration_s),
        "--gateway-port", str(ports["gateway"]),
        "--learner-port", str(ports["learner"]),
        "--inference-base-port", str(ports["inference"]),
        "--dashboard-port", str(ports["dashboard"]),
        "--checkpoint-dir", str(tmp / "checkpoints"),
        "--run-dir", str(tmp / "runs"),
        *extra,
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


def child_with(pid: int, command_part: str, environment_part: str = "") -> int | None:
    """The pid of `pid`'s live child whose command line contains `command_part` and whose environment
    contains `environment_part` (such as RTRL_REPLICA_ID=replica-0), or None."""
    for child, command in children_of(pid).items():
        if command_part not in command:
            continue
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if not environment_part or environment_part.encode() in environ:
            return child
    return None


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
