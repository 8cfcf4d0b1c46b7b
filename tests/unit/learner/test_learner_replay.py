"""Replay pairing: successors by seq per gateway, never across gateways, episodes, gaps or reused slots.

Each observation encodes who it is ([gateway index, seq, episode]), so a sampled (obs, next_obs) pair
can be checked against the stream it came from.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from learner_transitions import make_transition, marked_observation

from rtrl.transitions import Transition
from services.learner.replay import ReplayBuffer

GATEWAYS = ("gw-a", "gw-b", "gw-c")


def transition(
    gateway: str, seq: int, episode: int = 0, terminated: bool = False, truncated: bool = False, action: int = 0
) -> Transition:
    return make_transition(
        gateway,
        seq,
        episode=episode,
        obs_frame=seq * 4,
        observation=marked_observation(GATEWAYS, gateway, seq, episode),
        action=action,
        action_count=4,
        reward=float(seq),
        terminated=terminated,
        truncated=truncated,
    )


def buffer(capacity: int = 100) -> ReplayBuffer:
    return ReplayBuffer(capacity, (3,), np.dtype(np.float32), seed=0)


def sampled_pairs(replay: ReplayBuffer, n: int = 400) -> set[tuple[tuple[int, ...], tuple[int, ...], bool]]:
    batch = replay.sample(n)
    return {
        (tuple(int(v) for v in o), tuple(int(v) for v in no), bool(t))
        for o, no, t in zip(batch.obs, batch.next_obs, batch.terminated, strict=True)
    }


def assert_pairs_are_successors(replay: ReplayBuffer) -> None:
    batch = replay.sample(256)
    for obs, next_obs, terminated, reward in zip(
        batch.obs, batch.next_obs, batch.terminated, batch.rewards, strict=True
    ):
        assert reward == obs[1], "reward/obs of one slot must stay together"
        if not terminated:
            gateway, seq, episode = obs
            assert tuple(next_obs) == (gateway, seq + 1, episode), f"{obs} paired with {next_obs}"


def test_consecutive_transitions_of_a_gateway_are_paired_and_the_newest_waits() -> None:
    replay = buffer()
    for seq in range(5):
        replay.add(transition("gw-a", seq, action=seq % 4))

    assert len(replay) == 5
    assert replay.trainable_count == 4
    assert sampled_pairs(replay) == {((0, s, 0), (0, s + 1, 0), False) for s in range(4)}
    batch = replay.sample(64)
    assert np.array_equal(batch.actions, batch.obs[:, 1].astype(np.int64) % 4)


def test_terminated_transition_is_trainable_at_once_and_not_paired_into_the_next_episode() -> None:
    replay = buffer()
    replay.add(transition("gw-a", 0, episode=0))
    replay.add(transition("gw-a", 1, episode=0, terminated=True))
    assert replay.trainable_count == 2
    replay.add(transition("gw-a", 2, episode=1))

    pairs = sampled_pairs(replay)
    assert ((0, 1, 0), (0, 1, 0), True) in pairs  # placeholder next_obs, masked by terminated
    assert all(next_obs[2] == obs[2] for obs, next_obs, _ in pairs)
    assert replay.trainable_count == 2
    assert replay.unpaired == 0


def test_truncated_transition_is_unpaired_and_never_sampled() -> None:
    replay = buffer()
    replay.add(transition("gw-a", 0))
    replay.add(transition("gw-a", 1, truncated=True))
    replay.add(transition("gw-a", 2, episode=1))
    replay.add(transition("gw-a", 3, episode=1))

    assert replay.unpaired == 1
    assert sampled_pairs(replay) == {((0, 0, 0), (0, 1, 0), False), ((0, 2, 1), (0, 3, 1), False)}


def test_a_gap_in_seq_leaves_the_transition_before_it_unpaired() -> None:
    replay = buffer()
    for seq in (0, 1, 3, 4):  # seq 2 was dropped
        replay.add(transition("gw-a", seq))

    assert replay.unpaired == 1
    assert sampled_pairs(replay) == {((0, 0, 0), (0, 1, 0), False), ((0, 3, 0), (0, 4, 0), False)}


def test_a_redelivered_or_out_of_order_transition_is_not_paired() -> None:
    replay = buffer()
    for seq in (0, 1, 1, 2, 0):
        replay.add(transition("gw-a", seq))

    # 0->1 pairs; the first 1 is followed by 1 again (unpaired); the second 1 pairs with 2; 2 then sees 0.
    assert replay.unpaired == 2
    assert sampled_pairs(replay) == {((0, 0, 0), (0, 1, 0), False), ((0, 1, 0), (0, 2, 0), False)}


def test_an_episode_change_without_a_terminal_flag_is_not_paired() -> None:
    replay = buffer()
    replay.add(transition("gw-a", 0, episode=0))
    replay.add(transition("gw-a", 1, episode=1))

    assert replay.unpaired == 1
    assert replay.trainable_count == 0
    with pytest.raises(ValueError, match="no trainable transition"):
        replay.sample(1)


def test_interleaved_gateways_pair_only_within_their_own_sequence() -> None:
    replay = buffer()
    # Same seq numbers on every gateway, interleaved: pairing by position or seq alone would mix them.
    for seq in range(6):
        for gateway in GATEWAYS:
            replay.add(transition(gateway, seq))

    assert replay.trainable_count == 15
    assert replay.unpaired == 0
    assert sampled_pairs(replay, 2000) == {((g, s, 0), (g, s + 1, 0), False) for g in range(3) for s in range(5)}


def test_wrap_around_keeps_only_pairs_whose_both_observations_are_still_stored() -> None:
    replay = buffer(capacity=5)
    for seq in range(12):
        replay.add(transition("gw-a", seq))

    # Slots hold seq 7..11; 11 waits for its successor.
    assert len(replay) == 5
    assert replay.trainable_count == 4
    assert sampled_pairs(replay) == {((0, s, 0), (0, s + 1, 0), False) for s in range(7, 11)}


def test_a_waiting_transition_whose_slot_was_reused_is_never_paired() -> None:
    replay = buffer(capacity=4)
    replay.add(transition("gw-a", 0))
    for seq in range(4):  # another gateway fills the ring and reuses gw-a's slot
        replay.add(transition("gw-b", seq))
    replay.add(transition("gw-a", 1))  # the successor of a transition that is gone

    assert replay.unpaired == 1
    pairs = sampled_pairs(replay)
    assert pairs == {((1, s, 0), (1, s + 1, 0), False) for s in range(1, 3)}


def test_a_successor_that_overwrites_its_own_predecessor_is_not_paired() -> None:
    replay = buffer(capacity=1)
    replay.add(transition("gw-a", 0))
    replay.add(transition("gw-a", 1))

    assert replay.unpaired == 1
    assert replay.trainable_count == 0


def test_observations_of_another_shape_are_refused() -> None:
    replay = buffer()
    bad = Transition(**{**transition("gw-a", 0).__dict__, "observation": np.zeros(4, dtype=np.float32)})
    assert not replay.accepts(bad)
    with pytest.raises(ValueError, match="does not fit"):
        replay.add(bad)


def test_observations_are_stored_once() -> None:
    replay = ReplayBuffer(50_000, (4, 84, 84), np.dtype(np.uint8))
    assert replay._obs.nbytes == 50_000 * 4 * 84 * 84  # ~1.4 GB, mapped lazily
    assert replay._obs.nbytes < 1.5e9


# -- property: any stream of steps, any capacity --------------------------------------------------

step = st.tuples(
    st.sampled_from(range(len(GATEWAYS))),
    st.sampled_from(["next", "next", "next", "next", "gap", "repeat", "terminate", "truncate", "new_episode"]),
)


def expected_pairing(records: list[tuple[int, int, int, bool, bool]], capacity: int) -> tuple[set[int], int]:
    """Brute force: write ids that are trainable now, and the unpaired count, from the rules alone."""
    trainable: set[int] = set()
    unpaired = 0
    for i, (gateway, seq, episode, terminated, truncated) in enumerate(records):
        if terminated:
            trainable.add(i)
            continue
        if truncated:
            unpaired += 1
            continue
        later = next((j for j in range(i + 1, len(records)) if records[j][0] == gateway), None)
        if later is None:
            continue  # still waiting
        _, s, e, _, _ = records[later]
        # The successor's write at `later` must not have reused slot i (later - i < capacity).
        if s == seq + 1 and e == episode and later - i < capacity:
            trainable.add(i)
        else:
            unpaired += 1
    stored = set(range(max(0, len(records) - capacity), len(records)))
    return trainable & stored, unpaired


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, min_size=1, max_size=60), capacity=st.integers(min_value=1, max_value=12))
def test_pairing_matches_the_rules_for_any_stream(steps: list[tuple[int, str]], capacity: int) -> None:
    replay = buffer(capacity)
    state = {g: [0, 0] for g in range(len(GATEWAYS))}  # next seq, episode
    records: list[tuple[int, int, int, bool, bool]] = []
    for gateway, kind in steps:
        seq, episode = state[gateway]
        if kind == "gap":
            seq += 1
        elif kind == "repeat":
            seq = max(0, seq - 1)
        elif kind == "new_episode":
            episode += 1
        terminated, truncated = kind == "terminate", kind == "truncate"
        replay.add(transition(GATEWAYS[gateway], seq, episode, terminated=terminated, truncated=truncated))
        records.append((gateway, seq, episode, terminated, truncated))
        state[gateway] = [seq + 1, episode + 1 if terminated or truncated else episode]

        expected, unpaired = expected_pairing(records, capacity)
        assert replay.trainable_count == len(expected)
        assert replay.unpaired == unpaired
        if expected:
            assert_pairs_are_successors(replay)
            seen = {(int(o[0]), int(o[1]), int(o[2])) for o in replay.sample(256).obs}
            assert seen <= {records[i][:3] for i in expected}
