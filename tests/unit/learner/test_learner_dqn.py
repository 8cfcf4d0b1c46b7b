"""DQN maths on tiny networks whose outputs are set by hand: TD targets, double DQN, epsilon, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from learner_transitions import make_transition
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from rtrl.models import ModelConfig
from rtrl.services.learner.algorithms import dqn
from rtrl.services.learner.algorithms.dqn import DQN, DQNConfig
from rtrl.services.learner.replay import ReplayBatch

TINY = ModelConfig(arch="mlp", observation_shape=(3,), action_count=2, hidden_size=4)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def constant_q(network: torch.nn.Module, values: list[float]) -> None:
    """Makes `network` output `values` for every observation: zero weights, the values as the last bias."""
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        network.head[-1].bias.copy_(torch.tensor(values))


def replay_batch(*tensors: torch.Tensor) -> ReplayBatch:
    """(obs, actions, rewards, next_obs, terminated) as the replay buffer's one-step batch."""
    obs, actions, rewards, next_obs, terminated = (t.numpy() for t in tensors)
    return ReplayBatch(obs, actions, rewards, next_obs, terminated, steps=np.ones(len(actions), dtype=np.int64))


def test_td_target_bootstraps_only_from_non_terminal_transitions() -> None:
    agent = DQN(DQNConfig(gamma=0.5), TINY, "cpu", seed=0)
    constant_q(agent.target_network, [1.0, 3.0])
    b_rewards = torch.tensor([1.0, 2.0, -1.0])
    b_terminated = torch.tensor([0.0, 1.0, 0.0])
    b_next_obs = torch.randn(3, 3)

    target = agent.td_target(b_rewards, b_next_obs, b_terminated)

    # r + 0.5 * max(1, 3) unless terminated, then just r.
    assert target.tolist() == pytest.approx([2.5, 2.0, 0.5])


def test_double_dqn_rates_the_online_networks_choice_with_the_target_network() -> None:
    plain = DQN(DQNConfig(gamma=0.5, double_dqn=False), TINY, "cpu", seed=0)
    double = DQN(DQNConfig(gamma=0.5, double_dqn=True), TINY, "cpu", seed=0)
    for agent in (plain, double):
        constant_q(agent.target_network, [1.0, 3.0])
        # The online network prefers action 0, which the target network values at 1, not at its max 3.
        constant_q(agent.q_network, [5.0, 0.0])
    b_rewards = torch.tensor([1.0, 1.0])
    b_terminated = torch.tensor([0.0, 1.0])
    b_next_obs = torch.zeros(2, 3)

    assert plain.td_target(b_rewards, b_next_obs, b_terminated).tolist() == pytest.approx([2.5, 1.0])
    assert double.td_target(b_rewards, b_next_obs, b_terminated).tolist() == pytest.approx([1.5, 1.0])


def test_updates_fit_q_to_the_td_target_and_copy_the_target_network_periodically() -> None:
    config = DQNConfig(learning_rate=1e-2, target_network_frequency=50, gamma=0.0)
    agent = DQN(config, TINY, "cpu", seed=0)
    b_obs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b_actions = torch.tensor([0, 1])
    b_rewards = torch.tensor([1.0, -1.0])
    batch = replay_batch(b_obs, b_actions, b_rewards, b_obs, torch.zeros(2))

    first_loss = agent.update(batch)["loss"].item()
    for _ in range(48):
        agent.update(batch)
    assert agent.updates == 49
    target_before_copy = {k: v.clone() for k, v in agent.target_network.state_dict().items()}
    assert any(not torch.equal(v, agent.q_network.state_dict()[k]) for k, v in target_before_copy.items())
    last_loss = agent.update(batch)["loss"].item()

    assert agent.updates == 50
    for name, tensor in agent.target_network.state_dict().items():
        assert torch.equal(tensor, agent.q_network.state_dict()[name]), name
    assert last_loss < first_loss / 10
    q = agent.q_network(b_obs).gather(1, b_actions.unsqueeze(1)).squeeze(1)
    assert q.tolist() == pytest.approx([1.0, -1.0], abs=0.1)


def test_epsilon_decays_linearly_then_stays_at_its_end_value() -> None:
    config = DQNConfig(epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_steps=1000)
    assert dqn.epsilon_at(0, config) == pytest.approx(1.0)
    assert dqn.epsilon_at(500, config) == pytest.approx(0.55)
    assert dqn.epsilon_at(1000, config) == pytest.approx(0.1)
    assert dqn.epsilon_at(10_000, config) == pytest.approx(0.1)


