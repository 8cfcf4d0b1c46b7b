"""Real service processes for the fault suite: started with RTRL_* variables, found by the port they log.

Each helper starts `python -m rtrl.services.<name>` with its output in a log file under the test's tmp_path,
waits (within a generous start bound, not a measurement) until it says where it listens, and returns a
handle the test can signal (SIGKILL, SIGSTOP, SIGCONT). `ProcessGroup` ends whatever is still running
when the test ends, continuing stopped processes first so SIGTERM can reach them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from rtrl.grpc_util import health_status
from rtrl.v1 import env_gateway_pb2, env_gateway_pb2_grpc, learner_pb2, learner_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
# Generous bound for a process to start on a busy 2-core machine (torch imports); not a measurement.
START_BOUND_S = 90.0
_LISTENING = re.compile(r"listening on [\d.]+:(\d+)")


def wait_until(predicate: Callable[[], object], what: str, bound_s: float = START_BOUND_S) -> object:
    """Polls until `predicate` returns something truthy (returned); fails naming `what` after `bound_s`."""
    give_up_at = time.monotonic() + bound_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > give_up_at:
            raise AssertionError(f"timed out after {bound_s:.0f} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or deregistered."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)


class ProcessGroup:
    """Starts service processes for one test and ends every one still running afterwards."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []

    def start(self, name: str, module: str, env: dict[str, str], port: int | None = None) -> ServiceProcess:
        """Starts `python -m module`; waits until it logs its port (or, given `port`, until it serves)."""
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RTRL_TORCH_THREADS": "1", **env}
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", module], cwd=REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
            )
        service = ServiceProcess(name, process, log_path)
        self.started.append(service)

        def listening() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode} at start:\n{service.log()}")
            if port is not None:
                address = f"127.0.0.1:{port}"
                return address if health_status(address, timeout_s=0.5) == "SERVING" else None
            match = _LISTENING.search(service.log())
            return f"127.0.0.1:{match.group(1)}" if match else None

        service.address = str(wait_until(listening, f"{name} to listen"))
        return service

    def stop_all(self) -> None:
        for service in self.started:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGCONT)
                service.process.send_signal(signal.SIGTERM)
        for service in self.started:
            try:
                service.process.wait(20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()


def gateway_stats(address: str, timeout_s: float = 2.0) -> env_gateway_pb2.GetStatsResponse:
    with grpc.insecure_channel(address) as channel:
        stub = env_gateway_pb2_grpc.EnvGatewayServiceStub(channel)
        return stub.GetStats(env_gateway_pb2.GetStatsRequest(), timeout=timeout_s)


def learner_status(address: str, timeout_s: float = 2.0) -> learner_pb2.LearnerServiceGetStatusResponse:
    with grpc.insecure_channel(address) as channel:
        stub = learner_pb2_grpc.LearnerServiceStub(channel)
        return stub.GetStatus(learner_pb2.LearnerServiceGetStatusRequest(), timeout=timeout_s)


def replica_env(redis_url: str, registry_key: str, checkpoint_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "RTRL_INFERENCE_HOST": "127.0.0.1",
        "RTRL_INFERENCE_PORT": "0",
        "RTRL_CHECKPOINT_DIR": str(checkpoint_dir),
        "RTRL_INFERENCE_DEVICE": "cpu",
        "RTRL_REDIS_URL": redis_url,
        "RTRL_REPLICA_REGISTRY": registry_key,
        **extra,
    }


def learner_env(redis_url: str, stream: str, checkpoint_dir: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "RTRL_LEARNER_HOST": "127.0.0.1",
        "RTRL_LEARNER_PORT": str(port),
        "RTRL_REDIS_URL": redis_url,
        "RTRL_STREAM": stream,
        "RTRL_CONSUMER_NAME": "learner-faults",
        "RTRL_CHECKPOINT_DIR": str(checkpoint_dir),
        "RTRL_CHECKPOINT_EVERY_UPDATES": "10",
        "RTRL_CHECKPOINT_KEEP": "1000",
        "RTRL_LEARNER_DEVICE": "cpu",
        "RTRL_DQN_LEARNING_STARTS": "16",
        "RTRL_DQN_BATCH_SIZE": "8",
        "RTRL_DQN_BUFFER_SIZE": "1000",
        **extra,
    }


def gateway_env(redis_url: str, registry_key: str, stream: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "RTRL_GATEWAY_HOST": "127.0.0.1",
        "RTRL_GATEWAY_PORT": str(port),
        "RTRL_GATEWAY_ID": "gateway-faults",
        "RTRL_ENV": "ale:Pong",
        "RTRL_REDIS_URL": redis_url,
        "RTRL_REPLICA_REGISTRY": registry_key,
        "RTRL_STREAM": stream,
        **extra,
    }
