"""Unroll building: T steps per gateway in stream order, terminals inside unrolls, masks at gaps and truncations.

Each observation encodes who it is ([gateway index, seq, episode]), so every sampled unroll can be
checked against the stream it came from.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from learner_transitions import make_transition, marked_observation

from rtrl.services.learner.trajectories import Unroll, UnrollBuffer
from rtrl.transitions import Transition

GATEWAYS = ("gw-a", "gw-b", "gw-c")


def transition(
    gateway: str,
    seq: int,
    episode: int = 0,
    terminated: bool = False,
    truncated: bool = False,
    fresh: bool = True,
    decided_on: int | None = None,
) -> Transition:
    """Step `seq` of `gateway`; a fresh action computed from step `decided_on`'s observation (default: its own)."""
    return make_transition(
        gateway,
        seq,
        episode=episode,
        obs_frame=seq * 4,
        observation=marked_observation(GATEWAYS, gateway, seq, episode),
        action=seq % 3,
        action_count=3,
        reward=float(seq),
        terminated=terminated,
        truncated=truncated,
        fresh=fresh,
        staleness_frames=2 if fresh else 0,
        policy_version=seq // 10 if fresh else -1,
        behaviour_log_prob=-0.1 * seq if fresh else 0.0,
        action_obs_frame=(seq if decided_on is None else decided_on) * 4 if fresh else -1,
    )


def buffer(unroll_length: int = 3, capacity: int = 100) -> UnrollBuffer:
    return UnrollBuffer(unroll_length, capacity, (3,), np.dtype(np.float32), seed=0)


def stored(unrolls: UnrollBuffer) -> list[Unroll]:
    return list(unrolls._unrolls)


def seqs(unroll: Unroll) -> list[int]:
    return [int(obs[1]) for obs in unroll.obs]


def test_consecutive_transitions_make_unrolls_that_share_their_boundary_observation() -> None:
    unrolls = buffer(unroll_length=3)
    for seq in range(7):
        unrolls.add(transition("gw-a", seq))

    first, second = stored(unrolls)
    assert seqs(first) == [0, 1, 2, 3]
    assert seqs(second) == [3, 4, 5, 6]
    assert first.actions.tolist() == [0, 1, 2]
    assert first.rewards.tolist() == [0.0, 1.0, 2.0]
    assert first.behaviour_log_probs.tolist() == pytest.approx([0.0, -0.1, -0.2])
    assert first.mask.tolist() == [1.0, 1.0, 1.0]
    assert first.terminated.tolist() == [0.0, 0.0, 0.0]
    assert (unrolls.unrolls_added, unrolls.transitions_added, unrolls.steps_masked) == (2, 7, 0)


def test_an_unroll_waits_for_the_observation_after_its_last_step() -> None:
    unrolls = buffer(unroll_length=3)
    for seq in range(3):
        unrolls.add(transition("gw-a", seq))
    assert len(unrolls) == 0

    unrolls.add(transition("gw-a", 3))
    assert len(unrolls) == 1


def test_interleaved_gateways_are_never_mixed() -> None:
    unrolls = buffer(unroll_length=2)
    for seq in range(5):
        for gateway in GATEWAYS:
            unrolls.add(transition(gateway, seq))

    assert len(unrolls) == 2 * len(GATEWAYS)
    for unroll in stored(unrolls):
        assert len({int(obs[0]) for obs in unroll.obs}) == 1
        assert seqs(unroll) in ([0, 1, 2], [2, 3, 4])


def test_a_terminal_sets_its_discount_to_zero_and_the_next_episode_continues_in_the_same_unroll() -> None:
    unrolls = buffer(unroll_length=4)
    unrolls.add(transition("gw-a", 0, episode=0))
    unrolls.add(transition("gw-a", 1, episode=0, terminated=True))
    unrolls.add(transition("gw-a", 2, episode=1))
    unrolls.add(transition("gw-a", 3, episode=1))
    unrolls.add(transition("gw-a", 4, episode=1))

    (unroll,) = stored(unrolls)
    assert [(int(o[1]), int(o[2])) for o in unroll.obs] == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 1)]
    assert unroll.terminated.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert unroll.mask.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_a_truncated_step_is_masked_and_the_step_before_keeps_its_observation_as_successor() -> None:
    unrolls = buffer(unroll_length=4)
    unrolls.add(transition("gw-a", 0, episode=0))
    unrolls.add(transition("gw-a", 1, episode=0, truncated=True))
    for seq in (2, 3, 4):
        unrolls.add(transition("gw-a", seq, episode=1))

    (unroll,) = stored(unrolls)
    assert seqs(unroll) == [0, 1, 2, 3, 4]
    assert unroll.mask.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert unroll.terminated.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert unrolls.steps_masked == 1


