"""Inference replicas failing under a running gateway: one SIGKILLed, one stalled by SIGSTOP.

Three real replica processes register in Redis and serve a real gateway (ALE Pong at 60 fps, a decision
every 4 frames). Coverage after a fault is measured from the gateway's counters (GetStats deltas) in
short windows, so the report shows how fast it came back, not only an average.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from fault_processes import ProcessGroup, ServiceProcess, gateway_stats, replica_env, wait_until

from rtrl.grpc_util import health_status
from rtrl.local_redis import LocalRedis
from rtrl.services.env_gateway.transports.act_socket import CONNECT_TIMEOUT_S

REPLICAS = 3
WINDOW_S = 0.25
# The promise: back to >= 99% of decisions covered within 1 s of losing a replica.
RECOVERY_S = 1.0
MEASURE_AFTER_RECOVERY_S = 2.0
STALL_S = 3.0


def sample(gateway_address: str, seconds: float) -> list[tuple[float, int, int]]:
    """(time, decisions, fallback decisions) read from the gateway over gRPC every 50 ms for `seconds`.

    Reading over gRPC (not the in-process object) also proves the gateway keeps answering."""
    samples = []
    end = time.monotonic() + seconds
    while True:
        stats = gateway_stats(gateway_address)
        samples.append((time.monotonic(), stats.decisions, stats.decisions_fallback))
        if samples[-1][0] >= end:
            return samples
        time.sleep(0.05)


def coverage_between(samples: list[tuple[float, int, int]], start_s: float, end_s: float) -> tuple[float, int]:
    """Fresh / all decisions between the samples nearest `start_s` and `end_s`, and how many decisions."""
    first = min(samples, key=lambda s: abs(s[0] - start_s))
    last = min(samples, key=lambda s: abs(s[0] - end_s))
    decisions = last[1] - first[1]
    fallback = last[2] - first[2]
    return (decisions - fallback) / max(decisions, 1), decisions


def windows(samples: list[tuple[float, int, int]], origin_s: float) -> list[str]:
    out = []
    start = origin_s
    while start + WINDOW_S <= samples[-1][0]:
        coverage, _ = coverage_between(samples, start, start + WINDOW_S)
        out.append(f"{coverage:.0%}")
        start += WINDOW_S
    return out


@pytest.fixture(scope="module")
def registry_key() -> str:
    return f"faults:replicas:{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def three_replicas(
    local_redis: LocalRedis, registry_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    """Shared by the module's tests (starting processes is most of their time): the stall test runs first
    and continues its replica; the kill test, last, kills another."""
    work = tmp_path_factory.mktemp("replicas")
    group = ProcessGroup(work)
    env = replica_env(local_redis.url, registry_key, work / "checkpoints")
    try:
        yield [group.start(f"replica{i}", "rtrl.services.inference", env) for i in range(REPLICAS)]
    finally:
        group.stop_all()


def in_use(gateway_address: str, replicas: list[ServiceProcess]) -> bool:
    """Every replica answered the gateway within the last half second (in rotation, not just known)."""
    before = {r.address: r.replies for r in gateway_stats(gateway_address).replicas}
    time.sleep(0.5)
    after = {r.address: r.replies for r in gateway_stats(gateway_address).replicas}
    return all(after.get(replica.address, 0) > before.get(replica.address, 0) for replica in replicas)


def transports(gateway_address: str, replicas: list[ServiceProcess]) -> set[str]:
    """How the gateway asks each of `replicas` (ReplicaStats.transport)."""
    wanted = {replica.address for replica in replicas}
    return {r.transport for r in gateway_stats(gateway_address).replicas if r.address in wanted}


def test_a_stalled_replica_never_blanks_a_decision_while_the_others_are_healthy(
    three_replicas: list[ServiceProcess],
    local_redis: LocalRedis,
    registry_key: str,
    start_gateway: Callable[..., tuple],
    resilience_ledger,
) -> None:
    """SIGSTOP freezes the replica like a long GC pause or a slow disk: its connection stays open and
    calls to it simply never answer, the hardest case for a gateway (no error arrives until the deadline)."""
    gateway, _, address = start_gateway(local_redis.url, replica_registry=registry_key)
    wait_until(lambda: in_use(address, three_replicas), "the gateway to use all three replicas")
    # So the faults below are faults of act sockets, the way the gateway asks replicas that offer one.
    assert transports(address, three_replicas) == {"act socket"}
    staller = three_replicas[1]
    with resilience_ledger.fault(f"SIGSTOP one of 3 inference replicas for {STALL_S:.0f} s") as notes:
        # The pool forgets a replica's counters when the registry drops it, so count the hedges instead.
        hedged_before = gateway.dispatcher.requests_hedged
        stopped_at = time.monotonic()
        staller.signal(signal.SIGSTOP)
        try:
            samples = sample(address, STALL_S)
        finally:
            staller.signal(signal.SIGCONT)
        during, decisions = coverage_between(samples, stopped_at, stopped_at + STALL_S)
        hedged = gateway.dispatcher.requests_hedged - hedged_before
        notes.append(
            f"coverage during the stall {during:.1%} of {decisions} decisions, "
            f"{hedged} calls hedged to another replica, 250 ms windows {windows(samples, stopped_at)}"
        )
        assert decisions >= 20
        assert during >= 0.99, notes
        assert gateway.clock.failure is None
    # Continued, it is asked on its act socket again (a stall is not a socket that cannot be used).
    wait_until(
        lambda: in_use(address, [staller]) and transports(address, [staller]) == {"act socket"},
        "the stalled replica to answer on its act socket again",
    )


def test_a_replica_stalled_past_the_act_sockets_hello_timeout_is_asked_on_its_act_socket_again(
    three_replicas: list[ServiceProcess],
    local_redis: LocalRedis,
    registry_key: str,
    start_gateway: Callable[..., tuple],
) -> None:
    """Stalled longer than the gateway waits for a new act socket's hello, but not long enough to leave
    the registry: the replacement socket's connection is accepted by the stopped replica's kernel and
    its hello goes unanswered. That is a stall, not a socket that cannot be used, so once continued the
    replica is asked on its act socket again (not on ActStream until it rejoins)."""
    gateway, _, address = start_gateway(local_redis.url, replica_registry=registry_key)
    wait_until(lambda: in_use(address, three_replicas), "the gateway to use all three replicas")
    staller = three_replicas[2]
    staller.signal(signal.SIGSTOP)
    try:
        time.sleep(CONNECT_TIMEOUT_S + 0.3)
    finally:
        staller.signal(signal.SIGCONT)

    wait_until(
        lambda: in_use(address, [staller]) and transports(address, [staller]) == {"act socket"},
        "the stalled replica to answer on its act socket again",
    )
    assert gateway.clock.failure is None


def test_a_sigkilled_replica_costs_no_error_and_coverage_is_back_within_a_second(
    three_replicas: list[ServiceProcess],
    local_redis: LocalRedis,
    registry_key: str,
    start_gateway: Callable[..., tuple],
    resilience_ledger,
) -> None:
    gateway, _, address = start_gateway(local_redis.url, replica_registry=registry_key)
    wait_until(lambda: in_use(address, three_replicas), "the gateway to use all three replicas")
    with resilience_ledger.fault("SIGKILL one of 3 inference replicas mid-run") as notes:
        before_samples = sample(address, 1.0)
        before = coverage_between(before_samples, before_samples[0][0], before_samples[-1][0])
        frames_before = gateway.stats().frames
        victim = three_replicas[0]
        killed_at = time.monotonic()
        victim.kill()
        samples = sample(address, RECOVERY_S + MEASURE_AFTER_RECOVERY_S)
        after, decisions_after = coverage_between(
            samples, killed_at + RECOVERY_S, killed_at + RECOVERY_S + MEASURE_AFTER_RECOVERY_S
        )
        notes.append(f"coverage before {before[0]:.1%}, 250 ms windows after the kill {windows(samples, killed_at)}")
        # Never errors: it kept serving (every GetStats above answered), kept its clock, stayed healthy.
        assert health_status(address) == "SERVING"
        assert gateway.clock.failure is None
        assert gateway.stats().frames - frames_before >= 0.8 * 60 * (RECOVERY_S + MEASURE_AFTER_RECOVERY_S)
        assert decisions_after >= 20
        stats = gateway.stats()
        assert after >= 0.99, (notes, stats.requests_failed, stats.replies_late, stats.replicas)
        assert victim.address not in [v.address for v in gateway.replicas.views(time.monotonic())]
