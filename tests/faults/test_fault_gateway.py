"""The gateway process SIGKILLed and restarted while its replica and the learner keep running.

Released keys on a desktop game when the gateway dies are proven by
tests/integration/env_gateway/test_gateway_desktop.py::test_sigkill_of_the_gateway_process_leaves_no_key_held
(the key guardian process releases them; it needs an X display, so it lives with the desktop tests).
"""

from __future__ import annotations

import time
from pathlib import Path

from fault_processes import (
    ProcessGroup,
    gateway_env,
    gateway_stats,
    learner_env,
    learner_status,
    replica_env,
    wait_until,
)

from rtrl.grpc_util import health_status
from rtrl.local_redis import LocalRedis, free_port


def fresh_replies_from(gateway_address: str, replica_address: str) -> int:
    try:
        stats = gateway_stats(gateway_address)
    except Exception:
        return 0
    return next((r.replies for r in stats.replicas if r.address == replica_address), 0)


def test_a_sigkilled_gateway_restarts_and_finds_the_running_replica_and_learner_again(
    processes: ProcessGroup,
    local_redis: LocalRedis,
    registry_key: str,
    stream_name: str,
    tmp_path: Path,
    resilience_ledger,
) -> None:
    checkpoint_dir = tmp_path / "checkpoints"
    replica = processes.start(
        "replica", "rtrl.services.inference", replica_env(local_redis.url, registry_key, checkpoint_dir)
    )
    learner_port = free_port()
    learner_address = f"127.0.0.1:{learner_port}"
    learner = processes.start(
        "learner",
        "rtrl.services.learner",
        learner_env(local_redis.url, stream_name, checkpoint_dir, learner_port),
        port=learner_port,
    )
    gateway_port = free_port()
    env = gateway_env(local_redis.url, registry_key, stream_name, gateway_port)
    gateway = processes.start("gateway", "rtrl.services.env_gateway", env, port=gateway_port)
    wait_until(lambda: fresh_replies_from(gateway.address, replica.address) > 10, "the gateway to act")
    wait_until(lambda: learner_status(learner_address).transitions_consumed > 10, "the learner to consume")

    with resilience_ledger.fault("SIGKILL the gateway, restart it") as notes:
        gateway.kill()
        consumed_at_kill = learner_status(learner_address).transitions_consumed
        time.sleep(1.0)
        # Nothing else went down with it.
        assert replica.process.poll() is None and learner.process.poll() is None
        assert health_status(replica.address) == "SERVING"
        assert health_status(learner_address) == "SERVING"

        restarted_at = time.monotonic()
        restarted = processes.start("gateway-restarted", "rtrl.services.env_gateway", env, port=gateway_port)
        wait_until(lambda: fresh_replies_from(restarted.address, replica.address) > 0, "the replica to be found again")
        acting_after_s = time.monotonic() - restarted_at
        wait_until(
            lambda: learner_status(learner_address).transitions_consumed > consumed_at_kill + 10,
            "the learner to consume transitions of the restarted gateway",
        )
        stats = gateway_stats(restarted.address)
        assert stats.decisions_fresh > 0
        notes.append(f"acting through the rediscovered replica {acting_after_s:.1f} s after the restart began")