def test_a_gap_in_seq_masks_the_step_before_it() -> None:
    unrolls = buffer(unroll_length=3)
    for seq in (0, 1, 3, 4):  # seq 2 was dropped: step 1 has no successor
        unrolls.add(transition("gw-a", seq))

    (unroll,) = stored(unrolls)
    assert seqs(unroll) == [0, 1, 3, 4]
    assert unroll.mask.tolist() == [1.0, 0.0, 1.0]
    assert unrolls.steps_masked == 1


def test_an_episode_change_without_a_terminal_flag_masks_the_step_before_it() -> None:
    unrolls = buffer(unroll_length=2)
    unrolls.add(transition("gw-a", 0, episode=0))
    unrolls.add(transition("gw-a", 1, episode=0))
    unrolls.add(transition("gw-a", 2, episode=1))

    (unroll,) = stored(unrolls)
    assert unroll.mask.tolist() == [1.0, 0.0]


def test_a_gap_after_a_terminal_changes_nothing() -> None:
    unrolls = buffer(unroll_length=3)
    unrolls.add(transition("gw-a", 0, episode=0))
    unrolls.add(transition("gw-a", 1, episode=0, terminated=True))
    unrolls.add(transition("gw-a", 5, episode=2))  # the terminal's target does not bootstrap
    unrolls.add(transition("gw-a", 6, episode=2))

    (unroll,) = stored(unrolls)
    assert unroll.mask.tolist() == [1.0, 1.0, 1.0]
    assert unrolls.steps_masked == 0


def test_an_unroll_ending_in_a_terminal_is_stored_at_once_and_the_next_starts_fresh() -> None:
    unrolls = buffer(unroll_length=2)
    unrolls.add(transition("gw-a", 0))
    unrolls.add(transition("gw-a", 1, terminated=True))

    (unroll,) = stored(unrolls)
    assert seqs(unroll) == [0, 1, 1]  # x_T is a stand-in: gamma_1 = 0 never uses it
    assert unroll.terminated.tolist() == [0.0, 1.0]

    for seq in (2, 3, 4):
        unrolls.add(transition("gw-a", seq, episode=1))
    assert seqs(stored(unrolls)[1]) == [2, 3, 4]


def test_an_unroll_with_nothing_to_learn_from_is_not_kept() -> None:
    unrolls = buffer(unroll_length=2)
    for seq in (0, 2, 4):  # every step is followed by a gap
        unrolls.add(transition("gw-a", seq))

    assert len(unrolls) == 0
    assert unrolls.steps_masked == 2


def test_the_oldest_unroll_leaves_when_the_buffer_is_full() -> None:
    unrolls = buffer(unroll_length=1, capacity=2)
    for seq in range(4):
        unrolls.add(transition("gw-a", seq))

    assert [seqs(unroll) for unroll in stored(unrolls)] == [[1, 2], [2, 3]]
    assert unrolls.unrolls_added == 3


def test_sample_is_time_major_and_counts_what_it_drew() -> None:
    unrolls = buffer(unroll_length=3)
    for seq in range(13):
        unrolls.add(transition("gw-a", seq, fresh=seq % 4 != 0))

    batch = unrolls.sample(4)

    assert batch.obs.shape == (4, 4, 3)
    for field in (batch.actions, batch.rewards, batch.terminated, batch.behaviour_log_probs, batch.mask):
        assert field.shape == (3, 4)
    assert batch.actions.dtype == np.int64 and batch.rewards.dtype == np.float32
    # Four unrolls stored, four drawn: without replacement each appears once.
    assert sorted(int(first) for first in batch.obs[0, :, 1]) == [0, 3, 6, 9]
    fallback_steps = batch.obs[:-1, :, 1] % 4 == 0
    assert np.array_equal(batch.policy_versions == -1, fallback_steps)
    assert unrolls.unrolls_sampled == 4


def test_sample_draws_with_replacement_only_when_too_few_unrolls_are_stored() -> None:
    unrolls = buffer(unroll_length=1)
    for seq in range(3):
        unrolls.add(transition("gw-a", seq))

    batch = unrolls.sample(5)

    assert batch.obs.shape == (2, 5, 3)
    assert set(batch.obs[0, :, 1].astype(int)) <= {0, 1}


def test_sampling_an_empty_buffer_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="no complete unroll yet; add more"):
        buffer().sample(1)


def test_an_observation_of_another_shape_is_refused() -> None:
    unrolls = buffer()
    other = dataclasses.replace(transition("gw-a", 0), observation=np.zeros(4, dtype=np.float32))

    assert not unrolls.accepts(other)
    with pytest.raises(ValueError, match=r"shape \[4\].*does not fit an unroll buffer of \[3\]"):
        unrolls.add(other)


