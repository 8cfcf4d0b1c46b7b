"""`rtrl dashboard` as a process: a bad setting stops it with the variable's name; with nothing to watch
it still serves the page and reports each unreachable service with its gRPC error; SIGTERM ends it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from rtrl.local_redis import free_port


def rtrl_dashboard(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rtrl.cli", "dashboard"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_bad_gateway_address_exits_2_naming_the_variable():
    process = rtrl_dashboard({"RTRL_DASHBOARD_GATEWAYS": "gateway-without-port", "RTRL_DASHBOARD_PORT": "0"})
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "dashboard: RTRL_DASHBOARD_GATEWAYS entry 'gateway-without-port' is not host:port" in stderr


def test_with_no_service_running_the_page_is_served_and_says_what_does_not_answer():
    port = free_port()
    gateway, learner = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = rtrl_dashboard(
        {"RTRL_DASHBOARD_PORT": str(port), "RTRL_DASHBOARD_GATEWAYS": gateway, "RTRL_LEARNER_ADDRESS": learner}
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2) as response:
                    state = json.loads(response.read())["state"]
                if state["gateways"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the dashboard did not answer within 60 s"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            assert response.status == 200 and b"rtrl" in response.read()
        [shown] = state["gateways"]
        assert shown["address"] == gateway and shown["stats"] is None
        assert shown["error"].startswith("UNAVAILABLE")
        assert state["learner"]["status"] is None and state["learner"]["error"].startswith("UNAVAILABLE")
        assert state["replicas"] == []
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert process.returncode == 0
