"""V-trace maths: targets by hand and by the paper's sum, masks, fallbacks, the update, the state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from actor_critic_batches import TINY as TINY_AC
from actor_critic_batches import A, B, input_dependent, one_unroll
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from rtrl.models import ModelConfig
from rtrl.services.learner.algorithms import vtrace
from rtrl.services.learner.algorithms.vtrace import VTrace, VTraceConfig
from rtrl.services.learner.trajectories import UnrollBatch

TINY = ModelConfig(arch="mlp", observation_shape=(3,), action_count=2, hidden_size=8, head="actor_critic")


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def column(*values: float) -> torch.Tensor:
    """A [T, 1] time-major tensor of one unroll."""
    return torch.tensor(values, dtype=torch.float64).unsqueeze(1)


# -- targets -----------------------------------------------------------------------------------------


def test_vtrace_targets_match_a_hand_computed_unroll_with_a_clipped_rho_and_a_terminal() -> None:
    # T = 3, B = 1. pi/mu = 2.0 (clipped to 1), 0.5, 0.25; the episode terminates at t = 1, so
    # gamma_1 = 0 and step 0 bootstraps through step 1 only; step 2 starts the next episode.
    b_behaviour_log_probs = column(math.log(0.25), math.log(0.5), math.log(0.8))
    b_target_log_probs = column(math.log(0.5), math.log(0.25), math.log(0.2))
    b_rewards = column(1.0, 0.0, 2.0)
    b_values = column(1.0, 2.0, 3.0)
    b_bootstrap_value = torch.tensor([4.0], dtype=torch.float64)
    b_discounts = column(0.9, 0.0, 0.9)

    b_vs, b_pg_advantages = vtrace.vtrace_targets(
        b_behaviour_log_probs,
        b_target_log_probs,
        b_rewards,
        b_values,
        b_bootstrap_value,
        b_discounts,
        rho_bar=1.0,
        c_bar=1.0,
    )

    # rho = c = (1, 0.5, 0.25).
    # t=2: delta = 0.25 * (2 + 0.9*4 - 3) = 0.65;          vs_2 = 3 + 0.65 = 3.65
    # t=1: delta = 0.5 * (0 + 0*3 - 2) = -1; trace cut;   vs_1 = 2 - 1 = 1.0
    # t=0: delta = 1 * (1 + 0.9*2 - 1) = 1.8;             vs_0 = 1 + 1.8 + 0.9*1*(1.0 - 2) = 1.9
    assert b_vs.squeeze(1).tolist() == pytest.approx([1.9, 1.0, 3.65])
    # pg_t = rho_t (r_t + gamma_t vs_{t+1} - V_t), vs_3 = V(x_3) = 4:
    # t=0: 1 * (1 + 0.9*1.0 - 1) = 0.9;  t=1: 0.5 * (0 + 0 - 2) = -1;  t=2: 0.25 * (2 + 0.9*4 - 3) = 0.65
    assert b_pg_advantages.squeeze(1).tolist() == pytest.approx([0.9, -1.0, 0.65])


def vtrace_by_the_sum(
    log_rhos: np.ndarray,
    rewards: np.ndarray,
    values: np.ndarray,
    bootstrap: np.ndarray,
    discounts: np.ndarray,
    rho_bar: float,
    c_bar: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Espeholt et al. 2018 eq. (1) summed term by term, with per-step discounts; an independent reference."""
    steps, batch = rewards.shape
    ratios = np.exp(log_rhos)
    rhos, cs = np.minimum(rho_bar, ratios), np.minimum(c_bar, ratios)
    next_values = np.concatenate([values[1:], bootstrap[None]])
    vs = np.zeros_like(values)
    for b in range(batch):
        for s in range(steps):
            total, weight = values[s, b], 1.0
            for t in range(s, steps):
                delta = rhos[t, b] * (rewards[t, b] + discounts[t, b] * next_values[t, b] - values[t, b])
                total += weight * delta
                weight *= discounts[t, b] * cs[t, b]
            vs[s, b] = total
    next_vs = np.concatenate([vs[1:], bootstrap[None]])
    return vs, rhos * (rewards + discounts * next_vs - values)


