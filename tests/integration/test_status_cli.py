"""`rtrl status` as a real process against real servers: the table, the JSON, replica discovery through the
gateway and the registry, the addresses file of `rtrl up`, and the error when nothing answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis
from observed_stack import Running, gateway_stats, learner_status, replica_status, wait_for

from rtrl.local_redis import free_port
from rtrl.registry import register
from rtrl.status_table import StackAddresses, write_addresses
from rtrl.supervision import Supervisor


def rtrl_status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtrl.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_json_reports_every_service_and_finds_the_replica_through_the_gateway(observed_stack: Running) -> None:
    stack = observed_stack
    wait_for(lambda: learner_status(stack).checkpoints_published >= 1, "a checkpoint")
    before = gateway_stats(stack)
    # No --replica: the replica is found in the gateway's GetStats.
    result = rtrl_status("--once", "--json", "--gateway", stack.gateway_address, "--learner", stack.learner_address)
    after = gateway_stats(stack)
    assert result.returncode == 0, result.stderr
    snapshot = json.loads(result.stdout)
    gateway = snapshot["gateways"][stack.gateway_address]["stats"]
    assert gateway["gateway_id"] == "gateway-m"
    assert before.decisions <= int(gateway["decisions"]) <= after.decisions
    replica = snapshot["replicas"][stack.replica_address]["status"]
    assert replica["replica_id"] == "replica-m"
    assert int(replica["requests_answered"]) <= replica_status(stack).requests_answered
    assert replica["open_streams"] == 1  # the gateway asks it on one ActStream
    learner = snapshot["learner"][stack.learner_address]["status"]
    assert 1 <= int(learner["checkpoint_version"]) <= learner_status(stack).checkpoint_version


def test_table_has_one_row_per_service_and_says_which_did_not_answer(observed_stack: Running) -> None:
    stack = observed_stack
    silent = f"127.0.0.1:{free_port()}"
    result = rtrl_status("--once", "--gateway", stack.gateway_address, "--learner", stack.learner_address,
                         "--replica", silent)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "ADDRESS", "STATE", "DETAILS"]
    rows = {line.split()[0] + " " + line.split()[1]: line for line in lines[1:]}
    assert "fps, coverage" in rows["gateway gateway-m"] and stack.gateway_address in rows["gateway gateway-m"]
    assert "checkpoint v" in rows["inference replica-m"] and "streams " in rows["inference replica-m"]
    assert "upd/s" in rows["learner dqn"]
    assert "UNAVAILABLE" in rows[f"inference {silent}"]


def test_replicas_registered_in_redis_are_listed(observed_stack: Running) -> None:
    stack = observed_stack
    client = redis.Redis.from_url(stack.redis_url)
    try:
        register(client, stack.replica_address)
    finally:
        client.close()
    result = rtrl_status("--once", "--json", "--learner", stack.learner_address, "--redis-url", stack.redis_url)
    assert result.returncode == 0, result.stderr
    snapshot = json.loads(result.stdout)
    assert snapshot["replicas"][stack.replica_address]["status"]["replica_id"] == "replica-m"
    assert snapshot["registry"] == {"error": ""}


def test_addresses_come_from_the_newest_rtrl_up_run(observed_stack: Running, tmp_path: Path) -> None:
    stack = observed_stack
    runs = tmp_path / "runs"
    write_addresses(runs / "20260101-000000", StackAddresses(gateways=["127.0.0.1:1"], pid=os.getpid()))
    supervision = runs / "20260101-000100" / "supervision.json"
    addresses = StackAddresses(
        gateways=[stack.gateway_address], learner=stack.learner_address, replicas=[stack.replica_address],
        pid=os.getpid(), supervision=str(supervision),
    )  # fmt: skip
    write_addresses(runs / "20260101-000100", addresses)
    assert (runs / "latest").resolve() == (runs / "20260101-000100").resolve()
    result = rtrl_status("--once", "--json", "--run-dir", str(runs))
    assert result.returncode == 0, result.stderr
    snapshot = json.loads(result.stdout)
    assert list(snapshot["gateways"]) == [stack.gateway_address]
    assert snapshot["gateways"][stack.gateway_address]["stats"] is not None
    assert snapshot["supervision"] is None  # rtrl up has not written it yet

    # The restarts `rtrl up` records are read at each poll and end the table.
    supervisor = Supervisor("on-failure")
    supervisor.exited("learner", -9, was_ready=True)
    supervisor.restarted("learner")
    supervisor.ready("learner")
    supervisor.write(supervision)
    result = rtrl_status("--once", "--run-dir", str(runs))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("restarts: learner 1x (last exit code -9, back in ")


def test_nothing_answering_is_an_error_that_says_what_to_check(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    result = rtrl_status("--once", "--gateway", nobody, "--learner", nobody)
    assert result.returncode == 1
    assert f"no service answered ({nobody}, {nobody})" in result.stderr and "rtrl up" in result.stderr

    result = rtrl_status("--once", "--run-dir", str(tmp_path / "runs"))
    assert result.returncode == 1
    assert "no running stack is recorded" in result.stderr and "--gateway" in result.stderr

    # A run whose `rtrl up` has ended: its recorded pid no longer exists.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_addresses(tmp_path / "runs" / "old", StackAddresses(gateways=[nobody], pid=int(ended.stdout)))
    result = rtrl_status("--once", "--run-dir", str(tmp_path / "runs"))
    assert result.returncode == 1
    assert "is no longer running" in result.stderr


def test_a_bad_tls_setting_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.pem"
    env = {**os.environ, "RTRL_TLS_CA_FILE": str(missing)}
    result = rtrl_status("--once", "--gateway", f"127.0.0.1:{free_port()}", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"RTRL_TLS_CA_FILE='{missing}' cannot be read" in result.stderr
