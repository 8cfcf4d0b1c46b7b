"""TransitionStream against a real Redis: reading order, reclaiming, dead letters, statistics, outages."""

from __future__ import annotations

import pytest

from rtrl.local_redis import free_port
from rtrl.services.learner.stream import StreamUnavailable, TransitionStream

GROUP = "learner"


def consumer(redis_url: str, stream: str, name: str = "me", **options: int) -> TransitionStream:
    stream_consumer = TransitionStream(redis_url, stream, GROUP, name, **options)
    stream_consumer.connect()
    return stream_consumer


def drain(stream: TransitionStream, rounds: int = 10) -> list[int]:
    """Seqs of everything readable now, acknowledging as the learner does."""
    seqs: list[int] = []
    for _ in range(rounds):
        result = stream.read(block=False)
        seqs += [entry.transition.seq for entry in result.entries]
        stream.ack([entry.entry_id for entry in result.entries])
    return seqs


def test_entries_published_before_the_group_existed_are_read_in_order(
    redis_server, stream_name, publish, transition, pending_count
) -> None:
    publish([transition(seq) for seq in range(100)])
    stream = consumer(redis_server.url, stream_name, count=64)

    assert drain(stream) == list(range(100))
    assert pending_count() == 0
    stream.close()


def test_own_unacknowledged_entries_come_first_after_a_reconnect(
    redis_server, stream_name, publish, transition, pending_count
) -> None:
    publish([transition(seq) for seq in range(10)])
    crashed = consumer(redis_server.url, stream_name)
    result = crashed.read(block=False)
    assert [e.transition.seq for e in result.entries] == list(range(10))
    crashed.close()  # no ack: a crash after reading

    publish([transition(seq) for seq in range(10, 15)])
    restarted = consumer(redis_server.url, stream_name, count=4)
    assert drain(restarted) == list(range(15))
    assert pending_count() == 0
    restarted.close()


def test_other_consumers_pending_entries_are_claimed_only_once_idle(
    redis_server, redis_client, stream_name, publish, transition, pending_count
) -> None:
    publish([transition(seq) for seq in range(5)])
    dead = consumer(redis_server.url, stream_name, name="dead")
    assert len(dead.read(block=False).entries) == 5
    dead.close()

    patient = consumer(redis_server.url, stream_name, name="patient", reclaim_min_idle_ms=60_000)
    assert drain(patient) == []  # five entries idle for less than a minute belong to "dead" still
    assert pending_count() == 5
    patient.close()

    eager = consumer(redis_server.url, stream_name, name="eager", reclaim_min_idle_ms=0)
    assert drain(eager) == list(range(5))
    assert pending_count() == 0
    eager.close()


def test_undecodable_entries_go_to_the_dead_letter_stream_and_are_acknowledged(
    redis_server, redis_client, stream_name, publish, transition, pending_count
) -> None:
    ids = publish([transition(0), {b"transition": b"RTRT\x07junk"}, {b"a": b"1", b"b": b"2"}, transition(1)])
    stream = consumer(redis_server.url, stream_name)

    result = stream.read(block=False)
    assert [e.transition.seq for e in result.entries] == [0, 1]
    assert result.invalid == 2
    stream.ack([e.entry_id for e in result.entries])
    assert pending_count() == 0

    dead = redis_client.xrange(stream_name + ":dead")
    assert [fields[b"source_id"] for _, fields in dead] == [ids[1], ids[2]]
    assert b"version 7" in dead[0][1][b"error"]
    assert dead[0][1][b"transition"] == b"RTRT\x07junk"
    assert b"no 'transition' field" in dead[1][1][b"error"]
    stream.close()


def test_a_single_field_under_another_name_is_still_decoded(redis_server, stream_name, publish, transition) -> None:
    from rtrl.transitions import encode

    publish([{b"data": encode(transition(3))}])
    stream = consumer(redis_server.url, stream_name)
    assert [e.transition.seq for e in stream.read(block=False).entries] == [3]
    stream.close()


def test_pending_entries_deleted_from_the_stream_are_acknowledged(
    redis_server, redis_client, stream_name, publish, transition, pending_count
) -> None:
    ids = publish([transition(seq) for seq in range(3)])
    crashed = consumer(redis_server.url, stream_name)
    crashed.read(block=False)
    crashed.close()
    redis_client.xdel(stream_name, ids[1])  # trimmed while pending

    restarted = consumer(redis_server.url, stream_name)
    result = restarted.read(block=False)
    assert [e.transition.seq for e in result.entries] == [0, 2]
    assert result.invalid == 1
    restarted.ack([e.entry_id for e in result.entries])
    assert pending_count() == 0
    restarted.close()


def test_stats_report_length_pending_and_lag(redis_server, stream_name, publish, transition) -> None:
    publish([transition(seq) for seq in range(6)])
    stream = consumer(redis_server.url, stream_name, count=4)
    before = stream.stats()
    assert (before.length, before.pending) == (6, 0)
    assert before.lag in (6, -1)  # Redis 7 counts it; 6.2 cannot tell before everything was delivered

    result = stream.read(block=False)
    assert len(result.entries) == 4
    middle = stream.stats()
    assert middle.pending == 4
    assert middle.lag in (2, -1)

    stream.ack([e.entry_id for e in result.entries])
    stream.ack([e.entry_id for e in stream.read(block=False).entries])
    after = stream.stats()
    assert (after.length, after.pending, after.lag) == (6, 0, 0)
    stream.close()


def test_an_unreachable_redis_raises_stream_unavailable_with_what_to_check() -> None:
    stream = TransitionStream(f"redis://:secret@127.0.0.1:{free_port()}/0", "s", GROUP, "me")
    with pytest.raises(StreamUnavailable, match="RTRL_REDIS_URL") as caught:
        stream.connect()
    assert "secret" not in str(caught.value)
    with pytest.raises(StreamUnavailable):
        stream.read(block=False)
