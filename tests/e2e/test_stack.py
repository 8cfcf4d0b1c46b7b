"""The whole stack as real processes: `rtrl up` with embedded Redis, the learner, two replicas and the
gateway on ALE Pong at 60 fps, inspected with the real grpcurl binary while it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtrl.cpus import usable_cpus
from rtrl.grpc_util import health_status
from rtrl.local_redis import free_port, free_ports_in_a_row

pytestmark = pytest.mark.e2e

RUN_SECONDS = 45
# The learner gets a CPU of its own (`--learner-cpus`) and everything else the others, on a machine that has two.
LEARNER_CPU = max(usable_cpus()) if len(usable_cpus()) > 1 else None


def grpcurl(*args: str) -> str:
    binary = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    result = subprocess.run([binary, "-plaintext", "-max-time", "5", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"grpcurl {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    # Two replicas listen on consecutive ports.
    ports = {"gateway": free_port(), "learner": free_port(), "inference": free_ports_in_a_row(2)}
    summary = tmp / "summary.json"
    command = [
        sys.executable, "-m", "rtrl.cli", "up",
        "--duration", str(RUN_SECONDS),
        "--inference-replicas", "2",
        "--gateway-port", str(ports["gateway"]),
        "--learner-port", str(ports["learner"]),
        "--inference-base-port", str(ports["inference"]),
        "--checkpoint-dir", str(tmp / "checkpoints"),
        "--run-dir", str(tmp / "runs"),
        "--summary-json", str(summary),
        "--set", "RTRL_CHECKPOINT_EVERY_UPDATES=50",
    ]  # fmt: skip
    if LEARNER_CPU is not None:
        command += ["--learner-cpus", str(LEARNER_CPU)]
    log_path = tmp / "rtrl-up.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    addresses = {
        "gateway": f"127.0.0.1:{ports['gateway']}",
        "learner": f"127.0.0.1:{ports['learner']}",
        "replicas": [f"127.0.0.1:{ports['inference']}", f"127.0.0.1:{ports['inference'] + 1}"],
    }
    try:
        wait_until(
            lambda: process.poll() is not None or health_status(addresses["gateway"]) == "SERVING",
            120,
            "the gateway to become healthy",
        )
        assert process.poll() is None, f"rtrl up exited early:\n{log_path.read_text()}"
        yield {"process": process, "addresses": addresses, "summary": summary, "log": log_path, "tmp": tmp}
    finally:
        if process.poll() is None:
            try:
                process.wait(timeout=RUN_SECONDS + 90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_grpcurl_lists_describes_and_invokes_every_service(stack):
    services = {
        stack["addresses"]["gateway"]: ("rtrl.v1.EnvGatewayService", "GetStats"),
        stack["addresses"]["learner"]: ("rtrl.v1.LearnerService", "GetStatus"),
        stack["addresses"]["replicas"][0]: ("rtrl.v1.InferenceService", "GetStatus"),
        stack["addresses"]["replicas"][1]: ("rtrl.v1.InferenceService", "GetStatus"),
    }
    for address, (service, method) in services.items():
        listed = grpcurl(address, "list").split()
        assert service in listed and "grpc.health.v1.Health" in listed, listed
        assert method in grpcurl(address, "describe", service)
        answer = json.loads(grpcurl(address, f"{service}/{method}"))
        assert isinstance(answer, dict)
        health = json.loads(grpcurl("-d", json.dumps({"service": service}), address, "grpc.health.v1.Health/Check"))
        assert health["status"] == "SERVING"
    spec = json.loads(grpcurl(stack["addresses"]["gateway"], "rtrl.v1.EnvGatewayService/GetSpec"))
    assert spec["observation_shape"] == [4, 84, 84]
    assert spec["action_meanings"][0] == "NOOP"
    assert spec["frame_rate_hz"] == 60


def test_the_learner_runs_on_its_own_cpu_and_every_other_process_on_the_others(stack):
    if LEARNER_CPU is None:
        pytest.skip("this machine lets rtrl use one CPU: there is nothing to partition")
    launcher = stack["process"].pid
    children = [int(pid) for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()]
    affinity: dict[str, set[int]] = {}
    for pid in children:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        name = next(
            (part.decode() for part in command if part.startswith(b"rtrl.services.")), Path(command[0].decode()).name
        )
        # Every thread, not only the main one: threads started after RTRL_CPUS was applied inherit it.
        threads = {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}
        assert len(threads) == 1, f"{name}'s threads run on different CPUs: {threads}"
        affinity[f"{name} {pid}"] = set(threads.pop())
    others = usable_cpus() - {LEARNER_CPU}
    assert {name for name in affinity if name.startswith("rtrl.services.learner")}, affinity
    for name, cpus in affinity.items():
        assert cpus == ({LEARNER_CPU} if name.startswith("rtrl.services.learner") else others), (name, affinity)


def test_replicas_serve_the_newest_checkpoint_while_the_learner_publishes(stack):
    learner, replicas = stack["addresses"]["learner"], stack["addresses"]["replicas"]

    def learner_version() -> int:
        return int(json.loads(grpcurl(learner, "rtrl.v1.LearnerService/GetStatus")).get("checkpoint_version", 0))

    version = wait_until(lambda: learner_version() >= 1, RUN_SECONDS, "the learner's first checkpoint")

    def replicas_caught_up() -> bool:
        answers = [json.loads(grpcurl(r, "rtrl.v1.InferenceService/GetStatus")) for r in replicas]
        return all(int(a.get("checkpoint_version", 0)) >= version for a in answers)

    # Hot reload happens within 1 s of publication; allow for a loaded 2-core machine.
    wait_until(replicas_caught_up, 5, f"every replica to serve checkpoint {version}")


def test_status_and_metrics_of_every_process_while_it_runs(stack):
    recorded = json.loads((stack["tmp"] / "runs" / "latest" / "addresses.json").read_text())
    assert recorded["gateways"] == [stack["addresses"]["gateway"]]
    assert sorted(recorded["metrics"]) == ["gateway", "inference-0", "inference-1", "learner"]
    for name, url in recorded["metrics"].items():
        with urllib.request.urlopen(url, timeout=5) as response:
            families = {f.name for f in text_string_to_metric_families(response.read().decode())}
        prefix = {"gateway": "rtrl_gateway_", "learner": "rtrl_learner_"}.get(name, "rtrl_inference_")
        assert f"{prefix}checkpoint_version" in families or f"{prefix}decisions" in families, (name, families)
    result = subprocess.run(
        [sys.executable, "-m", "rtrl.cli", "status", "--once", "--json", "--run-dir", str(stack["tmp"] / "runs")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    snapshot = json.loads(result.stdout)
    assert snapshot["gateways"][stack["addresses"]["gateway"]]["stats"]["decisions"]
    assert snapshot["learner"][stack["addresses"]["learner"]]["status"] is not None
    assert all(snapshot["replicas"][address]["status"] for address in stack["addresses"]["replicas"])


def test_run_ends_cleanly_with_nothing_lost(stack):
    process = stack["process"]
    process.wait(timeout=RUN_SECONDS + 90)
    output = stack["log"].read_text()
    assert process.returncode == 0, output
    summary = json.loads(stack["summary"].read_text())
    gateway, learner = summary["gateway"], summary["learner"]
    assert gateway is not None, f"no final gateway stats:\n{output}"

    decisions = int(gateway["decisions"])
    published = int(gateway["transitions_published"])
    dropped = int(gateway["transitions_dropped"])
    # At 60 fps with a decision every 4 frames, well over 10 decisions per second of running.
    assert decisions > 10 * RUN_SECONDS * 0.8
    # Every decision became a transition that was either published or dropped and counted.
    assert decisions == published + dropped + int(gateway["transitions_queued"])
    assert int(gateway["transitions_queued"]) == 0
    # Everything published was consumed by the learner: nothing lost silently.
    assert int(learner["transitions_consumed"]) == published
    assert int(learner["transitions_invalid"]) == 0

    assert float(gateway["coverage"]) >= 0.99, gateway
    assert float(gateway["measured_frame_rate_hz"]) > 55
    assert int(learner["updates"]) > 0
    assert int(learner["checkpoint_version"]) >= 2
    # The final checkpoint is on disk and the version sequence is complete.
    latest = json.loads((stack["tmp"] / "checkpoints" / "latest.json").read_text())
    assert latest["version"] >= int(learner["checkpoint_version"])

    # The learner's TensorBoard files: scalars while it ran, the hparams session once it stopped.
    [run_dir] = [path for path in (stack["tmp"] / "runs").iterdir() if not path.is_symlink()]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run_dir / "tensorboard" / "hparams").glob("events.out.tfevents.*"))
    assert summary["addresses"]["tensorboard_dir"] == str(run_dir / "tensorboard")
