"""`rtrl up` starts and restarts its children from a process whose gRPC threads are busy (health checks,
status calls), through `subprocess.Popen` with a `preexec_fn` (rtrl/orphans.py), so Python forks and runs
code in the child before exec. With gRPC's fork support as it comes (unset), one such child in a few dozen
died before exec (SIGABRT when its restarted poller found its epoll descriptor closed, or SIGSEGV): here
child 29, 30 and 39 in three runs. rtrl turns fork support off (rtrl/__init__.py). Real processes: a
gRPC server and clients calling it, and children forked meanwhile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILDREN = 300

# Imports rtrl first, as every rtrl process does, then keeps gRPC's threads busy while it forks.
SPAWNER = f"""
import subprocess, sys, threading
import rtrl
import grpc
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from rtrl.orphans import dies_with_parent

server = grpc.server(futures.ThreadPoolExecutor(4))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
stop = threading.Event()

def call() -> None:
    while not stop.is_set():
        with grpc.insecure_channel(f"127.0.0.1:{{port}}") as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.RpcError:
                pass

for _ in range(2):
    threading.Thread(target=call, daemon=True).start()
outcome = "all exited with 0"
for index in range({CHILDREN}):
    try:
        code = subprocess.run(["true"], check=False, timeout=10, **dies_with_parent()).returncode
    except subprocess.TimeoutExpired:
        code = "nothing (it hung for 10 s)"
    if code != 0:
        outcome = f"child {{index + 1}} exited with {{code}}"
        break
stop.set()
server.stop(0)
print(outcome)
"""


def test_children_forked_while_grpc_is_busy_all_reach_exec() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", SPAWNER], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"forking {CHILDREN} children while gRPC's threads were busy did not end within 120 s")
    assert done.stdout.strip() == "all exited with 0", f"of {CHILDREN} children forked, {done.stdout.strip()}"