def test_vtrace_recursion_equals_the_papers_sum_for_random_unrolls_and_distinct_thresholds() -> None:
    rng = np.random.default_rng(0)
    steps, batch = 6, 4
    log_rhos = rng.normal(0.0, 1.0, (steps, batch))
    behaviour = rng.normal(-1.0, 0.5, (steps, batch))
    rewards = rng.normal(0.0, 1.0, (steps, batch))
    values = rng.normal(0.0, 1.0, (steps, batch))
    bootstrap = rng.normal(0.0, 1.0, batch)
    discounts = 0.95 * (rng.random((steps, batch)) > 0.2)  # some terminals

    b_vs, b_pg = vtrace.vtrace_targets(
        torch.from_numpy(behaviour),
        torch.from_numpy(behaviour + log_rhos),
        torch.from_numpy(rewards),
        torch.from_numpy(values),
        torch.from_numpy(bootstrap),
        torch.from_numpy(discounts),
        rho_bar=1.5,
        c_bar=0.7,
    )

    expected_vs, expected_pg = vtrace_by_the_sum(log_rhos, rewards, values, bootstrap, discounts, 1.5, 0.7)
    np.testing.assert_allclose(b_vs.numpy(), expected_vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b_pg.numpy(), expected_pg, rtol=1e-10, atol=1e-10)


def test_on_policy_targets_are_the_bootstrapped_discounted_returns() -> None:
    # pi = mu everywhere: rho = c = 1, and vs_t = r_t + gamma vs_{t+1} (the n-step return), whatever V is.
    b_log_probs = column(-0.3, -1.2, -0.7)
    b_rewards = column(1.0, -2.0, 0.5)
    b_discounts = column(0.5, 0.5, 0.5)
    b_vs, b_pg = vtrace.vtrace_targets(
        b_log_probs,
        b_log_probs,
        b_rewards,
        column(7.0, -3.0, 11.0),
        torch.tensor([8.0], dtype=torch.float64),
        b_discounts,
        rho_bar=1.0,
        c_bar=1.0,
    )

    # vs_2 = 0.5 + 0.5*8 = 4.5; vs_1 = -2 + 0.5*4.5 = 0.25; vs_0 = 1 + 0.5*0.25 = 1.125
    assert b_vs.squeeze(1).tolist() == pytest.approx([1.125, 0.25, 4.5])
    # the advantages are then the returns minus V
    assert b_pg.squeeze(1).tolist() == pytest.approx([1.125 - 7.0, 0.25 + 3.0, 4.5 - 11.0])


def test_a_masked_step_is_not_learned_from_and_the_step_before_bootstraps_from_its_state() -> None:
    # Step 1 has no successor (a gap follows it): its log-probabilities may be anything, even -inf.
    b_behaviour_log_probs = column(-0.5, -math.inf, -0.5)
    b_target_log_probs = column(-0.5, 0.0, -0.5)

    b_vs, b_pg = vtrace.vtrace_targets(
        b_behaviour_log_probs,
        b_target_log_probs,
        column(1.0, 1.0, 1.0),
        column(1.0, 2.0, 3.0),
        torch.tensor([4.0], dtype=torch.float64),
        column(0.9, 0.9, 0.9),
        rho_bar=1.0,
        c_bar=1.0,
        b_mask=column(1.0, 0.0, 1.0),
    )

    # t=2: vs = 3 + (1 + 0.9*4 - 3) = 4.6;  t=1: rho = c = 0, vs = V = 2;  t=0: vs = 1 + (1 + 0.9*2 - 1) = 2.8
    assert b_vs.squeeze(1).tolist() == pytest.approx([2.8, 2.0, 4.6])
    assert b_pg.squeeze(1).tolist() == pytest.approx([0.9 * 2.0, 0.0, 1.6])


