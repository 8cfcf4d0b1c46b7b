"""PPO by hand: GAE, the clipped surrogate and its value and entropy terms on a network whose outputs are set,
which steps teach the policy, the batches of unrolls it trains its epochs on, and what it learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from actor_critic_batches import TINY, A, B, constant_outputs, input_dependent, one_unroll
from learner_transitions import make_transition

from rtrl.models import ModelConfig
from rtrl.services.learner.algorithms.ppo import PPO, PPOConfig, gae
from rtrl.services.learner.algorithms.vtrace import vtrace_targets
from rtrl.services.learner.trajectories import UnrollBatch


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def whole(ppo: PPO, unrolls: UnrollBatch) -> dict[str, torch.Tensor]:
    """One update on the whole batch."""
    batch = ppo.prepare(unrolls)
    return ppo.update((batch, torch.arange(batch.actions.shape[0])))


# -- advantages ----------------------------------------------------------------------------------------


def test_gae_by_hand_stops_at_terminals_and_at_steps_without_a_successor() -> None:
    b_rewards = torch.tensor([[1.0], [2.0], [3.0]])
    b_values = torch.tensor([[0.5], [1.0], [1.5]])
    b_bootstrap = torch.tensor([2.0])
    # delta = r + 0.9 V' - V: 1 + 0.9 - 0.5 = 1.4; 2 + 1.35 - 1 = 2.35; 3 + 1.8 - 1.5 = 3.3.
    through = gae(b_rewards, b_values, b_bootstrap, torch.full((3, 1), 0.9), 0.5, torch.ones(3, 1))
    assert through.flatten().tolist() == pytest.approx([1.4 + 0.45 * (2.35 + 0.45 * 3.3), 2.35 + 0.45 * 3.3, 3.3])
    # A terminal at step 1 (discount 0): its delta is 2 - 1 = 1 and nothing flows back past it.
    terminal = gae(b_rewards, b_values, b_bootstrap, torch.tensor([[0.9], [0.0], [0.9]]), 0.5, torch.ones(3, 1))
    assert terminal.flatten().tolist() == pytest.approx([1.4 + 0.45 * 1.0, 1.0, 3.3])
    # Step 1 without a successor: advantage 0, and step 0 bootstraps from V(x_1) alone.
    masked = gae(b_rewards, b_values, b_bootstrap, torch.full((3, 1), 0.9), 0.5, torch.tensor([[1.0], [0.0], [1.0]]))
    assert masked.flatten().tolist() == pytest.approx([1.4, 0.0, 3.3])


# -- the update by hand -------------------------------------------------------------------------------


def test_the_clipped_surrogate_value_and_entropy_terms_by_hand() -> None:
    config = PPOConfig(gamma=0.9, gae_lambda=1.0, clip_coef=0.2, entropy_coef=0.01, normalize_advantages=False)
    ppo = PPO(config, TINY, "cpu", seed=0)
    constant_outputs(ppo.network, [0.0, math.log(3.0)], value=0.5)  # pi = (0.25, 0.75), V = 0.5
    unrolls = one_unroll([A, A, A], [1, 0], [1.0, 0.0], [0.0, 1.0], [math.log(0.5)] * 2)

    batch = ppo.prepare(unrolls)
    # delta_0 = 1 + 0.9 * 0.5 - 0.5 = 0.95, delta_1 = 0 - 0.5 (terminal); A_1 = -0.5, A_0 = 0.95 - 0.45 = 0.5.
    assert batch.advantages.tolist() == pytest.approx([0.5, -0.5])
    assert batch.returns.tolist() == pytest.approx([1.0, 0.0])
    metrics = ppo.update((batch, torch.arange(2)))

    # Ratios pi/mu: 0.75 / 0.5 = 1.5 and 0.25 / 0.5 = 0.5, both clipped to [0.8, 1.2] where that is worse:
    # max(-0.5 * 1.5, -0.5 * 1.2) = -0.6 and max(0.5 * 0.5, 0.5 * 0.8) = 0.4.
    assert metrics["policy_loss"].item() == pytest.approx((-0.6 + 0.4) / 2)
    assert metrics["value_loss"].item() == pytest.approx(0.5 * (0.25 + 0.25) / 2)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert metrics["entropy"].item() == pytest.approx(entropy)
    assert metrics["loss"].item() == pytest.approx(-0.1 + 0.5 * 0.125 - 0.01 * entropy)
    assert metrics["approx_kl"].item() == pytest.approx(((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2)
    assert metrics["clip_fraction"].item() == pytest.approx(1.0)
    assert ppo.updates == 1


def test_value_clipping_keeps_the_larger_error_of_the_clipped_value() -> None:
    unrolls = one_unroll([A, A], [0], [5.0], [1.0], [math.log(0.5)])  # return 5 against V = 0
    losses = {}
    for clip in (0.0, 0.2):
        ppo = PPO(PPOConfig(value_clip_coef=clip, learning_rate=0.5, normalize_advantages=False), TINY, "cpu", 0)
        constant_outputs(ppo.network, [0.0, 0.0], value=0.0)
        batch = ppo.prepare(unrolls)
        ppo.update((batch, torch.arange(1)))  # moves V well away from 0 towards 5
        losses[clip] = ppo.update((batch, torch.arange(1)))["value_loss"].item()
        moved = ppo.network(torch.from_numpy(A[None]))[1].item()
    # Clipped: the second step's value counts as if it were at most 0.2 from the batch's 0, error >= (5 - 0.2)^2.
    assert moved > 0.2
    assert losses[0.2] == pytest.approx(0.5 * (5 - 0.2) ** 2)
    assert losses[0.0] < losses[0.2]


# -- which steps teach the policy ----------------------------------------------------------------------


def test_fallback_steps_and_steps_without_a_decision_observation_do_not_teach_the_policy() -> None:
    def updated(behaviour: list[float]) -> list[torch.Tensor]:
        ppo = PPO(PPOConfig(), TINY, "cpu", seed=0)
        unrolls = one_unroll(
            [A, B, A, B, A],
            [1, 0, 1, 0],
            [1.0, 0.0, 1.0, 0.0],
            [0.0] * 4,
            behaviour,
            fresh=[1.0, 0.0, 1.0, 1.0],
            decision_index=[0, 1, 2, -1],
        )
        whole(ppo, unrolls)
        return [p.detach().clone() for p in ppo.network.parameters()]

    base = updated([-0.7] * 4)
    # Step 1 is a fallback, step 3 has no decision observation: their behaviour probability is never read.
    for x, y in zip(base, updated([-0.7, -9.0, -0.7, -9.0]), strict=True):
        assert torch.equal(x, y)
    # A fresh step's is.
    assert not all(torch.equal(x, y) for x, y in zip(base, updated([-0.7, -0.7, -9.0, -0.7]), strict=True))


def sampled(ppo: PPO, observation: np.ndarray, generator: np.random.Generator) -> tuple[int, float]:
    """An action from the current policy at `observation` and its log-probability (on-policy behaviour)."""
    with torch.no_grad():
        logits, _ = ppo.network(torch.from_numpy(observation[None]))
    log_policy = torch.log_softmax(logits[0], dim=-1)
    action = int(generator.random() < log_policy[1].exp().item())
    return action, float(log_policy[action])


def test_the_ratio_compares_pi_and_mu_on_the_observation_the_action_was_computed_from() -> None:
    # pi(1 | A) = 0.75, pi(1 | B) = 0.5; step 1 (own observation B) was chosen at A with mu = 0.75.
    def first_update(decided_on: int) -> dict[str, torch.Tensor]:
        ppo = PPO(PPOConfig(), TINY, "cpu", seed=0)
        input_dependent(ppo.network)
        unrolls = one_unroll(
            [A, B, B], [0, 1], [0.0, 1.0], [0.0, 1.0], [0.0, math.log(0.75)],
            fresh=[0.0, 1.0], decision_index=[0, decided_on],
        )  # fmt: skip
        return whole(ppo, unrolls)

    on_a = first_update(decided_on=0)
    assert on_a["approx_kl"].item() == pytest.approx(0.0, abs=1e-6)  # pi/mu = 0.75 / 0.75
    assert on_a["clip_fraction"].item() == 0.0
    on_b = first_update(decided_on=1)  # as if it had been chosen at B: pi/mu = 0.5 / 0.75
    assert on_b["approx_kl"].item() == pytest.approx(-1 / 3 - math.log(2 / 3), abs=1e-6)
    assert on_b["clip_fraction"].item() == 1.0


# -- batches and epochs ---------------------------------------------------------------------------------


def test_each_batch_of_the_newest_unrolls_is_trained_for_its_epochs_then_the_next_is_awaited() -> None:
    config = PPOConfig(unroll_length=2, batch_unrolls=2, epochs=2, minibatches=2)
    ppo = PPO(config, TINY, "cpu", seed=0)
    source = ppo.make_source((3,), np.dtype(np.float32), seed=0)
    seq = 0

    def add_unroll() -> None:
        nonlocal seq
        for _ in range(config.unroll_length):
            source.add(make_transition(seq=seq, observation=A, behaviour_log_prob=math.log(0.5)))
            seq += 1

    add_unroll()
    add_unroll()  # the first unroll is complete once the second one's first observation arrives
    assert source.untaken == 1 and not ppo.ready(source)
    add_unroll()
    assert ppo.ready(source)
    seen, publish = [], []
    while ppo.ready(source):
        batch, indices = ppo.sample(source)
        ppo.update((batch, indices))
        seen.append(indices)
        publish.append(ppo.wants_publication())
    # 2 epochs x 2 minibatches of the batch's 2 x 2 steps; each epoch covers every step once.
    assert ppo.updates == 4 and ppo.batches == 1
    # The next batch is collected with the policy of the last pass: it is published at once.
    assert publish == [False, False, False, True]
    assert sorted(torch.cat(seen[:2]).tolist()) == sorted(torch.cat(seen[2:]).tolist()) == [0, 1, 2, 3]
    # Four more unrolls arrive while it waits: the newest two make the next batch, the older two are skipped.
    for _ in range(4):
        add_unroll()
    assert ppo.ready(source)
    ppo.update(ppo.sample(source))
    assert ppo.batches == 2 and source.unrolls_skipped == 2 and source.untaken == 0


# -- V-trace advantages ---------------------------------------------------------------------------------


def test_vtrace_advantages_equal_gae_on_policy_and_correct_for_a_lagging_behaviour() -> None:
    config = PPOConfig(gamma=0.9, gae_lambda=1.0, vtrace_advantages=True)
    ppo = PPO(config, TINY, "cpu", seed=0)
    constant_outputs(ppo.network, [0.0, math.log(3.0)], value=0.5)
    on_policy = one_unroll([A, A, A], [1, 0], [1.0, 0.0], [0.0, 1.0], [math.log(0.75), math.log(0.25)])
    # mu = pi: every rho and c is 1, so V-trace's advantages are GAE's with lambda 1 (see the by-hand test).
    assert ppo.prepare(on_policy).advantages.tolist() == pytest.approx([0.5, -0.5])

    lagging = one_unroll([A, A, A], [1, 0], [1.0, 0.0], [0.0, 1.0], [math.log(0.5)] * 2)
    b_vs, b_pg = vtrace_targets(
        torch.tensor([[math.log(0.5)], [math.log(0.5)]]),
        torch.tensor([[math.log(0.75)], [math.log(0.25)]]),
        torch.tensor([[1.0], [0.0]]),
        torch.full((2, 1), 0.5),
        torch.tensor([0.5]),
        torch.tensor([[0.9], [0.0]]),
        rho_bar=1.0,
        c_bar=1.0,
    )
    batch = ppo.prepare(lagging)
    assert batch.advantages.tolist() == pytest.approx(b_pg.flatten().tolist())
    assert batch.returns.tolist() == pytest.approx(b_vs.flatten().tolist())
    # rho_1 = 0.25 / 0.5 scales step 1's advantage: no longer GAE's.
    assert batch.advantages[1].item() == pytest.approx(-0.25)


# -- configuration and learning -------------------------------------------------------------------------


def test_config_problems_name_the_fields_ppo_cannot_train_with() -> None:
    assert PPOConfig().problems() == {}
    problems = PPOConfig(epochs=0, clip_coef=0.0, gae_lambda=1.5, entropy_coef=-1.0).problems()
    assert set(problems) == {"epochs", "clip_coef", "gae_lambda", "entropy_coef"}
    assert PPOConfig(unroll_length=2, batch_unrolls=2, minibatches=5).problems() == {
        "minibatches": "at most the steps of a batch (4)"
    }
    with pytest.raises(AssertionError, match=r"head 'q'.*head='actor_critic'"):
        PPO(PPOConfig(), ModelConfig("mlp", (3,), 2, hidden_size=4), "cpu", seed=0)


def test_ppo_learns_to_prefer_the_paying_action_when_it_acts_with_its_own_policy() -> None:
    ppo = PPO(PPOConfig(learning_rate=1e-2), TINY, "cpu", seed=0)
    generator = np.random.default_rng(0)
    for _ in range(40):
        steps = [sampled(ppo, A, generator) for _ in range(8)]
        actions, log_probs = [a for a, _ in steps], [p for _, p in steps]
        unrolls = one_unroll([A] * 9, actions, [float(a) for a in actions], [1.0] * 8, log_probs)
        for _ in range(ppo.config.epochs):
            whole(ppo, unrolls)
    with torch.no_grad():
        logits, value = ppo.network(torch.from_numpy(A[None]))
    assert torch.softmax(logits, dim=-1)[0, 1] > 0.9
    assert math.isfinite(value.item())
