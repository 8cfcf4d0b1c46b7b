"""n-step DQN targets: returns summed along paired transitions, cut at terminals, truncations, gaps and the newest step.

Each observation encodes who it is ([gateway index, seq, episode]) and each reward is a power of two
(2**seq), so a sampled return shows exactly which rewards it summed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from learner_transitions import make_transition, marked_observation

from rtrl.models import ModelConfig, QNetwork
from rtrl.services.learner.algorithms.dqn import DQN, DQNConfig
from rtrl.services.learner.replay import ReplayBatch, ReplayBuffer
from rtrl.transitions import Transition

GATEWAYS = ("gw-a", "gw-b")
GAMMA = 0.5
TINY = ModelConfig(arch="mlp", observation_shape=(3,), action_count=2, hidden_size=4)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def transition(
    gateway: str, seq: int, episode: int = 0, terminated: bool = False, truncated: bool = False
) -> Transition:
    return make_transition(
        gateway,
        seq,
        episode=episode,
        observation=marked_observation(GATEWAYS, gateway, seq, episode),
        reward=float(2**seq),
        terminated=terminated,
        truncated=truncated,
    )


def buffer(n_step: int, capacity: int = 100) -> ReplayBuffer:
    return ReplayBuffer(capacity, (3,), np.dtype(np.float32), seed=0, n_step=n_step, gamma=GAMMA)


def targets_by_start(
    replay: ReplayBuffer, n: int = 400
) -> dict[tuple[int, int], tuple[float, tuple[int, ...], bool, int]]:
    """(gateway, seq) of each sampled start -> (return, next_obs, terminated, steps)."""
    batch = replay.sample(n)
    return {
        (int(obs[0]), int(obs[1])): (float(reward), tuple(int(v) for v in next_obs), bool(terminated), int(steps))
        for obs, reward, next_obs, terminated, steps in zip(
            batch.obs, batch.rewards, batch.next_obs, batch.terminated, batch.steps, strict=True
        )
    }


def test_three_step_returns_stop_at_a_terminal_inside_the_window() -> None:
    replay = buffer(n_step=3)
    replay.add(transition("gw-a", 0, episode=0))  # r = 1
    replay.add(transition("gw-a", 1, episode=0))  # r = 2
    replay.add(transition("gw-a", 2, episode=0, terminated=True))  # r = 4
    for seq in range(3, 7):  # r = 8, 16, 32, 64
        replay.add(transition("gw-a", seq, episode=1))

    targets = targets_by_start(replay)

    # t=0: 1 + 0.5*2 + 0.25*4 = 3, terminated within the window: no bootstrap.
    assert targets[(0, 0)] == (3.0, (0, 2, 0), True, 3)
    # t=1: 2 + 0.5*4 = 4, terminated after 2 steps.
    assert targets[(0, 1)] == (4.0, (0, 2, 0), True, 2)
    # t=2: the terminal itself.
    assert targets[(0, 2)] == (4.0, (0, 2, 0), True, 1)
    # t=3: 8 + 0.5*16 + 0.25*32 = 24, bootstraps from s_6 with gamma^3.
    assert targets[(0, 3)] == (24.0, (0, 6, 1), False, 3)
    # t=4: 16 + 0.5*32 = 32 so far: seq 6 waits for its successor, so s_6 is the bootstrap state.
    assert targets[(0, 4)] == (32.0, (0, 6, 1), False, 2)
    assert targets[(0, 5)] == (32.0, (0, 6, 1), False, 1)
    assert set(targets) == {(0, seq) for seq in range(6)}


def test_a_return_grows_to_n_steps_once_the_successors_arrive() -> None:
    replay = buffer(n_step=3)
    replay.add(transition("gw-a", 0))
    replay.add(transition("gw-a", 1))
    assert targets_by_start(replay)[(0, 0)] == (1.0, (0, 1, 0), False, 1)

    replay.add(transition("gw-a", 2))
    replay.add(transition("gw-a", 3))

    assert targets_by_start(replay)[(0, 0)] == (1.0 + 0.5 * 2 + 0.25 * 4, (0, 3, 0), False, 3)


def test_a_gap_ends_the_return_at_the_last_paired_state() -> None:
    replay = buffer(n_step=3)
    for seq in (0, 1, 2, 4, 5):  # seq 3 was dropped: 2 has no successor
        replay.add(transition("gw-a", seq))

    targets = targets_by_start(replay)

    # t=0: 1 + 0.5*2 = 2, bootstrapping from s_2 (2 itself cannot add r_2 without s_3).
    assert targets[(0, 0)] == (2.0, (0, 2, 0), False, 2)
    assert targets[(0, 1)] == (2.0, (0, 2, 0), False, 1)
    assert (0, 2) not in targets
    assert targets[(0, 4)] == (16.0, (0, 5, 0), False, 1)


def test_a_truncation_ends_the_return_and_bootstraps_from_the_truncated_state() -> None:
    replay = buffer(n_step=4)
    replay.add(transition("gw-a", 0, episode=0))
    replay.add(transition("gw-a", 1, episode=0))
    replay.add(transition("gw-a", 2, episode=0, truncated=True))
    replay.add(transition("gw-a", 3, episode=1))
    replay.add(transition("gw-a", 4, episode=1))

    targets = targets_by_start(replay)

    # s_2 is a true state of episode 0 (the episode was cut, not ended): 1 + 0.5*2, then gamma^2 V(s_2).
    assert targets[(0, 0)] == (2.0, (0, 2, 0), False, 2)
    assert (0, 2) not in targets
    assert targets[(0, 3)] == (8.0, (0, 4, 1), False, 1)


def test_returns_never_cross_gateways() -> None:
    replay = buffer(n_step=3)
    for seq in range(5):
        for gateway in GATEWAYS:
            replay.add(transition(gateway, seq))

    targets = targets_by_start(replay, n=800)

    for index in range(len(GATEWAYS)):
        assert targets[(index, 0)] == (1.0 + 0.5 * 2 + 0.25 * 4, (index, 3, 0), False, 3)
        assert targets[(index, 1)] == (2.0 + 0.5 * 4 + 0.25 * 8, (index, 4, 0), False, 3)


def test_one_step_batches_are_what_they_were() -> None:
    replay = ReplayBuffer(100, (3,), np.dtype(np.float32), seed=0)
    for seq in range(4):
        replay.add(transition("gw-a", seq))

    batch = replay.sample(100)

    assert np.array_equal(batch.rewards, 2.0 ** batch.obs[:, 1])
    assert np.array_equal(batch.next_obs[:, 1], batch.obs[:, 1] + 1)
    assert set(batch.steps.tolist()) == {1}


def test_n_step_returns_need_gamma() -> None:
    with pytest.raises(ValueError, match="need the discount gamma"):
        ReplayBuffer(10, (3,), np.dtype(np.float32), n_step=3)
    with pytest.raises(ValueError, match="n_step must be at least 1"):
        ReplayBuffer(10, (3,), np.dtype(np.float32), n_step=0, gamma=0.9)


# -- the DQN target -----------------------------------------------------------------------------------


def constant_q(network: QNetwork, values: list[float]) -> None:
    """Makes `network` output `values` for every observation: zero weights, the values as the last bias."""
    output = network.head[-1]
    assert isinstance(output, torch.nn.Linear)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        output.bias.copy_(torch.tensor(values))


def as_tensors(batch: ReplayBatch) -> dict[str, torch.Tensor]:
    return {
        "b_rewards": torch.from_numpy(batch.rewards),
        "b_next_obs": torch.from_numpy(batch.next_obs),
        "b_terminated": torch.from_numpy(batch.terminated),
        "b_steps": torch.from_numpy(batch.steps),
    }


def test_n_step_td_target_discounts_the_bootstrap_by_gamma_to_the_steps_taken() -> None:
    agent = DQN(DQNConfig(gamma=GAMMA, n_step=3), TINY, "cpu", seed=0)
    constant_q(agent.target_network, [10.0, 40.0])
    replay = buffer(n_step=3)
    replay.add(transition("gw-a", 0, episode=0))
    replay.add(transition("gw-a", 1, episode=0))
    replay.add(transition("gw-a", 2, episode=0, terminated=True))
    for seq in range(3, 7):
        replay.add(transition("gw-a", seq, episode=1))
    batch = replay.sample(400)

    target = agent.td_target(**as_tensors(batch))

    by_start = {int(obs[1]): float(value) for obs, value in zip(batch.obs, target, strict=True)}
    # Terminal inside the window: just the summed rewards (3, 4, 4).
    # Otherwise return + gamma^m * max Q = return + 0.5^m * 40: t=3: 24 + 0.125*40; t=4: 32 + 0.25*40; t=5: 32 + 0.5*40.
    assert by_start == pytest.approx({0: 3.0, 1: 4.0, 2: 4.0, 3: 29.0, 4: 42.0, 5: 52.0})


def test_an_n_step_update_discounts_each_bootstrap_by_its_own_number_of_steps() -> None:
    agent = DQN(DQNConfig(gamma=GAMMA, n_step=3), TINY, "cpu", seed=0)
    constant_q(agent.target_network, [10.0, 40.0])
    constant_q(agent.q_network, [0.0, 0.0])
    obs = np.zeros((2, 3), dtype=np.float32)
    ones = np.ones(2, dtype=np.float32)
    batch = ReplayBatch(obs, np.zeros(2, dtype=np.int64), ones, obs, 0 * ones, steps=np.array([3, 1]))

    loss = agent.update(batch)["loss"]

    # Targets 1 + 0.5^3 * 40 = 6 and 1 + 0.5 * 40 = 21 against Q = 0: Huber (6 - 0.5 + 21 - 0.5) / 2.
    assert loss.item() == pytest.approx(13.0)


def test_n_step_must_be_positive() -> None:
    assert DQNConfig(n_step=0).problems() == {"n_step": "an integer of 1 or more"}
