"""DQN (Mnih et al. 2015) written out flat, CleanRL style: hyperparameters, then the algorithm.

The learner loop owns the stream and calls `update` with a batch sampled from the replay buffer
(replay.py); this file holds everything that is DQN: the TD target (optionally double DQN, optionally
n-step), the Huber loss, the Adam step with gradient clipping, the periodic target-network copy, the
exploration schedule inference is told to use, and the training state a restarted learner continues
from. Q(x, a) is learned on each action's decision observation x (base.py): the replay pairs a step
whose action came from another step's observation with that observation and the one after it, so
that a lead shorter than the round trip teaches the network the delayed mapping instead of a wrong one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtrl.models import ModelConfig, QNetwork
from rtrl.services.learner.replay import ReplayBatch, ReplayBuffer
from rtrl.services.learner.training_state import export_optimizer_state, restore


@dataclass(frozen=True)
class DQNConfig:
    """DQN hyperparameters; every field can be set as RTRL_DQN_<FIELD_NAME_UPPER>."""

    learning_rate: float = 1e-4
    """Adam learning rate."""
    batch_size: int = 32
    """Transitions sampled from the replay buffer per update."""
    gamma: float = 0.99
    """Discount factor."""
    buffer_size: int = 50_000
    """Replay buffer capacity in transitions (each observation is stored once)."""
    learning_starts: int = 256
    """Trainable transitions in the replay buffer before the first update. Small on purpose: a realtime
    game yields ~15 transitions/s and users must see a first checkpoint within a minute."""
    target_network_frequency: int = 500
    """Updates between two copies of the online network into the target network."""
    epsilon_start: float = 1.0
    """Exploration rate at env step 0."""
    epsilon_end: float = 0.05
    """Exploration rate after `epsilon_decay_steps` env steps."""
    epsilon_decay_steps: int = 100_000
    """Env steps over which epsilon decays linearly from `epsilon_start` to `epsilon_end`."""
    max_grad_norm: float = 10.0
    """Gradients are clipped to this global L2 norm."""
    double_dqn: bool = False
    """Double DQN (van Hasselt et al. 2016): the online network picks the next action, the target rates it."""
    adam_eps: float = 1.5e-4
    """Adam epsilon (the Rainbow/Dopamine value, steadier than 1e-8 on sparse rewards)."""
    n_step: int = 1
    """Steps of reward before bootstrapping (Sutton 1988; Rainbow uses 3). The replay buffer sums
    r_t + gamma r_{t+1} + ... along consecutive paired transitions of one gateway, stopping early at a
    terminal (no bootstrap), at a truncation or gap, or at the newest transition (bootstrap from the last
    state reached). Uncorrected for the policy that acted, as in Rainbow: with stale data, larger n
    propagates reward faster but biases the target towards the behaviour policy."""
    max_replay_ratio: float = 0.0
    """Most transitions sampled (batch_size per update) per transition added since the learner started,
    before it waits for new data; 0 = no cap: the learner trains as fast as it can, whatever the game's
    rate. A cap keeps the number of updates per step of play the same on a fast and a slow machine."""

    def problems(self) -> dict[str, str]:
        """Fields DQN cannot train with, each mapped to what it should be instead (empty when all are fine)."""
        return config_problems(self)


def config_problems(config: DQNConfig) -> dict[str, str]:
    """Fields DQN cannot train with, each mapped to what it should be instead (empty when all are fine)."""
    problems: dict[str, str] = {}
    for name in ("batch_size", "buffer_size", "target_network_frequency", "epsilon_decay_steps", "n_step"):
        if getattr(config, name) < 1:
            problems[name] = "an integer of 1 or more"
    if config.learning_starts < 0:
        problems["learning_starts"] = "an integer of 0 or more"
    for name in ("learning_rate", "max_grad_norm", "adam_eps"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            problems[name] = "a finite number greater than 0"
    for name in ("gamma", "epsilon_start", "epsilon_end"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            problems[name] = "a number between 0 and 1"
    if not (math.isfinite(config.max_replay_ratio) and config.max_replay_ratio >= 0):
        problems["max_replay_ratio"] = "a finite number of 0 or more"
    if config.buffer_size < config.batch_size and "buffer_size" not in problems:
        problems["buffer_size"] = f"at least the batch size ({config.batch_size})"
    return problems


def epsilon_at(env_steps: int, config: DQNConfig) -> float:
    """Linear exploration schedule: epsilon_start at step 0 down to epsilon_end at epsilon_decay_steps."""
    fraction = min(1.0, max(0, env_steps) / config.epsilon_decay_steps)
    return config.epsilon_start + fraction * (config.epsilon_end - config.epsilon_start)


# -- the algorithm -----------------------------------------------------------------------------------

_TARGET_PREFIX = "target_network."
_ADAM_PREFIX = "adam."
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


class DQN:
    """The online and target Q-networks, their optimizer and the update counter (what a checkpoint holds)."""

    name: ClassVar[str] = "dqn"
    head: ClassVar[str] = "q"
    config_class: ClassVar[type] = DQNConfig

    def __init__(self, config: DQNConfig, model_config: ModelConfig, device: torch.device | str, seed: int) -> None:
        assert not config_problems(config), f"DQN cannot train with {config_problems(config)}"
        assert model_config.head == self.head, (
            f"DQN trains a Q-network, but the model config has head {model_config.head!r}; build it with head='q'"
        )
        self.config = config
        self.model_config = model_config
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.q_network = QNetwork(model_config).to(self.device)
        self.target_network = QNetwork(model_config).to(self.device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        # The target network is never trained; keeping it out of autograd saves memory and time.
        self.target_network.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=config.learning_rate, eps=config.adam_eps)
        self.updates = 0

    def make_source(self, observation_shape: tuple[int, ...], observation_dtype: np.dtype, seed: int) -> ReplayBuffer:
        config = self.config
        shape, dtype = observation_shape, observation_dtype
        return ReplayBuffer(config.buffer_size, shape, dtype, seed=seed, n_step=config.n_step, gamma=config.gamma)

    def ready(self, source: ReplayBuffer) -> bool:
        config = self.config
        if source.trainable_count < max(1, config.learning_starts):
            return False
        cap = config.max_replay_ratio
        return not cap or source.sampled + config.batch_size <= cap * source.writes

    def sample(self, source: ReplayBuffer) -> ReplayBatch:
        return source.sample(self.config.batch_size)

    def wants_publication(self) -> bool:
        return False  # off-policy: every checkpoint interval is as good as another

    @staticmethod
    def exploration(config: DQNConfig, env_steps: int) -> float:
        return epsilon_at(env_steps, config)

    def td_target(
        self,
        b_rewards: torch.Tensor,
        b_next_obs: torch.Tensor,
        b_terminated: torch.Tensor,
        b_steps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """r + gamma^m * (1 - terminated) * Q_target(x', a*), a* = argmax of Q_target (Q_online for double DQN).

        With n-step returns, `b_rewards` is the discounted sum r_t + gamma r_{t+1} + ... + gamma^{m-1} r_{t+m-1}
        that the replay buffer added up, `b_next_obs` is the observation m steps on, `b_terminated` says
        whether the episode terminated within those m steps, and `b_steps` holds m (1 <= m <= n_step).
        Without `b_steps`, m = 1.
        """
        with torch.no_grad():
            next_q_target = self.target_network(b_next_obs)
            if self.config.double_dqn:
                next_actions = self.q_network(b_next_obs).argmax(dim=1, keepdim=True)
                next_q = next_q_target.gather(1, next_actions).squeeze(1)
            else:
                next_q = next_q_target.max(dim=1).values
            bootstrap_discount = self.config.gamma if b_steps is None else self.config.gamma ** b_steps.float()
            return b_rewards + bootstrap_discount * (1.0 - b_terminated) * next_q

    def update(self, batch: ReplayBatch) -> dict[str, torch.Tensor]:
        """One gradient step on a batch from the replay buffer; returns the Huber loss and the mean Q."""
        device = self.device
        b_obs = torch.from_numpy(batch.obs).to(device)
        b_actions = torch.from_numpy(batch.actions).to(device)
        b_rewards = torch.from_numpy(batch.rewards).to(device)
        b_next_obs = torch.from_numpy(batch.next_obs).to(device)
        b_terminated = torch.from_numpy(batch.terminated).to(device)
        # One-step returns leave it out, so their target is exactly r + gamma * max Q.
        b_steps = torch.from_numpy(batch.steps).to(device) if self.config.n_step > 1 else None

        b_td_target = self.td_target(b_rewards, b_next_obs, b_terminated, b_steps)
        b_q = self.q_network(b_obs).gather(1, b_actions.long().unsqueeze(1)).squeeze(1)
        loss = F.smooth_l1_loss(b_q, b_td_target)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.q_network.parameters(), self.config.max_grad_norm)
        self.optimizer.step()

        self.updates += 1
        if self.updates % self.config.target_network_frequency == 0:
            self.target_network.load_state_dict(self.q_network.state_dict())
        return {"loss": loss.detach(), "q_mean": b_q.detach().mean()}

    # -- training state as flat tensors (safetensors) ----------------------------------------------

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """The online network's weights: what inference serves."""
        return {name: tensor.detach() for name, tensor in self.q_network.state_dict().items()}

    def learner_state(self) -> dict[str, torch.Tensor]:
        """The target network and Adam's moments."""
        tensors = {_TARGET_PREFIX + name: t.detach() for name, t in self.target_network.state_dict().items()}
        tensors.update(export_optimizer_state(self.optimizer, self.q_network, _ADAM_PREFIX, _ADAM_KEYS))
        return tensors

    def load_state(
        self, weights: dict[str, torch.Tensor], learner_state: dict[str, torch.Tensor] | None, updates: int
    ) -> None:
        """Without `learner_state` the target network starts as a copy of the weights and Adam starts fresh."""
        restore(
            self.q_network,
            self.optimizer,
            weights,
            learner_state,
            prefix=_ADAM_PREFIX,
            keys=_ADAM_KEYS,
            owner="DQN",
            other_prefixes=(_TARGET_PREFIX,),
        )
        target = weights
        if learner_state is not None:
            target = {k[len(_TARGET_PREFIX) :]: v for k, v in learner_state.items() if k.startswith(_TARGET_PREFIX)}
        try:
            self.target_network.load_state_dict(target)
        except RuntimeError as e:
            raise ValueError(f"checkpoint's target network does not fit the network: {e}") from e
        self.updates = updates
