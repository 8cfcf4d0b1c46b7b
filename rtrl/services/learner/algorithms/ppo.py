"""PPO (Schulman et al. 2017) over unrolls from the stream, written out flat, CleanRL style.

The frameworks rtrl's users come from train PPO in turns: collect a batch, stop acting, run several
epochs over it. Here acting never stops, so the learner takes the newest `batch_unrolls` unrolls the
gateways produced (trajectories.py), computes GAE advantages (Schulman et al. 2016) with the value
network as it is then, and runs `epochs` passes of `minibatches` gradient steps over them while the
next batch streams in. The data of a batch came from checkpoints a few versions old, so the ratio of
the clipped surrogate is pi(a|x) / mu(a|x) with mu the behaviour log-probability each transition
carries, as APPO does (Espeholt et al. 2018, appendix; RLlib's APPO), never the current network's own
probability at the start of the batch. With `vtrace_advantages` the advantages and value targets
are V-trace's instead of GAE's, which corrects them for that lag too.

Which steps teach what. The value loss uses every step that has a successor (mask 1), on its own
observation. The policy loss uses the fresh steps among them, on their decision observation
(algorithms/base.py): a fallback step's action was not the policy's choice, and a step whose decision
observation is not in its unroll has no probability to compare. Hyperparameters are CleanRL's for
Atari unless their docstring says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtrl.models import ActorCritic, ModelConfig
from rtrl.services.learner.algorithms.base import decision_rows
from rtrl.services.learner.algorithms.vtrace import vtrace_targets
from rtrl.services.learner.training_state import export_optimizer_state, restore
from rtrl.services.learner.trajectories import UnrollBatch, UnrollBuffer


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters; every field can be set as RTRL_PPO_<FIELD_NAME_UPPER>."""

    unroll_length: int = 128
    """T: consecutive steps of one gateway per unroll (T + 1 observations, the last one only bootstraps)."""
    batch_unrolls: int = 4
    """Unrolls per batch: a batch is T x batch_unrolls steps (CleanRL: 128 steps x 4 envs for CartPole)."""
    epochs: int = 4
    """Passes over each batch."""
    minibatches: int = 4
    """Gradient steps per pass; each takes an equal share of the batch's steps, shuffled."""
    learning_rate: float = 2.5e-4
    """Adam learning rate."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """lambda of GAE: 0 is the one-step TD error, 1 the Monte Carlo return minus the value."""
    clip_coef: float = 0.2
    """The surrogate's ratio pi/mu is clipped to [1 - clip_coef, 1 + clip_coef]."""
    value_clip_coef: float = 0.2
    """Value clipping: a new value more than this far from the batch's value gains nothing (0: off)."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus (0: off)."""
    max_grad_norm: float = 0.5
    """Gradients are clipped to this global L2 norm."""
    normalize_advantages: bool = True
    """Advantages are standardised within each minibatch."""
    vtrace_advantages: bool = False
    """Advantages and value targets from V-trace (corrected for policy lag, rho and c at 1) instead of GAE."""

    def problems(self) -> dict[str, str]:
        """Fields PPO cannot train with, each mapped to what it should be instead (empty when all are fine)."""
        return config_problems(self)


