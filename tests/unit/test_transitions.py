"""The transition codec: exact round trips and clear rejection of malformed bytes."""

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtrl.transitions import MAGIC, Transition, TransitionDecodeError, decode, encode


def make(**overrides):
    fields = dict(
        gateway_id="gateway-a",
        seq=41,
        episode=3,
        step=17,
        obs_frame=1234,
        observation=np.arange(4 * 6 * 5, dtype=np.uint8).reshape(4, 6, 5),
        action=2,
        action_count=6,
        reward=-1.0,
        terminated=True,
        truncated=False,
        fresh=True,
        fallback_policy=1,
        staleness_frames=5,
        policy_version=9,
        behaviour_log_prob=-0.25,
        obs_captured_unix_ns=1_700_000_000_000_000_000,
        action_applied_unix_ns=1_700_000_000_016_000_000,
        action_obs_frame=1230,
    )
    fields.update(overrides)
    if not fields["fresh"] and "action_obs_frame" not in overrides:
        fields["action_obs_frame"] = -1
    return Transition(**fields)


def assert_same(a: Transition, b: Transition) -> None:
    for name in Transition.__dataclass_fields__:
        if name == "observation":
            assert a.observation.dtype == b.observation.dtype
            np.testing.assert_array_equal(a.observation, b.observation)
        else:
            assert getattr(a, name) == getattr(b, name), name


def test_round_trip_keeps_every_field():
    original = make()
    assert_same(decode(encode(original)), original)


def test_round_trip_float_observation_and_unicode_gateway():
    original = make(
        gateway_id="ゲーム-1",
        observation=np.linspace(-1, 1, 8, dtype=np.float32),
        fresh=False,
        policy_version=-1,
    )
    assert_same(decode(encode(original)), original)


@given(
    seq=st.integers(0, 2**64 - 1),
    action_count=st.integers(1, 2**16 - 1),
    data=st.data(),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
)
def test_round_trip_property(seq, action_count, data, flags, shape):
    action = data.draw(st.integers(0, action_count - 1))
    obs = np.random.default_rng(seq % 1000).integers(0, 256, size=shape, dtype=np.uint8)
    original = make(
        seq=seq,
        action=action,
        action_count=action_count,
        observation=obs,
        terminated=flags[0],
        truncated=flags[1],
        fresh=flags[2],
    )
    assert_same(decode(encode(original)), original)


def test_every_truncation_is_rejected_with_a_reason():
    data = encode(make())
    for cut in range(len(data)):
        with pytest.raises(TransitionDecodeError, match=r"truncated|bytes"):
            decode(data[:cut])


def test_trailing_bytes_are_rejected():
    with pytest.raises(TransitionDecodeError, match="needs 120 bytes but 121 follow"):
        decode(encode(make()) + b"\x00")


def test_wrong_magic_is_rejected():
    data = bytearray(encode(make()))
    data[:4] = b"JUNK"
    with pytest.raises(TransitionDecodeError, match="not a transition"):
        decode(bytes(data))


def test_unknown_version_is_rejected():
    data = bytearray(encode(make()))
    data[4] = 99
    with pytest.raises(TransitionDecodeError, match="version 99"):
        decode(bytes(data))


def test_a_version_1_transition_without_the_action_observation_frame_is_rejected_with_a_sentence():
    data = bytearray(encode(make()))
    data[4] = 1
    with pytest.raises(TransitionDecodeError, match=r"version 1 is not supported: this learner reads version 2"):
        decode(bytes(data))


@pytest.mark.parametrize(("fresh", "action_obs_frame"), [(True, -1), (False, 7)])
def test_an_action_observation_frame_that_contradicts_the_fresh_flag_is_rejected(fresh, action_obs_frame):
    data = encode(make(fresh=fresh, action_obs_frame=action_obs_frame))
    with pytest.raises(TransitionDecodeError, match=f"action_obs_frame {action_obs_frame} does not fit"):
        decode(data)


def test_the_frame_an_action_was_computed_from_travels_earlier_or_later_than_the_steps_own():
    for action_obs_frame in (1226, 1234, 1238):
        assert decode(encode(make(action_obs_frame=action_obs_frame))).action_obs_frame == action_obs_frame


def test_out_of_range_action_is_rejected():
    data = bytearray(encode(make(action=2, action_count=6)))
    # action_count sits after magic(4)+version(1)+seq(8)+episode(8)+step(4)+obs_frame(8)+action(2)
    struct.pack_into("<H", data, 4 + 1 + 8 + 8 + 4 + 8 + 2, 2)
    with pytest.raises(TransitionDecodeError, match="out of range"):
        decode(bytes(data))


def test_unknown_dtype_is_rejected():
    original = make(gateway_id="g")
    data = bytearray(encode(original))
    dtype_offset = data.index(b"g", len(MAGIC)) + 1
    data[dtype_offset] = 7
    with pytest.raises(TransitionDecodeError, match="dtype code 7"):
        decode(bytes(data))


def test_encode_refuses_unsupported_dtype():
    with pytest.raises(ValueError, match="uint8 or float32"):
        encode(make(observation=np.zeros(3, dtype=np.int64)))


@given(st.binary(max_size=200))
def test_random_bytes_never_decode_silently(blob):
    try:
        decode(blob)
    except TransitionDecodeError:
        return
    # Random bytes only decode if they happen to be a complete valid record.
    assert blob[:4] == MAGIC
