"""DQN maths on tiny networks whose outputs are set by hand: TD targets, double DQN, epsilon, state round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from rtrl.models import ModelConfig
from services.learner import dqn
from services.learner.dqn import DQNConfig

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


def test_td_target_bootstraps_only_from_non_terminal_transitions() -> None:
    agent = dqn.make_agent(DQNConfig(gamma=0.5), TINY, "cpu", seed=0)
    constant_q(agent.target_network, [1.0, 3.0])
    b_rewards = torch.tensor([1.0, 2.0, -1.0])
    b_terminated = torch.tensor([0.0, 1.0, 0.0])
    b_next_obs = torch.randn(3, 3)

    target = dqn.td_target(agent, b_rewards, b_next_obs, b_terminated)

    # r + 0.5 * max(1, 3) unless terminated, then just r.
    assert target.tolist() == pytest.approx([2.5, 2.0, 0.5])


def test_double_dqn_rates_the_online_networks_choice_with_the_target_network() -> None:
    plain = dqn.make_agent(DQNConfig(gamma=0.5, double_dqn=False), TINY, "cpu", seed=0)
    double = dqn.make_agent(DQNConfig(gamma=0.5, double_dqn=True), TINY, "cpu", seed=0)
    for agent in (plain, double):
        constant_q(agent.target_network, [1.0, 3.0])
        # The online network prefers action 0, which the target network values at 1, not at its max 3.
        constant_q(agent.q_network, [5.0, 0.0])
    b_rewards = torch.tensor([1.0, 1.0])
    b_terminated = torch.tensor([0.0, 1.0])
    b_next_obs = torch.zeros(2, 3)

    assert dqn.td_target(plain, b_rewards, b_next_obs, b_terminated).tolist() == pytest.approx([2.5, 1.0])
    assert dqn.td_target(double, b_rewards, b_next_obs, b_terminated).tolist() == pytest.approx([1.5, 1.0])


def test_updates_fit_q_to_the_td_target_and_copy_the_target_network_periodically() -> None:
    config = DQNConfig(learning_rate=1e-2, target_network_frequency=50, gamma=0.0)
    agent = dqn.make_agent(config, TINY, "cpu", seed=0)
    b_obs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b_actions = torch.tensor([0, 1])
    b_rewards = torch.tensor([1.0, -1.0])
    batch = (b_obs, b_actions, b_rewards, b_obs, torch.zeros(2))

    first_loss = dqn.update(agent, *batch).item()
    for _ in range(48):
        dqn.update(agent, *batch)
    assert agent.updates == 49
    target_before_copy = {k: v.clone() for k, v in agent.target_network.state_dict().items()}
    assert any(not torch.equal(v, agent.q_network.state_dict()[k]) for k, v in target_before_copy.items())
    last_loss = dqn.update(agent, *batch).item()

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
    assert dqn.config_problems(DQNConfig()) == {}
    problems = dqn.config_problems(DQNConfig(gamma=1.5, batch_size=0, learning_rate=float("nan")))
    assert set(problems) == {"gamma", "batch_size", "learning_rate"}


def random_batch(generator: torch.Generator, size: int = 8) -> tuple[torch.Tensor, ...]:
    return (
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
    original = dqn.make_agent(config, TINY, "cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):  # past a target copy, so target and online differ from their initial values
        dqn.update(original, *random_batch(generator))

    weights = through_safetensors(dqn.policy_weights(original))
    learner_state, counters = dqn.export_learner_state(original)
    resumed = dqn.make_agent(config, TINY, "cpu", seed=1)  # different initial weights
    dqn.import_state(resumed, weights, through_safetensors(learner_state), counters)
    assert resumed.updates == 4

    for _ in range(3):  # includes a target copy at update 6
        batch = random_batch(generator)
        original_loss = dqn.update(original, *batch)
        resumed_loss = dqn.update(resumed, *batch)
        assert torch.equal(original_loss, resumed_loss)
    for a, b in ((original.q_network, resumed.q_network), (original.target_network, resumed.target_network)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name


def test_a_fresh_optimizer_would_not_reproduce_the_update() -> None:
    """Guards the test above: without the Adam moments the resumed update really differs."""
    config = DQNConfig(learning_rate=1e-2)
    original = dqn.make_agent(config, TINY, "cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        dqn.update(original, *random_batch(generator))
    learner_state, counters = dqn.export_learner_state(original)
    without_adam = {k: v for k, v in learner_state.items() if not k.startswith("adam.")}
    resumed = dqn.make_agent(config, TINY, "cpu", seed=1)
    dqn.import_state(resumed, dqn.policy_weights(original), without_adam, counters)

    batch = random_batch(generator)
    dqn.update(original, *batch)
    dqn.update(resumed, *batch)
    assert not all(
        torch.equal(x, y) for x, y in zip(original.q_network.parameters(), resumed.q_network.parameters(), strict=True)
    )


def test_importing_state_of_another_network_raises_a_value_error() -> None:
    other = dqn.make_agent(DQNConfig(), ModelConfig("mlp", (5,), 2, hidden_size=4), "cpu", seed=0)
    agent = dqn.make_agent(DQNConfig(), TINY, "cpu", seed=0)
    learner_state, counters = dqn.export_learner_state(other)
    with pytest.raises(ValueError, match="do not fit"):
        dqn.import_state(agent, dqn.policy_weights(other), learner_state, counters)