@pytest.mark.parametrize(
    ("behaviour_log_prob", "expected_rho"),
    [
        (0.0, 0.25),  # noop / repeat-last fallback: mu = 1, so rho = pi(a) = 0.25
        (-math.log(4), 1.0),  # random fallback over 4 actions: mu = 1/4 = pi(a), so rho = 1
    ],
)
def test_fallback_steps_are_weighted_with_the_fallback_policys_probability(
    behaviour_log_prob: float, expected_rho: float
) -> None:
    # T = 1: r + gamma V(x_1) - V(x_0) = 1 + 0.5*2 - 1 = 1, so vs_0 = 1 + rho and the advantage is rho.
    b_vs, b_pg = vtrace.vtrace_targets(
        column(behaviour_log_prob),
        column(math.log(0.25)),
        column(1.0),
        column(1.0),
        torch.tensor([2.0], dtype=torch.float64),
        column(0.5),
        rho_bar=1.0,
        c_bar=1.0,
    )

    assert b_vs.item() == pytest.approx(1.0 + expected_rho)
    assert b_pg.item() == pytest.approx(expected_rho)


def test_no_gradient_flows_through_the_targets() -> None:
    b_values = column(1.0, 2.0).requires_grad_()
    b_vs, b_pg = vtrace.vtrace_targets(
        column(0.0, 0.0), column(0.0, 0.0), column(1.0, 1.0), b_values, b_values[-1].detach(), column(0.9, 0.9), 1, 1
    )
    assert not b_vs.requires_grad and not b_pg.requires_grad


# -- configuration ------------------------------------------------------------------------------------


def test_config_problems_name_the_fields_vtrace_cannot_train_with() -> None:
    assert VTraceConfig().problems() == {}
    problems = VTraceConfig(unroll_length=0, gamma=2.0, rho_bar=-1.0, entropy_coef=-0.1).problems()
    assert set(problems) == {"unroll_length", "gamma", "rho_bar", "entropy_coef"}
    assert VTraceConfig(rho_bar=1.0, c_bar=2.0).problems() == {"c_bar": "at most rho_bar (1.0)"}
    assert VTraceConfig(learning_starts=9, replay_capacity=8).problems() == {
        "learning_starts": "at most replay_capacity (8)"
    }


def test_vtrace_refuses_a_q_network_config_and_an_unusable_config() -> None:
    with pytest.raises(AssertionError, match=r"head 'q'.*head='actor_critic'"):
        VTrace(VTraceConfig(), ModelConfig("mlp", (3,), 2, hidden_size=8), "cpu", seed=0)
    with pytest.raises(AssertionError, match=r"V-trace cannot train with.*batch_size"):
        VTrace(VTraceConfig(batch_size=0), TINY, "cpu", seed=0)


def test_ready_to_update_waits_for_learning_starts_and_respects_the_replay_ratio_cap() -> None:
    uncapped = VTraceConfig(batch_size=4, learning_starts=8)
    assert not vtrace.ready_to_update(uncapped, unrolls_stored=7, unrolls_added=7, unrolls_sampled=0)
    assert vtrace.ready_to_update(uncapped, unrolls_stored=8, unrolls_added=8, unrolls_sampled=10_000)

    capped = VTraceConfig(batch_size=4, learning_starts=8, max_replay_ratio=2.0)
    # 8 added allow 16 sampled: 12 + 4 fits, 16 + 4 does not.
    assert vtrace.ready_to_update(capped, unrolls_stored=8, unrolls_added=8, unrolls_sampled=12)
    assert not vtrace.ready_to_update(capped, unrolls_stored=8, unrolls_added=8, unrolls_sampled=16)


def test_epsilon_is_always_zero() -> None:
    assert VTrace.exploration(VTraceConfig(), 0) == 0.0
    assert VTrace.exploration(VTraceConfig(), 10**9) == 0.0


# -- update -------------------------------------------------------------------------------------------


