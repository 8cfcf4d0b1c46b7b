"""Faults along the data path of a running stack: the learner SIGKILLed mid-batch, Redis stopped for
10 s, Redis restarted; then every transition is accounted for.

One stack for the module, run as in production: a real Redis, two inference replica processes (so that a
loaded machine does not make one replica's misses look like an effect of the fault), a learner process
and a gateway (in this process, so its counters are read directly) playing ALE Pong. The tests
run in order on it; the accounting test needs the faults before it, the restart comes last because a
Redis without persistence (as rtrl's embedded one is) forgets the stream when it restarts.

Accounting (no trimming: the stream bound is far above what a test publishes):
- gateway side: every transition the clock produced is published (XADD confirmed), dropped and counted,
  or still queued: `published + dropped + queued == decisions` give or take the batch on its way;
- Redis side: every confirmed XADD is in the stream (`XLEN >= published`; more only through at-least-once
  resends after a Redis stall);
- learner side: run 1 acknowledged `XLEN - pending - undelivered` at its kill (read in one MULTI so the
  gateway's writes cannot interleave); run 2 consumed the rest: the two add up to `XLEN` exactly.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fault_processes import (
    ProcessGroup,
    ServiceProcess,
    learner_env,
    learner_status,
    replica_env,
    wait_until,
)

from rtrl.checkpoints import CheckpointStore
from rtrl.local_redis import LocalRedis, free_port
from rtrl.services.env_gateway.server import Gateway, create_server
from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings

STREAM = "faults:pipeline"
REGISTRY = "faults:pipeline:replicas"
OUTAGE_S = 10.0
# Small enough that a 10 s outage (150 decisions at 15 per second) overflows it.
PUBLISH_QUEUE = 64
PUBLISH_BATCH = 64
NO_TRIM = 1_000_000
# "Coverage unchanged": at most about one more fallback decision in a window of 30 to 150 decisions.
UNCHANGED = 0.03


@dataclass
class Pipeline:
    redis_server: LocalRedis
    client: redis.Redis
    group: ProcessGroup
    replicas: list[ServiceProcess]
    learner: ServiceProcess
    learner_port: int
    learner_env: dict[str, str]
    checkpoint_dir: Path
    gateway: Gateway
    acknowledged_by_killed_learners: int = 0
    consumed_before_this_learner: int = 0


def coverage(gateway: Gateway, seconds: float) -> float:
    before = gateway.stats()
    time.sleep(seconds)
    after = gateway.stats()
    decisions = after.decisions - before.decisions
    return (decisions - (after.decisions_fallback - before.decisions_fallback)) / max(decisions, 1)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    work = tmp_path_factory.mktemp("pipeline")
    redis_server = LocalRedis().start()
    client = redis.Redis.from_url(redis_server.url)
    group = ProcessGroup(work)
    checkpoint_dir = work / "checkpoints"
    gateway = None
    server = None
    try:
        replicas = [
            group.start(
                f"replica{i}", "rtrl.services.inference", replica_env(redis_server.url, REGISTRY, checkpoint_dir)
            )
            for i in range(2)
        ]
        port = free_port()
        env = learner_env(redis_server.url, STREAM, checkpoint_dir, port)
        learner = group.start("learner", "rtrl.services.learner", env, port=port)
        settings = GatewaySettings(
            port=0,
            gateway_id="gateway-pipeline",
            env=EnvSpec.parse("ale:Pong"),
            redis_url=redis_server.url,
            stream=STREAM,
            stream_maxlen=NO_TRIM,
            publish_queue_size=PUBLISH_QUEUE,
            replica_registry=REGISTRY,
        )
        gateway = Gateway(settings)
        server, _ = create_server(settings, gateway)
        server.start()
        gateway.start()
        wait_until(
            lambda: sum(r.replies > 0 for r in gateway.stats().replicas) == 2,
            "the gateway to act through both replicas",
        )
        state = Pipeline(redis_server, client, group, replicas, learner, port, env, checkpoint_dir, gateway)
        yield state
        # The restart test replaced the server; the one running now is the one to stop.
        redis_server = state.redis_server
    finally:
        if gateway is not None:
            gateway.stop()
        if server is not None:
            server.stop(None).wait()
        group.stop_all()
        client.close()
        redis_server.stop()


def acknowledged_snapshot(client: redis.Redis) -> tuple[int, int, int]:
    """(stream length, pending, undelivered) of the learner group, read atomically."""
    pipe = client.pipeline(transaction=True)
    pipe.xlen(STREAM)
    pipe.xinfo_groups(STREAM)
    length, groups = pipe.execute()
    group = next(g for g in groups if g["name"] == b"learner")
    undelivered = len(client.xrange(STREAM, min="(" + group["last-delivered-id"].decode(), max="+"))
    return int(length), int(group["pending"]), undelivered


def test_a_learner_sigkilled_mid_batch_restarts_loses_nothing_and_continues_the_version_sequence(
    pipeline: Pipeline, resilience_ledger
) -> None:
    store = CheckpointStore(pipeline.checkpoint_dir)
    address = f"127.0.0.1:{pipeline.learner_port}"
    with resilience_ledger.fault("SIGKILL the learner mid-batch, restart it") as notes:
        wait_until(lambda: learner_status(address).checkpoints_published >= 2, "the learner to train and publish")
        # Mid-batch: between two GetStatus calls the update counter moved, so it is inside its loop.
        first = learner_status(address).updates
        wait_until(lambda: learner_status(address).updates > first, "the learner to be updating")
        coverage_before = coverage(pipeline.gateway, 0.5)
        pipeline.learner.kill()
        # Reported, not asserted: acting does not depend on the learner, but one replica on a shared
        # 2-core machine makes a 1 s window noisy.
        coverage_without_learner = coverage(pipeline.gateway, 1.0)
        version_at_kill = store.latest()
        assert version_at_kill is not None
        # Nobody reads the group while the learner is dead, so this snapshot cannot move under us.
        length, pending, undelivered = acknowledged_snapshot(pipeline.client)
        pipeline.acknowledged_by_killed_learners += length - pending - undelivered
        notes.append(
            f"left {pending} pending and {undelivered} unread at the kill, checkpoint v{version_at_kill.version}"
        )

        restarted = pipeline.group.start(
            "learner-restarted", "rtrl.services.learner", pipeline.learner_env, port=pipeline.learner_port
        )
        pipeline.learner = restarted
        wait_until(
            lambda: learner_status(address).transitions_consumed >= pending + undelivered,
            "the restarted learner to take over what the first left",
        )
        wait_until(
            lambda: (latest := store.latest()) is not None and latest.version > version_at_kill.version,
            "a checkpoint after the restart",
        )
        log = restarted.log()
        assert f"resumed from checkpoint {version_at_kill.version}" in log or "resumed from checkpoint" in log, log
        notes.append(f"coverage {coverage_before:.1%} before, {coverage_without_learner:.1%} without a learner")


def test_redis_stopped_for_10_s_leaves_acting_alone_buffers_to_the_bound_and_counts_the_drops(
    pipeline: Pipeline, resilience_ledger
) -> None:
    gateway = pipeline.gateway
    redis_process = pipeline.redis_server.process
    assert redis_process is not None
    with resilience_ledger.fault(f"SIGSTOP Redis for {OUTAGE_S:.0f} s") as notes:
        coverage_before = coverage(gateway, 2.0)
        before = gateway.stats()
        redis_process.send_signal(signal.SIGSTOP)
        try:
            coverage_during = coverage(gateway, OUTAGE_S)
            during = gateway.stats()
        finally:
            redis_process.send_signal(signal.SIGCONT)
        produced = during.decisions - before.decisions
        dropped = during.transitions_dropped - before.transitions_dropped
        # Buffered up to the bound (the queue plus the batch held for the next attempt), the rest dropped
        # and counted; never more dropped than what did not fit.
        assert dropped > 0
        assert dropped <= produced - PUBLISH_QUEUE + 1
        assert during.transitions_queued >= PUBLISH_QUEUE - 1

        # Publishing resumes by itself and the buffer empties. Both are waited for together: the queue
        # empties into a batch before that batch's XADD returns and counts it published.
        def published_the_buffer() -> bool:
            stats = gateway.stats()
            resumed = stats.transitions_published > during.transitions_published + PUBLISH_QUEUE / 2
            return resumed and stats.transitions_queued < 8

        wait_until(published_the_buffer, "the gateway to publish its buffer", 30)
        # Acting never waited for Redis.
        assert coverage_during >= coverage_before - UNCHANGED, (coverage_before, coverage_during)
        notes.append(
            f"{produced} transitions during the outage, {dropped} dropped and counted, "
            f"coverage {coverage_before:.1%} before and {coverage_during:.1%} during"
        )


def test_every_published_transition_is_consumed_once_below_the_stream_bound(
    pipeline: Pipeline, resilience_ledger
) -> None:
    gateway = pipeline.gateway
    gateway.stop()
    stats = gateway.stats()
    produced, published, dropped = stats.decisions, stats.transitions_published, stats.transitions_dropped
    assert stats.transitions_queued == 0
    # Every step the clock closed became a transition: published, or dropped and counted.
    assert produced - 1 <= published + dropped <= produced
    address = f"127.0.0.1:{pipeline.learner_port}"
    in_stream = pipeline.client.xlen(STREAM)

    def consumed_so_far() -> int:
        return pipeline.acknowledged_by_killed_learners + learner_status(address).transitions_consumed

    def drained() -> bool:
        # The learner counts a read after acknowledging it, so its count is waited for as well.
        _, pending, undelivered = acknowledged_snapshot(pipeline.client)
        return pending == 0 and undelivered == 0 and consumed_so_far() >= in_stream

    wait_until(drained, "the learner to consume the whole stream", 60)
    consumed = consumed_so_far()
    # Redis holds every confirmed XADD (more than confirmed only after a resend at-least-once).
    assert in_stream >= published
    assert consumed == in_stream
    lost = max(published - consumed, 0)
    resilience_ledger.count_transitions(published=published, consumed=consumed, dropped=dropped, lost=lost)
    assert lost == 0


def test_redis_restarted_on_its_port_is_found_again_by_gateway_and_learner(
    pipeline: Pipeline, resilience_ledger, tmp_path: Path
) -> None:
    """After the accounting: the restart empties the stream (no persistence), which is what it tests."""
    old = pipeline.redis_server
    address = f"127.0.0.1:{pipeline.learner_port}"
    settings = pipeline.gateway.settings
    # A fresh gateway: the module's first one was stopped for the accounting.
    gateway = Gateway(settings)
    gateway.start()
    try:
        wait_until(lambda: gateway.stats().transitions_published > 10, "the new gateway to publish")
        with resilience_ledger.fault("restart Redis on its port") as notes:
            coverage_before = coverage(gateway, 2.0)
            consumed_before = learner_status(address).transitions_consumed
            old.stop()
            restarted_at = time.monotonic()
            pipeline.redis_server = LocalRedis(port=old.port).start()
            coverage_around = coverage(gateway, 3.0)
            published_at_restart = gateway.stats().transitions_published
            wait_until(
                lambda: gateway.stats().transitions_published > published_at_restart + 10,
                "the gateway to publish to the restarted Redis",
                30,
            )
            wait_until(
                lambda: learner_status(address).transitions_consumed > consumed_before + 10,
                "the learner to consume from the restarted Redis",
                30,
            )
            resumed_s = time.monotonic() - restarted_at
            assert coverage_around >= coverage_before - UNCHANGED, (coverage_before, coverage_around)
            notes.append(f"publishing and consuming again {resumed_s:.1f} s after the restart")
    finally:
        gateway.stop()
