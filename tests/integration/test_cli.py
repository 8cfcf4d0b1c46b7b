"""The `rtrl` command's failure paths: bad flags and a service that cannot start give a clear message."""

from __future__ import annotations

import os
import subprocess
import sys

from rtrl.cpus import format_cpu_list, usable_cpus
from rtrl.local_redis import free_port


def rtrl(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtrl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_zero_replicas_is_refused_with_a_reason():
    result = rtrl("up", "--inference-replicas", "0")
    assert result.returncode == 2
    assert "at least 1 inference replica" in result.stderr


def test_settings_must_be_rtrl_settings():
    result = rtrl("up", "--set", "PATH=/tmp")
    assert result.returncode == 2
    assert "settings start with RTRL_" in result.stderr


def test_a_setting_no_service_reads_is_refused_with_the_closest_name():
    result = rtrl("up", "--set", "RTRL_DQN_LEARNIN_RATE=1e-3")
    assert result.returncode == 2
    assert "RTRL_DQN_LEARNIN_RATE is not a setting; did you mean RTRL_DQN_LEARNING_RATE?" in result.stderr


def test_a_service_given_a_variable_no_service_reads_stops_at_start():
    result = rtrl("dashboard", env={"RTRL_DASHBOARD_PORTT": "0"}, timeout=60)
    assert result.returncode == 2
    assert "RTRL_DASHBOARD_PORTT is not a setting; did you mean RTRL_DASHBOARD_PORT?" in result.stderr


def test_learner_cpus_must_be_a_cpu_list_and_leave_cpus_for_acting():
    result = rtrl("up", "--learner-cpus", "3-1")
    assert result.returncode == 2
    assert "runs backwards" in result.stderr
    every_cpu = format_cpu_list(usable_cpus())
    result = rtrl("up", "--learner-cpus", every_cpu, "--duration", "5")
    assert result.returncode == 1
    assert f"--learner-cpus {every_cpu} leaves no CPU for the gateway and the replicas" in result.stderr
    result = rtrl("up", "--learner-cpus", "4096", "--duration", "5")
    assert result.returncode == 1
    assert "--learner-cpus='4096' names CPUs that are not here" in result.stderr


def test_record_every_is_in_up_help_and_must_be_a_positive_number_of_seconds():
    result = rtrl("up", "--help")
    assert result.returncode == 0
    assert "--record-every SECONDS" in result.stdout and "recordings/index.jsonl" in " ".join(result.stdout.split())
    result = rtrl("up", "--record-every", "0")
    assert result.returncode == 2
    assert "0 is not a positive number of seconds" in result.stderr


def test_health_of_an_unreachable_server_fails():
    result = rtrl("health", f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stdout.strip() == "UNREACHABLE"


def test_a_service_that_cannot_start_stops_the_stack_with_its_message(tmp_path):
    inference_port = free_port()
    result = rtrl(
        "up",
        "--duration", "30",
        "--inference-replicas", "1",
        "--gateway-port", str(free_port()),
        "--learner-port", str(free_port()),
        "--inference-base-port", str(inference_port),
        "--checkpoint-dir", str(tmp_path / "checkpoints"),
        "--run-dir", str(tmp_path / "runs"),
        "--set", "RTRL_FALLBACK_POLICY=sometimes",
    )  # fmt: skip
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "gateway exited" in output
    assert "RTRL_FALLBACK_POLICY" in output