def unroll_batch(
    b_obs: torch.Tensor,
    b_actions: torch.Tensor,
    b_rewards: torch.Tensor,
    b_terminated: torch.Tensor,
    b_behaviour: torch.Tensor,
    b_mask: torch.Tensor,
    b_decision_index: torch.Tensor | None = None,
) -> UnrollBatch:
    """A time-major UnrollBatch of fresh steps, each decided on its own observation unless told otherwise."""
    steps, batch = b_actions.shape
    if b_decision_index is None:
        b_decision_index = torch.arange(steps).unsqueeze(1).expand(steps, batch)
    return UnrollBatch(
        obs=b_obs.numpy(),
        actions=b_actions.numpy(),
        rewards=b_rewards.numpy(),
        terminated=b_terminated.numpy(),
        behaviour_log_probs=b_behaviour.numpy(),
        mask=b_mask.numpy(),
        policy_versions=np.zeros((steps, batch), dtype=np.int64),
        decision_index=b_decision_index.numpy().copy(),
        fresh=np.ones((steps, batch), dtype=np.float32),
    )


def bandit_tensors(generator: torch.Generator, steps: int = 4, batch: int = 8) -> tuple[torch.Tensor, ...]:
    """One state, two actions, action 1 pays 1: uniformly random behaviour, every step terminal."""
    b_obs = torch.tensor([1.0, 0.0, 0.0]).expand(steps + 1, batch, 3).clone()
    b_actions = torch.randint(0, 2, (steps, batch), generator=generator)
    return (
        b_obs,
        b_actions,
        b_actions.float(),  # rewards
        torch.ones(steps, batch),  # terminated
        torch.full((steps, batch), math.log(0.5)),  # behaviour log-probs
        torch.ones(steps, batch),  # mask
    )


def bandit_batch(generator: torch.Generator, steps: int = 4, batch: int = 8) -> UnrollBatch:
    return unroll_batch(*bandit_tensors(generator, steps, batch))


def policy_and_value(agent: VTrace) -> tuple[float, float]:
    with torch.no_grad():
        logits, value = agent.network(torch.tensor([[1.0, 0.0, 0.0]]))
    return torch.softmax(logits, dim=-1)[0, 1].item(), value.item()


