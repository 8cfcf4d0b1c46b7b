"""V-trace actor-critic (IMPALA, Espeholt et al. 2018) written out flat, CleanRL style.

Acting never waits for learning in rtrl, so every unroll the learner trains on was produced by older
checkpoints, from observations several frames old, and on some steps by the gateway's fallback policy.
V-trace corrects for that lag with the behaviour log-probability each transition carries, instead of
ignoring it. This file holds everything that is V-trace: the hyperparameters, the actor-critic network
(from rtrl.models), the V-trace targets, the update (policy gradient, value and entropy losses,
gradient clipping, RMSProp step) and the training state a restarted learner continues from. The
learner loop owns the stream: trajectories.py cuts it into unrolls and samples the time-major batches
`update` takes. The importance ratio and the policy gradient evaluate pi on each action's decision
observation (algorithms/base.py), the one mu was evaluated on; the values stay on each step's own.
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
from rtrl.services.learner.training_state import export_optimizer_state, restore
from rtrl.services.learner.trajectories import UnrollBatch, UnrollBuffer


@dataclass(frozen=True)
class VTraceConfig:
    """V-trace hyperparameters (IMPALA's Atari values unless said otherwise); each can be an RTRL_VTRACE_<FIELD>."""

    unroll_length: int = 20
    """T: steps per unroll (an unroll holds T + 1 observations, the last one only bootstraps)."""
    batch_size: int = 16
    """Unrolls per update. Half of IMPALA's 32: a realtime game yields ~15 steps/s per gateway, and users
    must see a first checkpoint within a minute or so."""
    learning_rate: float = 6e-4
    """RMSProp learning rate."""
    gamma: float = 0.99
    """Discount factor."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus, which keeps the policy from collapsing onto one action too early."""
    value_coef: float = 0.5
    """Weight of the value loss (IMPALA's baseline cost)."""
    rho_bar: float = 1.0
    """Truncation of the importance weights rho_t = min(rho_bar, pi/mu) in the TD errors and the policy
    gradient (the paper's clip_rho_threshold; it is also used as the pg threshold, as in the paper's runs).
    It decides which policy's value V-trace converges to: pi itself at rho_bar = infinity, a policy
    between mu and pi below it."""
    c_bar: float = 1.0
    """Truncation of the trace coefficients c_t = min(c_bar, pi/mu): how far a correction travels back
    through the unroll. Smaller cuts traces sooner (lower variance, slower propagation)."""
    max_grad_norm: float = 40.0
    """Gradients are clipped to this global L2 norm."""
    rmsprop_alpha: float = 0.99
    """RMSProp decay of the squared-gradient average."""
    rmsprop_eps: float = 0.01
    """RMSProp epsilon, as in IMPALA and TorchBeast. torch adds it outside the square root (TensorFlow
    inside), which makes it act smaller; TorchBeast trains with this value in torch too. The losses are
    summed over the batch, not averaged, so gradients are large next to it, as in both."""
    replay_capacity: int = 128
    """Unrolls kept for sampling; the oldest leaves when a new one arrives."""
    learning_starts: int = 16
    """Unrolls stored before the first update."""
    max_replay_ratio: float = 0.0
    """Most unrolls sampled per unroll added before the learner waits for new data (see `ready_to_update`);
    0 = no cap: the learner trains without pause, as DQN does, and V-trace's truncated importance weights
    keep reused (more off-policy) unrolls from biasing the update, at the cost of shorter traces."""

    def problems(self) -> dict[str, str]:
        """Fields V-trace cannot train with, each mapped to what it should be instead (empty when all are fine)."""
        return config_problems(self)


def config_problems(config: VTraceConfig) -> dict[str, str]:
    """Fields V-trace cannot train with, each mapped to what it should be instead (empty when all are fine)."""
    problems: dict[str, str] = {}
    for name in ("unroll_length", "batch_size", "replay_capacity"):
        if getattr(config, name) < 1:
            problems[name] = "an integer of 1 or more"
    if config.learning_starts < 0:
        problems["learning_starts"] = "an integer of 0 or more"
    for name in ("learning_rate", "max_grad_norm", "rmsprop_eps", "rho_bar", "c_bar"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            problems[name] = "a finite number greater than 0"
    for name in ("entropy_coef", "value_coef", "max_replay_ratio"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            problems[name] = "a finite number of 0 or more"
    for name in ("gamma", "rmsprop_alpha"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            problems[name] = "a number between 0 and 1"
    if config.learning_starts > config.replay_capacity and not problems.keys() & {"learning_starts", "replay_capacity"}:
        # The buffer never holds more than replay_capacity unrolls, so training would never start.
        problems["learning_starts"] = f"at most replay_capacity ({config.replay_capacity})"
    if config.rho_bar < config.c_bar and "rho_bar" not in problems and "c_bar" not in problems:
        # Espeholt et al. 2018 assume c_bar <= rho_bar (section 4.1); the contraction argument needs it.
        problems["c_bar"] = f"at most rho_bar ({config.rho_bar})"
    return problems


def ready_to_update(config: VTraceConfig, unrolls_stored: int, unrolls_added: int, unrolls_sampled: int) -> bool:
    """Whether the next update may run: enough unrolls stored, and the replay ratio cap (if any) not reached."""
    if unrolls_stored < max(1, config.learning_starts):
        return False
    if config.max_replay_ratio == 0:
        return True
    return unrolls_sampled + config.batch_size <= config.max_replay_ratio * unrolls_added


# -- V-trace targets -------------------------------------------------------------------------------


def vtrace_targets(
    b_behaviour_log_probs: torch.Tensor,
    b_target_log_probs: torch.Tensor,
    b_rewards: torch.Tensor,
    b_values: torch.Tensor,
    b_bootstrap_value: torch.Tensor,
    b_discounts: torch.Tensor,
    rho_bar: float,
    c_bar: float,
    b_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace targets vs_t and policy-gradient advantages (Espeholt et al. 2018, eq. 1 and section 4.2).

    Time-major: every argument is [T, B] except `b_bootstrap_value`, V(x_T), which is [B].
    `b_discounts` is gamma_t, 0 where the episode terminated at step t. With ratios pi(a_t|x_t)/mu(a_t|x_t):

        rho_t = min(rho_bar, pi/mu),  c_t = min(c_bar, pi/mu)
        delta_t = rho_t (r_t + gamma_t V(x_{t+1}) - V(x_t))
        vs_t - V(x_t) = delta_t + gamma_t c_t (vs_{t+1} - V(x_{t+1})),   vs_T = V(x_T)
        pg_advantage_t = rho_t (r_t + gamma_t vs_{t+1} - V(x_t))

    `b_mask` (1 = trainable) gives steps that must not be learned from (no successor: a truncation or a
    gap in the stream follows them) rho_t = c_t = 0. Then vs_t = V(x_t) and the trace stops there, so the
    step before bootstraps from V(x_t), a true state of its episode, and nothing crosses the gap.
    No gradient flows through the targets.
    """
    with torch.no_grad():
        rhos = torch.exp(b_target_log_probs - b_behaviour_log_probs)
        if b_mask is not None:
            # where, not a product: a masked step's log-probabilities may be anything, and inf * 0 is nan.
            rhos = torch.where(b_mask > 0, rhos, torch.zeros_like(rhos))
        clipped_rhos = torch.clamp(rhos, max=rho_bar)
        cs = torch.clamp(rhos, max=c_bar)

        b_next_values = torch.cat([b_values[1:], b_bootstrap_value.unsqueeze(0)], dim=0)
        deltas = clipped_rhos * (b_rewards + b_discounts * b_next_values - b_values)

        vs_minus_v = torch.zeros_like(b_bootstrap_value)  # vs_T - V(x_T) = 0
        b_vs_minus_v = []
        for t in reversed(range(b_rewards.shape[0])):
            vs_minus_v = deltas[t] + b_discounts[t] * cs[t] * vs_minus_v
            b_vs_minus_v.append(vs_minus_v)
        b_vs = torch.stack(b_vs_minus_v[::-1]) + b_values

        b_next_vs = torch.cat([b_vs[1:], b_bootstrap_value.unsqueeze(0)], dim=0)
        b_pg_advantages = clipped_rhos * (b_rewards + b_discounts * b_next_vs - b_values)
    return b_vs, b_pg_advantages


# -- the algorithm ---------------------------------------------------------------------------------
#
# Whose policy is mu. The behaviour log-probability of a step is whatever chose its action:
# - a fresh action: the checkpoint that answered (policy_version), sampling its softmax, evaluated on the
#   observation it was sent, its decision observation, on which pi is evaluated too;
# - a fallback action (no reply in time): the gateway's fallback policy, beta in Riemer et al.'s
#   asynchronous MDP. The gateway records log 1 = 0.0 for the deterministic noop / repeat-last fallbacks
#   and -log(A) for the uniformly random one.
# Both are the behaviour policy mu of the paper and get the same importance weights. So V-trace learns
# the value of following pi on every step, the policy the agent would execute if it were always in
# time, and corrects for the steps beta (or an older pi) took. On a deterministic fallback step
# rho_t = min(rho_bar, pi(a_t|x_t)): a fallback action pi would rarely choose contributes little and cuts
# the trace, as it should, and its gradient term still teaches pi about that action, weighted by how
# likely pi is to take it. (Learning the value of the mixed process actually executed, with the
# fallback steps out of the agent's control, would instead set rho_t = c_t = 1 there and drop their
# policy-gradient term; not done here.)

_RMSPROP_PREFIX = "rmsprop."
# RMSProp without momentum and not centred keeps only these per parameter.
_RMSPROP_KEYS = ("step", "square_avg")


class VTrace:
    """The actor-critic network, its optimizer and the update counter (what a checkpoint holds)."""

    name: ClassVar[str] = "vtrace"
    head: ClassVar[str] = "actor_critic"
    config_class: ClassVar[type] = VTraceConfig

    def __init__(self, config: VTraceConfig, model_config: ModelConfig, device: torch.device | str, seed: int) -> None:
        assert not config_problems(config), f"V-trace cannot train with {config_problems(config)}"
        assert model_config.head == self.head, (
            f"V-trace trains an actor-critic network, but the model config has head {model_config.head!r}; "
            f"build it with head={self.head!r}"
        )
        self.config = config
        self.model_config = model_config
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.network = ActorCritic(model_config).to(self.device)
        self.optimizer = torch.optim.RMSprop(
            self.network.parameters(), lr=config.learning_rate, alpha=config.rmsprop_alpha, eps=config.rmsprop_eps
        )
        self.updates = 0

    def make_source(self, observation_shape: tuple[int, ...], observation_dtype: np.dtype, seed: int) -> UnrollBuffer:
        config = self.config
        shape, dtype = observation_shape, observation_dtype
        return UnrollBuffer(config.unroll_length, config.replay_capacity, shape, dtype, seed=seed)

    def ready(self, source: UnrollBuffer) -> bool:
        return ready_to_update(self.config, len(source), source.unrolls_added, source.unrolls_sampled)

    def sample(self, source: UnrollBuffer) -> UnrollBatch:
        return source.sample(self.config.batch_size)

    def wants_publication(self) -> bool:
        return False  # off-policy: every checkpoint interval is as good as another

    @staticmethod
    def exploration(config: VTraceConfig, env_steps: int) -> float:
        return 0.0  # the policy explores by sampling its own softmax

    def update(self, batch: UnrollBatch) -> dict[str, torch.Tensor]:
        """One gradient step on a time-major batch of unrolls; returns the total loss and its parts.

        `batch.obs` is [T + 1, B, *observation_shape] (x_T only bootstraps), the rest [T, B]. Steps with
        mask 0 (no successor) or no decision observation are not learned from. Losses are summed over
        time and batch, as in IMPALA.
        """
        device = self.device
        b_obs = torch.from_numpy(batch.obs).to(device)
        b_actions = torch.from_numpy(batch.actions).to(device)
        b_rewards = torch.from_numpy(batch.rewards).to(device)
        b_terminated = torch.from_numpy(batch.terminated).to(device)
        b_behaviour_log_probs = torch.from_numpy(batch.behaviour_log_probs).to(device)
        b_decision_index = torch.from_numpy(batch.decision_index).to(device)
        b_mask = torch.from_numpy(batch.mask).to(device) * (b_decision_index >= 0).float()
        steps, batch_size = b_actions.shape
        assert b_obs.shape[:2] == (steps + 1, batch_size), (
            f"V-trace needs T + 1 = {steps + 1} observations per unroll for T = {steps} actions, "
            f"got observations shaped {list(b_obs.shape)}"
        )
        b_all_logits, b_all_values = self.network(b_obs.flatten(0, 1))
        b_all_logits = b_all_logits.view(steps + 1, batch_size, -1)
        b_all_values = b_all_values.view(steps + 1, batch_size)
        b_values, b_bootstrap_value = b_all_values[:-1], b_all_values[-1]

        # pi on the observation each action was computed from (the step's own unless a reply was late).
        b_decision_logits = decision_rows(b_all_logits, b_decision_index)
        b_log_policy = F.log_softmax(b_decision_logits, dim=-1)
        b_target_log_probs = b_log_policy.gather(-1, b_actions.long().unsqueeze(-1)).squeeze(-1)
        b_discounts = self.config.gamma * (1.0 - b_terminated)
        b_vs, b_pg_advantages = vtrace_targets(
            b_behaviour_log_probs,
            b_target_log_probs.detach(),
            b_rewards,
            b_values.detach(),
            b_bootstrap_value.detach(),
            b_discounts,
            self.config.rho_bar,
            self.config.c_bar,
            b_mask,
        )

        pg_loss = -(b_target_log_probs * b_pg_advantages * b_mask).sum()
        value_loss = 0.5 * ((b_vs - b_values) ** 2 * b_mask).sum()
        entropy = -(b_log_policy.exp() * b_log_policy).sum(dim=-1)
        entropy_loss = -(entropy * b_mask).sum()
        loss = pg_loss + self.config.value_coef * value_loss + self.config.entropy_coef * entropy_loss

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.network.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        learned = b_mask.sum().clamp(min=1.0)
        return {
            "loss": loss.detach(),
            "policy_loss": pg_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": (entropy * b_mask).sum().detach() / learned,
        }

    # -- training state as flat tensors (safetensors) ----------------------------------------------

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """The network's weights: what inference serves (policy logits and value head together)."""
        return {name: tensor.detach() for name, tensor in self.network.state_dict().items()}

    def learner_state(self) -> dict[str, torch.Tensor]:
        """RMSProp's state. There is no target network: V-trace bootstraps from the network being trained."""
        return export_optimizer_state(self.optimizer, self.network, _RMSPROP_PREFIX, _RMSPROP_KEYS)

    def load_state(
        self, weights: dict[str, torch.Tensor], learner_state: dict[str, torch.Tensor] | None, updates: int
    ) -> None:
        """Without `learner_state` RMSProp starts fresh."""
        restore(
            self.network,
            self.optimizer,
            weights,
            learner_state,
            prefix=_RMSPROP_PREFIX,
            keys=_RMSPROP_KEYS,
            owner="this V-trace network",
        )
        self.updates = updates