def test_config_problems_name_the_fields_dqn_cannot_train_with() -> None:
    assert DQNConfig().problems() == {}
    problems = DQNConfig(gamma=1.5, batch_size=0, learning_rate=float("nan")).problems()
    assert set(problems) == {"gamma", "batch_size", "learning_rate"}


def random_batch(generator: torch.Generator, size: int = 8) -> ReplayBatch:
    return replay_batch(
        torch.randn(size, 3, generator=generator),
        torch.randint(0, 2, (size,), generator=generator),
        torch.randn(size, generator=generator),
        torch.randn(size, 3, generator=generator),
        (torch.rand(size, generator=generator) < 0.2).float(),
    )


def through_safetensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return load_safetensors(save_safetensors({k: v.contiguous() for k, v in tensors.items()}))


def test_a_resumed_agent_makes_exactly_the_same_next_update_as_the_original() -> None:
    config = DQNConfig(learning_rate=1e-2, target_network_frequency=3)
    original = DQN(config, TINY, "cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):  # past a target copy, so target and online differ from their initial values
        original.update(random_batch(generator))

    weights = through_safetensors(original.policy_weights())
    learner_state = original.learner_state()
    resumed = DQN(config, TINY, "cpu", seed=1)  # different initial weights
    resumed.load_state(weights, through_safetensors(learner_state), original.updates)
    assert resumed.updates == 4

    for _ in range(3):  # includes a target copy at update 6
        batch = random_batch(generator)
        original_loss = original.update(batch)["loss"]
        resumed_loss = resumed.update(batch)["loss"]
        assert torch.equal(original_loss, resumed_loss)
    for a, b in ((original.q_network, resumed.q_network), (original.target_network, resumed.target_network)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name


def test_a_fresh_optimizer_would_not_reproduce_the_update() -> None:
    """Guards the test above: without the Adam moments the resumed update really differs."""
    config = DQNConfig(learning_rate=1e-2)
    original = DQN(config, TINY, "cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        original.update(random_batch(generator))
    without_adam = {k: v for k, v in original.learner_state().items() if not k.startswith("adam.")}
    resumed = DQN(config, TINY, "cpu", seed=1)
    resumed.load_state(original.policy_weights(), without_adam, original.updates)

    batch = random_batch(generator)
    original.update(batch)
    resumed.update(batch)
    assert not all(
        torch.equal(x, y) for x, y in zip(original.q_network.parameters(), resumed.q_network.parameters(), strict=True)
    )


def test_importing_state_of_another_network_raises_a_value_error() -> None:
    other = DQN(DQNConfig(), ModelConfig("mlp", (5,), 2, hidden_size=4), "cpu", seed=0)
    agent = DQN(DQNConfig(), TINY, "cpu", seed=0)
    with pytest.raises(ValueError, match="do not fit"):
        agent.load_state(other.policy_weights(), other.learner_state(), other.updates)


def test_learner_state_of_another_algorithm_is_refused_with_what_it_holds() -> None:
    agent = DQN(DQNConfig(), TINY, "cpu", seed=0)
    with pytest.raises(ValueError, match=r"learner state DQN does not know: rmsprop\.head\.0\.weight\.square_avg"):
        foreign = {**agent.learner_state(), "rmsprop.head.0.weight.square_avg": torch.zeros(4, 3)}
        agent.load_state(agent.policy_weights(), foreign, 0)


def test_a_replay_ratio_cap_waits_for_new_transitions_once_enough_were_sampled() -> None:
    config = DQNConfig(batch_size=4, learning_starts=1, max_replay_ratio=2.0)
    agent = DQN(config, TINY, "cpu", seed=0)
    replay = agent.make_source((3,), np.dtype(np.float32), seed=0)
    for seq in range(4):  # 3 trainable transitions (the newest waits for its successor), 4 added
        replay.add(make_transition(seq=seq))
    updates = 0
    while agent.ready(replay):
        agent.update(agent.sample(replay))
        updates += 1
    # 4 added allow 8 sampled: two batches of 4.
    assert updates == 2 and replay.sampled == 8
    for seq in range(4, 6):
        replay.add(make_transition(seq=seq))
    assert agent.ready(replay)  # 6 added allow 12
    assert DQN(DQNConfig(batch_size=4, learning_starts=1), TINY, "cpu", seed=0).ready(replay)  # no cap
    assert DQNConfig(max_replay_ratio=-1.0).problems() == {"max_replay_ratio": "a finite number of 0 or more"}