def test_updates_learn_to_prefer_the_paying_action_from_uniformly_random_behaviour() -> None:
    agent = VTrace(VTraceConfig(learning_rate=1e-3), TINY, "cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    initial_probability, _ = policy_and_value(agent)

    for _ in range(300):
        loss = agent.update(bandit_batch(generator))["loss"]

    probability, value = policy_and_value(agent)
    assert agent.updates == 300
    assert math.isfinite(loss.item())
    assert 0.4 < initial_probability < 0.6
    assert probability > 0.9
    # Once pi prefers action 1, its samples carry rho = 1 (target 1) and action 0's carry rho = pi(0)/0.5 ~ 0.
    assert value == pytest.approx(1.0, abs=0.15)


def test_masked_steps_do_not_change_the_update() -> None:
    generator = torch.Generator().manual_seed(1)
    b_obs, b_actions, b_rewards, b_terminated, b_behaviour, _ = bandit_tensors(generator)
    b_mask = torch.ones_like(b_rewards)
    b_mask[2, 3] = 0.0
    garbled_rewards, garbled_behaviour = b_rewards.clone(), b_behaviour.clone()
    garbled_rewards[2, 3], garbled_behaviour[2, 3] = 1e6, -1e6

    first = VTrace(VTraceConfig(), TINY, "cpu", seed=0)
    second = VTrace(VTraceConfig(), TINY, "cpu", seed=0)
    first.update(unroll_batch(b_obs, b_actions, b_rewards, b_terminated, b_behaviour, b_mask))
    second.update(unroll_batch(b_obs, b_actions, garbled_rewards, b_terminated, garbled_behaviour, b_mask))

    for x, y in zip(first.network.parameters(), second.network.parameters(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize(("decided_on", "log_pi"), [(0, math.log(0.75)), (1, math.log(0.5)), (-1, None)])
def test_the_ratio_and_policy_gradient_use_the_observation_the_action_was_computed_from(
    decided_on: int, log_pi: float | None
) -> None:
    # pi(1 | A) = 0.75, pi(1 | B) = 0.5, V = 0. Step 0 at A: a noop fallback (mu = 1), no reward. Step 1,
    # own observation B, decided at A (0), at B (1) or nowhere known (-1): action 1 with mu = 0.5, reward 1, terminal.
    agent = VTrace(VTraceConfig(gamma=0.99), TINY_AC, "cpu", seed=0)
    input_dependent(agent.network)
    unrolls = one_unroll(
        [A, B, B], [0, 1], [0.0, 1.0], [0.0, 1.0], [0.0, math.log(0.5)], decision_index=[0, decided_on]
    )

    policy_loss = agent.update(unrolls)["policy_loss"].item()

    # Step 0: rho_0 = pi(0 | A) / 1 = 0.25. Step 1: rho_1 = min(1, pi(1 | x) / 0.5) = 1, its advantage 1 - 0 = 1,
    # so vs_1 = 1 and step 0's advantage is rho_0 * 0.99 * vs_1. Without a decision observation step 1 is masked:
    # rho_1 = 0, vs_1 = V(x_1) = 0, and only step 0's term is left, with advantage 0.
    if log_pi is None:
        assert policy_loss == pytest.approx(0.0, abs=1e-7)
    else:
        assert policy_loss == pytest.approx(-(math.log(0.25) * 0.25 * 0.99 + log_pi * 1.0), rel=1e-5)


def test_update_refuses_a_batch_without_the_bootstrap_observation() -> None:
    agent = VTrace(VTraceConfig(), TINY, "cpu", seed=0)
    b_obs, *rest = bandit_tensors(torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError, match="T \\+ 1 = 5 observations"):
        agent.update(unroll_batch(b_obs[:-1], *rest))


# -- state round trip ---------------------------------------------------------------------------------


def through_safetensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return load_safetensors(save_safetensors({k: v.contiguous() for k, v in tensors.items()}))


def test_a_resumed_agent_makes_exactly_the_same_next_update_as_the_original() -> None:
    config = VTraceConfig(learning_rate=1e-2)
    original = VTrace(config, TINY, "cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        original.update(bandit_batch(generator))

    weights = through_safetensors(original.policy_weights())
    learner_state = original.learner_state()
    assert learner_state, "RMSProp state must be exported"
    resumed = VTrace(config, TINY, "cpu", seed=1)  # different initial weights
    resumed.load_state(weights, through_safetensors(learner_state), original.updates)
    assert resumed.updates == 3

    for _ in range(2):
        batch = bandit_batch(generator)
        assert torch.equal(original.update(batch)["loss"], resumed.update(batch)["loss"])
    for x, y in zip(original.network.parameters(), resumed.network.parameters(), strict=True):
        assert torch.equal(x, y)


def test_a_fresh_optimizer_would_not_reproduce_the_update() -> None:
    """Guards the test above: without the RMSProp averages the resumed update really differs."""
    config = VTraceConfig(learning_rate=1e-2)
    original = VTrace(config, TINY, "cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        original.update(bandit_batch(generator))
    resumed = VTrace(config, TINY, "cpu", seed=1)
    resumed.load_state(original.policy_weights(), None, 3)

    batch = bandit_batch(generator)
    original.update(batch)
    resumed.update(batch)
    assert not all(
        torch.equal(x, y) for x, y in zip(original.network.parameters(), resumed.network.parameters(), strict=True)
    )


def test_importing_state_that_does_not_fit_raises_a_value_error() -> None:
    agent = VTrace(VTraceConfig(), TINY, "cpu", seed=0)
    agent.update(bandit_batch(torch.Generator().manual_seed(0)))
    weights = agent.policy_weights()
    learner_state = agent.learner_state()

    other = VTrace(VTraceConfig(), ModelConfig("mlp", (5,), 2, hidden_size=8, head="actor_critic"), "cpu", 0)
    with pytest.raises(ValueError, match="do not fit"):
        agent.load_state(other.policy_weights(), None, 1)
    with pytest.raises(ValueError, match=r"does not know: target_network\.x"):
        agent.load_state(weights, {**learner_state, "target_network.x": torch.zeros(1)}, 1)
    incomplete = {k: v for k, v in learner_state.items() if not k.endswith("core.0.weight.square_avg")}
    with pytest.raises(ValueError, match=r"incomplete optimizer state for core\.0\.weight: only step"):
        agent.load_state(weights, incomplete, 1)
