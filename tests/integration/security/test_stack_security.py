"""`rtrl up` with mutual TLS and the shared token set through --set: every internal client (the
launcher's health checks and status line, the gateway's calls to replicas found in the registry, the
learner's and replicas' Redis) must pass, or the run would neither act nor learn. A short real run on
ALE Pong; then the real grpcurl shows that the gateway refuses a caller without the token.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from security_pki import TOKEN, Pki, grpcurl, tls_env

from rtrl.grpc_util import health_status
from rtrl.local_redis import free_port
from rtrl.security import SecuritySettings

pytestmark = pytest.mark.e2e

RUN_SECONDS = 12


def free_pair() -> int:
    """A free port whose successor is free too (two replicas listen on consecutive ports)."""
    while True:
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port


def wait_for_dashboard_state(url: str) -> dict:
    """The dashboard's state once it has heard from the gateway and the learner (bounded)."""
    deadline = time.monotonic() + 60
    state: dict = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                state = json.loads(response.read())["state"]
        except (OSError, ValueError):
            state = {}
        if state.get("learner", {}).get("status") and state.get("gateways", [{}])[0].get("stats"):
            return state
        time.sleep(0.5)
    return state


@pytest.mark.parametrize("interaction", ["async", "sequential"])
def test_rtrl_up_runs_with_mutual_tls_and_token(tmp_path: Path, pki: Pki, interaction: str) -> None:
    """async: the gateway calls replicas from the registry; sequential: it also calls the learner's Train."""
    gateway_port, learner_port, inference_port, dashboard_port = free_port(), free_port(), free_pair(), free_port()
    summary = tmp_path / "summary.json"
    security_env = tls_env(pki, mutual=True, token=TOKEN)
    settings = [arg for name, value in security_env.items() for arg in ("--set", f"{name}={value}")]
    command = [
        sys.executable, "-m", "rtrl.cli", "up",
        "--duration", str(RUN_SECONDS),
        "--inference-replicas", "2",
        "--gateway-port", str(gateway_port),
        "--learner-port", str(learner_port),
        "--inference-base-port", str(inference_port),
        "--checkpoint-dir", str(tmp_path / "checkpoints"),
        "--run-dir", str(tmp_path / "runs"),
        "--summary-json", str(summary),
        "--interaction", interaction,
        "--dashboard-port", str(dashboard_port),
        "--set", "RTRL_CHECKPOINT_EVERY_UPDATES=20",
        *settings,
    ]  # fmt: skip
    gateway = f"127.0.0.1:{gateway_port}"
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        try:
            deadline = time.monotonic() + 180
            secured = SecuritySettings.from_env(security_env)
            while health_status(gateway, timeout_s=1.0, security=secured) != "SERVING":
                if process.poll() is not None:
                    pytest.fail(f"rtrl up ended early:\n{process.stdout.read() if process.stdout else ''}")
                assert time.monotonic() < deadline, "the gateway did not become healthy over mutual TLS"
                time.sleep(0.5)
            # While it runs: the operator's certificate without the token is refused by the gateway.
            tls = ["-cacert", str(pki.ca), "-cert", str(pki.client.cert), "-key", str(pki.client.key)]
            refused = grpcurl(*tls, gateway, "rtrl.v1.EnvGatewayService/GetStats")
            assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr
            served = grpcurl(*tls, "-H", f"authorization: Bearer {TOKEN}", gateway, "rtrl.v1.EnvGatewayService/GetSpec")
            assert served.returncode == 0, served.stderr
            assert json.loads(served.stdout)["env_id"] == "ale:Pong"
            # The dashboard is a client too: its view of the gateway and the learner came over mutual TLS.
            state = wait_for_dashboard_state(f"http://127.0.0.1:{dashboard_port}/api/state")
            assert state["learner"]["status"] is not None, state["learner"]
            assert state["gateways"][0]["stats"] is not None, state["gateways"]
            output, _ = process.communicate(timeout=RUN_SECONDS + 120)
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    assert process.returncode == 0, output
    result = json.loads(summary.read_text())
    gateway_stats, learner = result["gateway"], result["learner"]
    assert gateway_stats is not None and learner is not None, output
    assert gateway_stats["coverage"] > 0, f"no decision got a fresh action over mutual TLS:\n{output}"
    assert int(learner["transitions_consumed"]) > 0, f"the learner consumed nothing:\n{output}"
    if interaction == "sequential":
        # Every act-learn cycle is a Train call from the gateway to the learner (over mutual TLS, with the
        # token) that the learner answered; updates may still be 0 before the replay buffer fills.
        assert int(gateway_stats["sequential_cycles"]) > 0 and int(learner["train_calls"]) > 0, output
    # The embedded Redis got a password, and the launcher never prints it.
    redis_line = next(line for line in output.splitlines() if line.startswith("redis "))
    assert ":***@127.0.0.1" in redis_line, redis_line
    logs = "".join(path.read_text() for path in (tmp_path / "runs").glob("*/logs/*.log"))
    assert "mutual TLS, token required" in logs, "the services should log how their servers are protected"
