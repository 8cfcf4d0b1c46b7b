"""Live membership with real processes: slow inference replicas join a running gateway one by one and
one is SIGKILLed; the gateway finds them through the registry in a real Redis, without restarting.

Replicas are real replica processes (bench/replica.py --occupy-ms: the production server with a policy whose
every forward pass lasts at least `FORWARD_MS`, 2.4 frames at 60 fps), and the gateway decides every
frame (k = 1): one replica can act on about a third of the frames, three replicas on all of them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from gateway_doubles import Stack

from rtrl.local_redis import LocalRedis
from rtrl.registry import live_replicas
from rtrl.services.env_gateway.server import Gateway

REPO_ROOT = Path(__file__).resolve().parents[3]
FORWARD_MS = 40.0
# Generous bound for background work (a replica process starting on a busy machine); not a measurement.
START_BOUND_S = 60.0
# The promise: a replica that registered is in use within 2 s.
JOIN_BOUND_S = 2.0
SETTLE_S = 0.5
WINDOW_S = 2.0


@dataclass
class ReplicaProcess:
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path


@pytest.fixture
def registry_key() -> str:
    return f"test:replicas:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start_replica_process(
    tmp_path: Path, local_redis: LocalRedis, registry_key: str
) -> Iterator[Callable[[], ReplicaProcess]]:
    started: list[ReplicaProcess] = []

    def start() -> ReplicaProcess:
        log_path = tmp_path / f"replica-{len(started)}.log"
        env = {
            **os.environ,
            "RTRL_INFERENCE_HOST": "127.0.0.1",
            "RTRL_INFERENCE_PORT": "0",
            "RTRL_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
            "RTRL_INFERENCE_DEVICE": "cpu",
            "RTRL_REDIS_URL": local_redis.url,
            "RTRL_REPLICA_REGISTRY": registry_key,
        }
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "bench" / "replica.py"), "--occupy-ms", str(FORWARD_MS)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        give_up_at = time.monotonic() + START_BOUND_S
        port = None
        while port is None and time.monotonic() < give_up_at and process.poll() is None:
            match = re.search(r"listening on [\d.]+:(\d+)", log_path.read_text(errors="replace"))
            port = int(match.group(1)) if match else None
            time.sleep(0.05)
        assert port is not None, f"the replica never said where it listens:\n{log_path.read_text()}"
        replica = ReplicaProcess(process, f"127.0.0.1:{port}", log_path)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        if replica.process.poll() is None:
            replica.process.send_signal(signal.SIGTERM)
    for replica in started:
        try:
            replica.process.wait(20)
        except subprocess.TimeoutExpired:
            replica.process.kill()
            replica.process.wait()


def wait_until(predicate: Callable[[], bool], bound_s: float = START_BOUND_S) -> float:
    """Polls until `predicate` holds; returns when it did (time.monotonic), failing after `bound_s`."""
    give_up_at = time.monotonic() + bound_s
    while not predicate():
        assert time.monotonic() < give_up_at, "timed out waiting for the gateway"
        time.sleep(0.02)
    return time.monotonic()


def replies_from(gateway: Gateway, address: str) -> int:
    return next((r.replies for r in gateway.stats().replicas if r.address == address), 0)


def requests_to(gateway: Gateway, address: str) -> int:
    return next((r.requests for r in gateway.stats().replicas if r.address == address), 0)


def coverage_over(gateway: Gateway, seconds: float) -> tuple[float, int]:
    """Fresh decisions / decisions during the next `seconds`, and how many fell back."""
    before = gateway.stats()
    time.sleep(seconds)
    after = gateway.stats()
    decisions = after.decisions - before.decisions
    fallback = after.decisions_fallback - before.decisions_fallback
    return (decisions - fallback) / decisions, fallback


def join(gateway: Gateway, replica: ReplicaProcess, client: redis.Redis, key: str) -> float:
    """Waits for `replica` to register, then for the gateway to use it; returns the delay in seconds."""
    registered_at = wait_until(lambda: replica.address in live_replicas(client, key))
    used_at = wait_until(lambda: replies_from(gateway, replica.address) > 0)
    return used_at - registered_at


def test_replicas_join_a_running_gateway_and_a_killed_one_stops_being_used_at_once(
    local_redis: LocalRedis,
    registry_key: str,
    start_gateway: Callable[..., Stack],
    start_replica_process: Callable[[], ReplicaProcess],
) -> None:
    stack = start_gateway(
        local_redis.url,
        [],
        replica_registry=registry_key,
        decision_interval_frames=1,
        lead_frames=1,
        max_staleness_frames=6,
    )
    gateway = stack.gateway
    client = redis.Redis.from_url(local_redis.url)
    try:
        assert gateway.stats().replica_count == 0
        coverages: list[float] = []
        replicas: list[ReplicaProcess] = []
        for _ in range(4):
            replica = start_replica_process()
            replicas.append(replica)
            assert join(gateway, replica, client, registry_key) <= JOIN_BOUND_S
            time.sleep(SETTLE_S)
            coverages.append(coverage_over(gateway, WINDOW_S)[0])
        assert gateway.stats().replica_count == 4

        # Each replica acts on about one frame in 2.6 (its 40 ms plus the round trip, then the next
        # sample), so coverage rises about 0.38 per replica up to all frames at three; four leave one to
        # spare. Margins are wide for a busy machine; what matters is that it rises as replicas join.
        assert 0.2 < coverages[0] < 0.6, coverages
        assert coverages[0] + 0.15 < coverages[1] < 0.95, coverages
        assert coverages[2] > coverages[1] + 0.03, coverages
        assert coverages[3] >= 0.9, coverages

        victim = replicas[1]
        requests_before = requests_to(gateway, victim.address)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        after_kill, fallback_after_kill = coverage_over(gateway, WINDOW_S)
        # The call in flight when it died fails at once (UNAVAILABLE) and the replica leaves the rotation
        # before it gets another: the kill costs about the decisions of one deadline (S = 6 frames) on
        # top of the few a busy machine costs anyway, not the quarter of all decisions (30 in 2 s) that
        # calling the dead replica in turn would.
        assert requests_to(gateway, victim.address) - requests_before <= 1
        assert fallback_after_kill <= 6 + 6
        assert after_kill >= 0.9
        # Out of rotation (or, once its heartbeat is 2 s old, out of the registry altogether).
        assert victim.address not in [view.address for view in gateway.replicas.views(time.monotonic())]
        print(f"coverage with 1..4 replicas {coverages}, after the kill {after_kill} ({fallback_after_kill} fell back)")
    finally:
        client.close()


def test_two_games_share_one_pool_of_registered_replicas(
    local_redis: LocalRedis,
    registry_key: str,
    start_gateway: Callable[..., Stack],
    start_replica_process: Callable[[], ReplicaProcess],
) -> None:
    replicas = [start_replica_process() for _ in range(2)]
    games = [
        start_gateway(local_redis.url, [], replica_registry=registry_key, gateway_id=f"game-{i}") for i in range(2)
    ]
    for game in games:
        for replica in replicas:
            wait_until(lambda game=game, replica=replica: replies_from(game.gateway, replica.address) > 0)
    coverages = [coverage_over(game.gateway, WINDOW_S)[0] for game in games]

    # Each game decides every 4 frames; two replicas of 2.4 frames serve both with room to spare.
    assert all(coverage >= 0.9 for coverage in coverages), coverages
    for game in games:
        assert {r.address for r in game.gateway.stats().replicas} == {r.address for r in replicas}
