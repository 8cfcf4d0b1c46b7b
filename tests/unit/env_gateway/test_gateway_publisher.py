"""The transition publisher: bounded queue, Redis outages, and entries that decode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import numpy as np
import pytest
import redis
from gateway_fakes import wait_for

from rtrl.local_redis import LocalRedis, free_port
from rtrl.transitions import STREAM_FIELD as FIELD
from rtrl.transitions import Transition, decode, encode
from services.env_gateway.publisher import TransitionPublisher


def transition(seq: int) -> Transition:
    return Transition(
        gateway_id="gw-test",
        seq=seq,
        episode=0,
        step=seq,
        obs_frame=4 * seq,
        observation=np.full((4, 84, 84), seq, dtype=np.uint8),
        action=1,
        action_count=6,
        reward=0.5,
        terminated=False,
        truncated=False,
        fresh=True,
        fallback_policy=1,
        staleness_frames=1,
        policy_version=3,
        behaviour_log_prob=-0.1,
        obs_captured_unix_ns=1,
        action_applied_unix_ns=2,
    )


def read_stream(url: str, stream: str) -> list[Transition]:
    client = redis.Redis.from_url(url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream))
    finally:
        client.close()
    return [decode(fields[FIELD.encode()]) for _, fields in entries]


@pytest.fixture(scope="module")
def local_redis() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


def test_full_queue_drops_and_counts_without_blocking() -> None:
    publisher = TransitionPublisher(f"redis://127.0.0.1:{free_port()}/0", "s", 100, 2, encode)
    assert [publisher.publish(transition(i)) for i in range(3)] == [True, True, False]
    assert (publisher.dropped, publisher.queued) == (1, 2)
    publisher.stop(flush_timeout_s=0.0)
    assert publisher.dropped == 3  # what was never published counts as dropped


def test_redis_down_counts_batches_as_dropped_and_keeps_accepting(caplog: pytest.LogCaptureFixture) -> None:
    publisher = TransitionPublisher(f"redis://127.0.0.1:{free_port()}/0", "s", 100, 16, encode)
    publisher.start()
    try:
        assert all(publisher.publish(transition(i)) for i in range(5))
        assert wait_for(lambda: publisher.dropped == 5)
        assert publisher.publish(transition(5))
        assert wait_for(lambda: publisher.dropped == 6)
        assert publisher.in_outage
    finally:
        publisher.stop(flush_timeout_s=0.2)
    assert publisher.published == 0
    # One warning per outage, not one per batch.
    assert sum("Redis refused" in r.message for r in caplog.records) == 1


def test_published_entries_arrive_in_order_and_decode(local_redis: LocalRedis) -> None:
    stream = "test:publisher:decode"
    publisher = TransitionPublisher(local_redis.url, stream, 100, 64, encode)
    publisher.start()
    for i in range(10):
        publisher.publish(transition(i))
    publisher.stop()
    assert (publisher.published, publisher.dropped) == (10, 0)
    decoded = read_stream(local_redis.url, stream)
    assert [t.seq for t in decoded] == list(range(10))
    assert decoded[3].observation.shape == (4, 84, 84) and int(decoded[3].observation[0, 0, 0]) == 3


def test_publisher_reconnects_by_itself_after_redis_returns() -> None:
    port = free_port()
    first = LocalRedis(port=port).start()
    publisher = TransitionPublisher(first.url, "test:publisher:reconnect", 100, 64, encode)
    publisher.start()
    second: LocalRedis | None = None
    try:
        publisher.publish(transition(0))
        assert wait_for(lambda: publisher.published == 1)
        first.stop()
        publisher.publish(transition(1))
        assert wait_for(lambda: publisher.dropped == 1)
        second = LocalRedis(port=port).start()
        seq = 2

        def published_again() -> bool:
            nonlocal seq
            publisher.publish(transition(seq))
            seq += 1
            return publisher.published >= 2

        assert wait_for(published_again, timeout_s=10.0)
        assert not publisher.in_outage
    finally:
        publisher.stop(flush_timeout_s=0.5)
        if second is not None:
            second.stop()
