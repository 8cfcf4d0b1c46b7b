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

from rtrl.services.learner.replay import ReplayBuffer
from rtrl.transitions import Transition

GATEWAYS = ("gw-a", "gw-b", "gw-c")


def transition(
    gateway: str,
    seq: int,
    episode: int = 0,
    terminated: bool = False,
    truncated: bool = False,
    action: int = 0,
    decided_on: int | None = None,
) -> Transition:
    """Step `seq` of `gateway`; its action was computed from step `decided_on`'s observation (default: its own)."""
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
        action_obs_frame=(seq if decided_on is None else decided_on) * 4,
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


# -- decision observations ----------------------------------------------------------------------------


def test_an_action_from_the_step_befores_observation_is_learned_as_that_observations_decision() -> None:
    replay = buffer()
    replay.add(transition("gw-a", 0))
    replay.add(transition("gw-a", 1, decided_on=0))  # the reply to step 0 served step 1
    replay.add(transition("gw-a", 2, decided_on=1))

    # (x_0, a_1, r_1, x_1) and (x_1, a_2, r_2, x_2): trainable at once, the next observation already there;
    # step 0's action (from x_0 too, in this made-up stream) pairs with its successor as usual.
    assert replay.decisions_elsewhere == 2 and replay.decisions_unpaired == 0
    assert replay.trainable_count == 3
    batch = replay.sample(400)
    learned = {(int(o[1]), int(r), int(n[1])) for o, r, n in zip(batch.obs, batch.rewards, batch.next_obs, strict=True)}
    assert learned == {(0, 0, 1), (0, 1, 1), (1, 2, 2)}


def test_an_action_from_an_earlier_observation_is_paired_even_when_its_own_step_was_truncated() -> None:
    replay = buffer()
    for seq in range(3):
        replay.add(transition("gw-a", seq))
    replay.add(transition("gw-a", 3, decided_on=1, truncated=True))

    # x_2 came before the truncation, so the decision (x_1, a_3, r_3, x_2) is complete.
    assert (replay.unpaired, replay.decisions_elsewhere) == (0, 1)
    batch = replay.sample(400)
    assert (1.0, 3.0, 2.0) in {
        (o[1], r, n[1]) for o, r, n in zip(batch.obs, batch.rewards, batch.next_obs, strict=True)
    }


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        ([(0, None), (1, 2)], "a later observation: a reply that overtook"),
        ([(0, None), (2, 0)], "an observation before a gap"),
        ([(0, None), (1, 7)], "an observation never seen"),
    ],
)
def test_an_action_whose_observation_is_not_among_the_gateways_newest_is_never_trained_on(
    stream: list[tuple[int, int | None]], why: str
) -> None:
    replay = buffer()
    for seq, decided_on in stream:
        replay.add(transition("gw-a", seq, decided_on=decided_on))

    assert (replay.decisions_unpaired, replay.decisions_elsewhere) == (1, 0), why
    assert replay.trainable_count == (1 if stream[1][0] == 1 else 0), why  # step 0 pairs only with seq 1


def test_an_earlier_episodes_observation_is_never_a_decision_observation() -> None:
    replay = buffer()
    replay.add(transition("gw-a", 0, episode=0, terminated=True))
    replay.add(transition("gw-a", 1, episode=1, decided_on=0))
    assert replay.decisions_unpaired == 1


def test_a_decision_leaves_the_trainable_set_when_the_ring_overwrites_its_observation() -> None:
    replay = buffer(capacity=4)
    replay.add(transition("gw-a", 0))
    replay.add(transition("gw-a", 1, decided_on=0))
    replay.add(transition("gw-a", 2))
    replay.add(transition("gw-a", 3))
    assert replay.trainable_count == 3  # 0->1, the decision (x_0, a_1, x_1), 2->3
    unpaired = replay.unpaired

    replay.add(transition("gw-a", 4))  # overwrites x_0 (and with it 0->1 and the decision on x_0)

    assert replay.unpaired == unpaired + 1  # the decision; 0->1 left with its slot, as every old pair does
    assert replay.trainable_count == 2
    assert all(int(o[1]) >= 2 for o in replay.sample(200).obs)


def test_n_step_returns_neither_start_at_nor_pass_through_a_decision_on_an_earlier_observation() -> None:
    replay = ReplayBuffer(100, (3,), np.dtype(np.float32), seed=0, n_step=3, gamma=0.5)
    for seq, decided_on in ((0, None), (1, None), (2, 1), (3, None), (4, None), (5, None)):
        replay.add(transition("gw-a", seq, decided_on=decided_on))
    batch = replay.sample(400)
    returns = {
        (int(o[1]), float(r), int(n[1]), int(m))
        for o, r, n, m in zip(batch.obs, batch.rewards, batch.next_obs, batch.steps, strict=True)
    }
    # (decision observation, return, bootstrap observation, steps). From x_0: r_0 + 0.5 r_1, stopping before
    # step 2; step 1 alone for the same reason; step 2's decision on x_1 is one step (r_2 = 2, bootstrap x_2);
    # from x_3 the return runs through step 4 to the newest observation, x_5.
    assert returns == {(0, 0.5, 2, 2), (1, 1.0, 2, 1), (1, 2.0, 2, 1), (3, 5.0, 5, 2), (4, 4.0, 5, 1)}
