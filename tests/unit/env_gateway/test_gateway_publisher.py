"""The transition publisher: bounded queue, Redis outages, and entries that decode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import cast

import numpy as np
import pytest
import redis
from gateway_fakes import wait_for

from rtrl.local_redis import LocalRedis, free_port
from rtrl.services.env_gateway.publisher import TransitionPublisher
from rtrl.transitions import STREAM_FIELD as FIELD
from rtrl.transitions import Transition, decode, encode


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
        action_obs_frame=4 * seq,
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


def test_redis_down_keeps_transitions_up_to_the_bound_then_drops_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = TransitionPublisher(f"redis://127.0.0.1:{free_port()}/0", "s", 100, 16, encode, batch_size=4)
    # Queued before the thread starts, so its first batch is a full one of 4.
    assert all(publisher.publish(transition(i)) for i in range(5))
    publisher.start()
    try:
        assert wait_for(lambda: publisher.in_outage)
        # The refused batch is held for the next attempt, nothing is dropped while there is room.
        assert (publisher.dropped, publisher.queued) == (0, 5)
        accepted = [publisher.publish(transition(i)) for i in range(5, 30)]
        # Room for 16 queued besides the held batch of 4: the 21st transition and later are dropped.
        assert accepted.count(True) == 16 - 1 and accepted.count(False) == 10
        assert (publisher.dropped, publisher.queued) == (10, 20)
    finally:
        publisher.stop(flush_timeout_s=0.2)
    assert publisher.published == 0
    assert publisher.dropped == 30  # what was never published counts as dropped at the stop
    # One warning per outage, not one per attempt.
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
        assert wait_for(lambda: publisher.in_outage)
        second = LocalRedis(port=port).start()
        publisher.publish(transition(2))
        # What waited during the outage goes out once Redis is back, in order, and nothing was dropped.
        assert wait_for(lambda: publisher.published == 3, timeout_s=10.0)
        assert not publisher.in_outage and publisher.dropped == 0
        assert [t.seq for t in read_stream(second.url, "test:publisher:reconnect")] == [1, 2]
    finally:
        publisher.stop(flush_timeout_s=0.5)
        if second is not None:
            second.stop()


def test_batches_wait_for_the_quiet_moment_the_clock_names(local_redis: LocalRedis) -> None:
    """Each batch is written at the first moment `quiet_after` names past the batch interval."""
    asked: list[float] = []
    written_s: list[float] = []

    def quiet_after(not_before_s: float) -> float:
        asked.append(not_before_s)
        return not_before_s + 0.2

    publisher: TransitionPublisher[Transition] = TransitionPublisher(
        local_redis.url, "publisher:quiet", 100, 100, encode=encode, batch_interval_s=0.01, quiet_after=quiet_after
    )
    send = publisher._send

    def timed_send(entries: list[bytes]) -> bool:
        written_s.append(time.monotonic())
        return send(entries)

    publisher._send = timed_send  # type: ignore[method-assign]
    publisher.start()
    try:
        publisher.publish(transition(0))
        wait_for(lambda: publisher.published == 1, timeout_s=5.0)
    finally:
        publisher.stop()
    assert read_stream(local_redis.url, "publisher:quiet")[0].seq == 0
    # The write waited for the named moment: past the 10 ms batch interval by the 200 ms the clock added.
    assert written_s[0] >= asked[0] + 0.2