def config_problems(config: PPOConfig) -> dict[str, str]:
    """Fields PPO cannot train with, each mapped to what it should be instead (empty when all are fine)."""
    problems: dict[str, str] = {}
    for name in ("unroll_length", "batch_unrolls", "epochs", "minibatches"):
        if getattr(config, name) < 1:
            problems[name] = "an integer of 1 or more"
    for name in ("learning_rate", "adam_eps", "clip_coef", "max_grad_norm"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            problems[name] = "a finite number greater than 0"
    for name in ("value_clip_coef", "value_coef", "entropy_coef"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            problems[name] = "a finite number of 0 or more"
    for name in ("gamma", "gae_lambda"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            problems[name] = "a number between 0 and 1"
    if config.minibatches > config.unroll_length * config.batch_unrolls and "minibatches" not in problems:
        problems["minibatches"] = f"at most the steps of a batch ({config.unroll_length * config.batch_unrolls})"
    return problems


def gae(
    b_rewards: torch.Tensor,
    b_values: torch.Tensor,
    b_bootstrap_value: torch.Tensor,
    b_discounts: torch.Tensor,
    gae_lambda: float,
    b_mask: torch.Tensor,
) -> torch.Tensor:
    """Generalised advantage estimates, time-major: every argument [T, B] but `b_bootstrap_value`, V(x_T), [B].

        delta_t = r_t + gamma_t V(x_{t+1}) - V(x_t)
        A_t = delta_t + gamma_t lambda A_{t+1},   A_T = 0

    `b_discounts` is gamma_t, 0 where the episode terminated at step t. A step with mask 0 has no
    successor (a truncation or a gap follows it): its advantage is 0 and the trace stops there, so the
    step before bootstraps from V(x_t), a true state of its episode, and nothing crosses the gap.
    """
    with torch.no_grad():
        b_next_values = torch.cat([b_values[1:], b_bootstrap_value.unsqueeze(0)], dim=0)
        deltas = b_rewards + b_discounts * b_next_values - b_values
        advantage = torch.zeros_like(b_bootstrap_value)
        b_advantages = torch.zeros_like(b_values)
        for t in reversed(range(b_rewards.shape[0])):
            advantage = b_mask[t] * (deltas[t] + b_discounts[t] * gae_lambda * advantage)
            b_advantages[t] = advantage
    return b_advantages


@dataclass(frozen=True)
class PPOBatch:
    """One batch of unrolls ready for its epochs, flat over time and unrolls: [N = T x B, ...]."""

    obs: torch.Tensor
    """Each step's own observation (the value's input)."""
    decision_obs: torch.Tensor | None
    """The observation each action was computed from, or None when every policy step's is its own."""
    decided_elsewhere: torch.Tensor
    """True for the policy steps whose decision observation is another step's."""
    actions: torch.Tensor
    behaviour_log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    """Value targets: advantage + the batch's value."""
    values: torch.Tensor
    """The value network's output when the batch was prepared (for value clipping)."""
    value_mask: torch.Tensor
    policy_mask: torch.Tensor


_ADAM_PREFIX = "adam."
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


class PPO:
    """The actor-critic network, Adam, the batch being trained on and the update counter."""

    name: ClassVar[str] = "ppo"
    head: ClassVar[str] = "actor_critic"
    config_class: ClassVar[type] = PPOConfig

    def __init__(self, config: PPOConfig, model_config: ModelConfig, device: torch.device | str, seed: int) -> None:
        assert not config_problems(config), f"PPO cannot train with {config_problems(config)}"
        assert model_config.head == self.head, (
            f"PPO trains an actor-critic network, but the model config has head {model_config.head!r}; "
            f"build it with head={self.head!r}"
        )
        self.config = config
        self.model_config = model_config
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.network = ActorCritic(model_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.learning_rate, eps=config.adam_eps)
        self.updates = 0
        self.batches = 0
        """Batches of unrolls trained on."""
        self._generator = torch.Generator().manual_seed(seed)
        self._batch: PPOBatch | None = None
        self._minibatches: list[torch.Tensor] = []
        """Index sets of the current batch's remaining gradient steps, in order."""

    def make_source(self, observation_shape: tuple[int, ...], observation_dtype: np.dtype, seed: int) -> UnrollBuffer:
        # Room for two batches: one arriving while the last trains; beyond that the oldest are skipped.
        capacity = 2 * self.config.batch_unrolls
        return UnrollBuffer(self.config.unroll_length, capacity, observation_shape, observation_dtype, seed=seed)

    def ready(self, source: UnrollBuffer) -> bool:
        return bool(self._minibatches) or source.untaken >= self.config.batch_unrolls

    def wants_publication(self) -> bool:
        # The batch's last gradient step is done: the next batch should be collected with this policy.
        return self._batch is not None and not self._minibatches

    @staticmethod
    def exploration(config: PPOConfig, env_steps: int) -> float:
        return 0.0  # the policy explores by sampling its own softmax

    def sample(self, source: UnrollBuffer) -> tuple[PPOBatch, torch.Tensor]:
        """The next minibatch: the current batch and the indices of its next gradient step. Once the
        current batch's epochs are done, the newest unrolls become the next batch."""
        if not self._minibatches:
            self._batch = self.prepare(source.take_newest(self.config.batch_unrolls))
            steps = self._batch.actions.shape[0]
            self._minibatches = [
                indices
                for _ in range(self.config.epochs)
                for indices in torch.randperm(steps, generator=self._generator).tensor_split(self.config.minibatches)
            ]
            self.batches += 1
        assert self._batch is not None
        return self._batch, self._minibatches.pop(0).to(self.device)

    def prepare(self, unrolls: UnrollBatch) -> PPOBatch:
        """Advantages and value targets of a batch with the network as it is now, flattened for minibatches."""
        device, config = self.device, self.config
        b_obs = torch.from_numpy(unrolls.obs).to(device)
        b_rewards = torch.from_numpy(unrolls.rewards).to(device)
        b_terminated = torch.from_numpy(unrolls.terminated).to(device)
        b_behaviour_log_probs = torch.from_numpy(unrolls.behaviour_log_probs).to(device)
        b_mask = torch.from_numpy(unrolls.mask).to(device)
        b_actions = torch.from_numpy(unrolls.actions).to(device)
        b_decision_index = torch.from_numpy(unrolls.decision_index).to(device)
        steps, batch_size = b_actions.shape
        with torch.no_grad():
            b_all_logits, b_all_values = self.network(b_obs.flatten(0, 1))
        b_all_values = b_all_values.view(steps + 1, batch_size)
        b_values, b_bootstrap_value = b_all_values[:-1], b_all_values[-1]
        b_discounts = config.gamma * (1.0 - b_terminated)
        b_policy_mask = b_mask * torch.from_numpy(unrolls.fresh).to(device) * (b_decision_index >= 0).float()
        if config.vtrace_advantages:
            b_decision_logits = decision_rows(b_all_logits.view(steps + 1, batch_size, -1), b_decision_index)
            b_log_policy = F.log_softmax(b_decision_logits, dim=-1)
            b_target_log_probs = b_log_policy.gather(-1, b_actions.long().unsqueeze(-1)).squeeze(-1)
            # rho = c = 1 where the policy did not choose (a fallback, no decision observation).
            b_target_log_probs = torch.where(b_policy_mask > 0, b_target_log_probs, b_behaviour_log_probs)
            b_returns, b_advantages = vtrace_targets(
                b_behaviour_log_probs, b_target_log_probs, b_rewards, b_values, b_bootstrap_value, b_discounts,
                rho_bar=1.0, c_bar=1.0, b_mask=b_mask,
            )  # fmt: skip
            b_advantages = b_advantages * b_mask
        else:
            b_advantages = gae(b_rewards, b_values, b_bootstrap_value, b_discounts, config.gae_lambda, b_mask)
            b_returns = b_advantages + b_values
        own = torch.arange(steps, device=device).unsqueeze(1).expand_as(b_decision_index)
        b_elsewhere = (b_decision_index != own) & (b_policy_mask > 0)
        return PPOBatch(
            obs=b_obs[:-1].flatten(0, 1),
            decision_obs=decision_rows(b_obs, b_decision_index).flatten(0, 1) if b_elsewhere.any() else None,
            decided_elsewhere=b_elsewhere.flatten(),
            actions=b_actions.flatten(),
            behaviour_log_probs=b_behaviour_log_probs.flatten(),
            advantages=b_advantages.flatten(),
            returns=b_returns.flatten(),
            values=b_values.flatten(),
            value_mask=b_mask.flatten(),
            policy_mask=b_policy_mask.flatten(),
        )

    def update(self, minibatch: tuple[PPOBatch, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step of the clipped surrogate, the (clipped) value loss and the entropy bonus."""
        batch, indices = minibatch
        config = self.config
        mb_logits, mb_values = self.network(batch.obs[indices])
        elsewhere = batch.decided_elsewhere[indices]
        if batch.decision_obs is not None and elsewhere.any():
            # Only the steps decided on another observation need another forward pass for their policy.
            mb_logits = mb_logits.clone()
            mb_logits[elsewhere] = self.network(batch.decision_obs[indices][elsewhere])[0]
        mb_log_policy = F.log_softmax(mb_logits, dim=-1)
        mb_log_probs = mb_log_policy.gather(-1, batch.actions[indices].long().unsqueeze(-1)).squeeze(-1)
        mb_policy_mask = batch.policy_mask[indices]
        mb_value_mask = batch.value_mask[indices]
        policy_steps = mb_policy_mask.sum().clamp(min=1.0)
        value_steps = mb_value_mask.sum().clamp(min=1.0)

        mb_advantages = batch.advantages[indices]
        if config.normalize_advantages and mb_policy_mask.sum() > 1:
            mean = (mb_advantages * mb_policy_mask).sum() / policy_steps
            std = (((mb_advantages - mean) ** 2 * mb_policy_mask).sum() / (policy_steps - 1)).sqrt()
            mb_advantages = (mb_advantages - mean) / (std + 1e-8)
        # pi/mu, with mu where the action was chosen: a checkpoint a few versions old, not this network.
        log_ratio = mb_log_probs - batch.behaviour_log_probs[indices]
        # where, not a product: a masked step's ratio may be anything, and inf * 0 is nan.
        ratio = torch.where(mb_policy_mask > 0, log_ratio, torch.zeros_like(log_ratio)).exp()
        surrogate = torch.max(
            -mb_advantages * ratio, -mb_advantages * ratio.clamp(1.0 - config.clip_coef, 1.0 + config.clip_coef)
        )
        policy_loss = (surrogate * mb_policy_mask).sum() / policy_steps

        mb_returns = batch.returns[indices]
        value_error = (mb_values - mb_returns) ** 2
        if config.value_clip_coef > 0:
            mb_old_values = batch.values[indices]
            clipped = mb_old_values + (mb_values - mb_old_values).clamp(-config.value_clip_coef, config.value_clip_coef)
            value_error = torch.max(value_error, (clipped - mb_returns) ** 2)
        value_loss = 0.5 * (value_error * mb_value_mask).sum() / value_steps
        entropy = ((-(mb_log_policy.exp() * mb_log_policy).sum(dim=-1)) * mb_policy_mask).sum() / policy_steps
        loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.network.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        with torch.no_grad():
            # Schulman's low-variance estimator of KL(mu || pi) and the share of clipped ratios.
            approx_kl = (((ratio - 1) - log_ratio) * mb_policy_mask).sum() / policy_steps
            clip_fraction = (((ratio - 1.0).abs() > config.clip_coef).float() * mb_policy_mask).sum() / policy_steps
        return {
            "loss": loss.detach(),
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy.detach(),
            "approx_kl": approx_kl,
            "clip_fraction": clip_fraction,
        }

    # -- training state as flat tensors (safetensors) ----------------------------------------------

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """The network's weights: what inference serves (policy logits and value head together)."""
        return {name: tensor.detach() for name, tensor in self.network.state_dict().items()}

    def learner_state(self) -> dict[str, torch.Tensor]:
        """Adam's moments (the batch in progress is not kept: a restart starts the next one)."""
        return export_optimizer_state(self.optimizer, self.network, _ADAM_PREFIX, _ADAM_KEYS)

    def load_state(
        self, weights: dict[str, torch.Tensor], learner_state: dict[str, torch.Tensor] | None, updates: int
    ) -> None:
        """Without `learner_state` Adam starts fresh."""
        restore(self.network, self.optimizer, weights, learner_state, prefix=_ADAM_PREFIX, keys=_ADAM_KEYS, owner="PPO")
        self.updates = updates