@st.composite
def streams(draw: st.DrawFn) -> list[Transition]:
    """Interleaved gateways with terminals, truncations, dropped and repeated transitions."""
    stream: list[Transition] = []
    state = {gateway: [0, 0] for gateway in GATEWAYS}  # next seq, episode
    for _ in range(draw(st.integers(0, 80))):
        gateway = draw(st.sampled_from(GATEWAYS))
        seq, episode = state[gateway]
        event = draw(st.sampled_from(["step"] * 6 + ["terminal", "truncated", "drop", "repeat"]))
        if event == "drop":
            state[gateway][0] += 1
            continue
        if event == "repeat":
            seq = max(0, seq - 1)
        stream.append(transition(gateway, seq, episode, event == "terminal", event == "truncated"))
        state[gateway][0] = seq + 1
        if event in ("terminal", "truncated"):
            state[gateway][1] += 1
    return stream


@settings(max_examples=150, deadline=None)
@given(stream=streams(), unroll_length=st.integers(1, 5))
def test_exactly_the_steps_followed_by_their_successor_or_terminal_are_learnable(
    stream: list[Transition], unroll_length: int
) -> None:
    unrolls = buffer(unroll_length=unroll_length, capacity=1000)
    for transition_ in stream:
        unrolls.add(transition_)

    for unroll in stored(unrolls):
        assert len({int(obs[0]) for obs in unroll.obs}) == 1, "an unroll mixed gateways"
        assert unroll.mask.any()
        for t in range(unroll_length):
            gateway, seq, episode = unroll.obs[t]
            followed_by_successor = tuple(unroll.obs[t + 1]) == (gateway, seq + 1, episode)
            learnable = bool(unroll.terminated[t]) or followed_by_successor
            assert bool(unroll.mask[t]) == learnable, f"step {t} of {unroll.obs.tolist()}, mask {unroll.mask}"
            if t + 1 < unroll_length:
                # Steps follow stream order: a step's reward (its seq) matches its observation.
                assert unroll.rewards[t + 1] == unroll.obs[t + 1][1]
    learnable_steps = sum(int(unroll.mask.sum()) for unroll in stored(unrolls))
    assert learnable_steps + unrolls.steps_masked <= len(stream)


# -- decision observations ------------------------------------------------------------------------------


def test_each_step_names_the_observation_of_its_unroll_its_action_was_computed_from() -> None:
    unrolls = buffer(unroll_length=4)
    steps = [(0, None, True), (1, 0, True), (2, None, False), (3, 2, True), (4, None, True)]
    for seq, decided_on, fresh in steps:
        unrolls.add(transition("gw-a", seq, decided_on=decided_on, fresh=fresh))

    [unroll] = stored(unrolls)
    # Step 1 came from step 0's observation, step 3 from step 2's; the fallback at step 2 names its own.
    assert unroll.decision_index.tolist() == [0, 0, 2, 2]
    assert unroll.fresh.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert (unrolls.decisions_elsewhere, unrolls.decisions_unpaired, unrolls.unpaired) == (2, 0, 0)


@pytest.mark.parametrize(
    ("decided_on", "why"), [(2, "in the unroll before this one"), (5, "a later one"), (3, "of the episode before")]
)
def test_a_step_whose_decision_observation_is_not_in_its_unroll_is_not_paired(decided_on: int, why: str) -> None:
    unrolls = buffer(unroll_length=3)
    for seq in range(3):  # the first unroll: 0, 1, 2
        unrolls.add(transition("gw-a", seq))
    unrolls.add(transition("gw-a", 3, terminated=True))  # the second unroll starts with step 3, episode 0's last
    unrolls.add(transition("gw-a", 4, episode=1, decided_on=decided_on))
    for seq in range(5, 7):
        unrolls.add(transition("gw-a", seq, episode=1))

    second = stored(unrolls)[-1]
    assert seqs(second)[:3] == [3, 4, 5]
    assert second.decision_index.tolist() == [0, -1, 2], why
    assert (unrolls.decisions_unpaired, unrolls.decisions_elsewhere, unrolls.unpaired) == (1, 0, 1), why


def test_take_newest_hands_out_each_unroll_once_newest_first_and_counts_the_older_ones_skipped() -> None:
    unrolls = buffer(unroll_length=2, capacity=3)
    for seq in range(9):  # four complete unrolls: seqs 0-1, 2-3, 4-5, 6-7 (3 untaken fit)
        unrolls.add(transition("gw-a", seq))
    assert (len(unrolls), unrolls.untaken, unrolls.unrolls_skipped) == (3, 3, 1)

    batch = unrolls.take_newest(2)

    assert [int(obs[1]) for obs in batch.obs[0]] == [4, 6]  # time-major: the first observation of each
    assert (unrolls.untaken, unrolls.unrolls_skipped) == (0, 2)
    with pytest.raises(ValueError, match="only 0 new unrolls are stored; wait for 1"):
        unrolls.take_newest(1)
