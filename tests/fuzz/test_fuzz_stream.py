"""A foreign producer writing junk into the learner's stream: random fields, random bytes where a
transition belongs, truncated and bit-flipped encodings. Every entry is consumed and counted, the ones
that are not usable transitions go to the dead-letter stream, and the learner keeps running."""

from __future__ import annotations

import time

import redis
from fuzz_support import vector_transition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtrl.transitions import STREAM_FIELD, encode

VALID = encode(vector_transition(0))


@st.composite
def junk_entry(draw: st.DrawFn) -> dict[bytes, bytes]:
    kind = draw(st.sampled_from(["random fields", "random bytes", "truncated", "flipped"]))
    if kind == "random fields":
        return draw(st.dictionaries(st.binary(min_size=1, max_size=12), st.binary(max_size=64), min_size=1, max_size=3))
    if kind == "random bytes":
        return {STREAM_FIELD.encode(): draw(st.binary(max_size=200))}
    if kind == "truncated":
        return {STREAM_FIELD.encode(): VALID[: draw(st.integers(0, len(VALID) - 1))]}
    position = draw(st.integers(0, len(VALID) - 1))
    flipped = bytearray(VALID)
    flipped[position] ^= draw(st.integers(1, 255))
    return {STREAM_FIELD.encode(): bytes(flipped)}


def test_junk_from_a_foreign_producer_is_dead_lettered_counted_and_never_stops_the_learner(
    sequential_learner, fuzz_redis, resilience_ledger
) -> None:
    learner, _ = sequential_learner
    stream = learner.settings.stream
    client = redis.Redis.from_url(fuzz_redis.url)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(entries=st.lists(junk_entry(), min_size=1, max_size=5))
    def produce(entries: list[dict[bytes, bytes]]) -> None:
        resilience_ledger.inputs["learner stream entries (junk from a foreign producer)"] += len(entries)
        before = learner.status()
        dead_before = client.xlen(stream + ":dead")
        for fields in entries:
            client.xadd(stream, fields)
        give_up_s = time.monotonic() + 10
        while learner.status().transitions_consumed < before.transitions_consumed + len(entries):
            assert learner.failure is None, learner.failure
            assert time.monotonic() < give_up_s, "the learner stopped consuming after junk"
            time.sleep(0.01)
        after = learner.status()
        invalid = after.transitions_invalid - before.transitions_invalid
        # Each entry is consumed once: as junk (dead-lettered) or, when a flipped byte left a valid
        # transition, as data.
        assert after.transitions_consumed == before.transitions_consumed + len(entries)
        assert client.xlen(stream + ":dead") - dead_before == invalid

    try:
        produce()
    finally:
        client.close()
    assert learner.failure is None
    assert learner.status().transitions_invalid > 0
