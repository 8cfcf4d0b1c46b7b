"""DQN (Mnih et al. 2015) written out flat, CleanRL style: hyperparameters, network, update, state export.

The learner loop owns the data (replay buffer, stream) and calls `update` with a sampled batch; this file
holds everything that is DQN: the TD target (optionally double DQN, optionally n-step), the Huber loss,
the Adam step with gradient clipping, the periodic target-network copy, the exploration schedule
inference is told to use, and the conversion of the whole training state to flat tensors so a
restarted learner continues exactly where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rtrl.models import ModelConfig, QNetwork

ALGORITHM = "dqn"


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
    if config.buffer_size < config.batch_size and "buffer_size" not in problems:
        problems["buffer_size"] = f"at least the batch size ({config.batch_size})"
    return problems


def epsilon_at(env_steps: int, config: DQNConfig) -> float:
    """Linear exploration schedule: epsilon_start at step 0 down to epsilon_end at epsilon_decay_steps."""
    fraction = min(1.0, max(0, env_steps) / config.epsilon_decay_steps)
    return config.epsilon_start + fraction * (config.epsilon_end - config.epsilon_start)


# -- network ---------------------------------------------------------------------------------------


@dataclass
class DQNAgent:
    """The online and target Q-networks, their optimizer and the update counter (what a checkpoint holds)."""

    config: DQNConfig
    model_config: ModelConfig
    q_network: QNetwork
    target_network: QNetwork
    optimizer: torch.optim.Adam
    updates: int = 0


def make_agent(config: DQNConfig, model_config: ModelConfig, device: torch.device | str, seed: int) -> DQNAgent:
    assert not config_problems(config), f"DQN cannot train with {config_problems(config)}"
    torch.manual_seed(seed)
    q_network = QNetwork(model_config).to(device)
    target_network = QNetwork(model_config).to(device)
    target_network.load_state_dict(q_network.state_dict())
    # The target network is never trained; keeping it out of autograd saves memory and time.
    target_network.requires_grad_(False)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=config.learning_rate, eps=config.adam_eps)
    return DQNAgent(config, model_config, q_network, target_network, optimizer)


# -- update ----------------------------------------------------------------------------------------


def td_target(
    agent: DQNAgent,
    b_rewards: torch.Tensor,
    b_next_obs: torch.Tensor,
    b_terminated: torch.Tensor,
    b_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """r + gamma^m * (1 - terminated) * Q_target(s_{t+m}, a*), a* = argmax of Q_target (Q_online for double DQN).

    With n-step returns, `b_rewards` is the discounted sum r_t + gamma r_{t+1} + ... + gamma^{m-1} r_{t+m-1}
    that the replay buffer added up, `b_next_obs` is s_{t+m}, `b_terminated` says whether the episode
    terminated within those m steps, and `b_steps` holds m (1 <= m <= n_step). Without `b_steps`, m = 1.
    """
    with torch.no_grad():
        next_q_target = agent.target_network(b_next_obs)
        if agent.config.double_dqn:
            next_actions = agent.q_network(b_next_obs).argmax(dim=1, keepdim=True)
            next_q = next_q_target.gather(1, next_actions).squeeze(1)
        else:
            next_q = next_q_target.max(dim=1).values
        bootstrap_discount = agent.config.gamma if b_steps is None else agent.config.gamma ** b_steps.float()
        return b_rewards + bootstrap_discount * (1.0 - b_terminated) * next_q


def update(
    agent: DQNAgent,
    b_obs: torch.Tensor,
    b_actions: torch.Tensor,
    b_rewards: torch.Tensor,
    b_next_obs: torch.Tensor,
    b_terminated: torch.Tensor,
    b_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """One gradient step on a batch; returns the Huber loss as a detached tensor.

    The loss stays a tensor so that on a GPU the caller decides when to pay for a device sync. For
    n_step > 1 the batch must carry `b_steps` (see `td_target`).
    """
    assert agent.config.n_step == 1 or b_steps is not None, (
        f"DQN with n_step={agent.config.n_step} needs b_steps, the length of each sampled return; "
        "build the replay buffer with n_step and gamma and pass its batch's steps"
    )
    b_td_target = td_target(agent, b_rewards, b_next_obs, b_terminated, b_steps)
    b_q = agent.q_network(b_obs).gather(1, b_actions.long().unsqueeze(1)).squeeze(1)
    loss = F.smooth_l1_loss(b_q, b_td_target)

    agent.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(agent.q_network.parameters(), agent.config.max_grad_norm)
    agent.optimizer.step()

    agent.updates += 1
    if agent.updates % agent.config.target_network_frequency == 0:
        agent.target_network.load_state_dict(agent.q_network.state_dict())
    return loss.detach()


# -- training state as flat tensors (safetensors) ------------------------------------------------

_TARGET_PREFIX = "target_network."
_ADAM_PREFIX = "adam."
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


def policy_weights(agent: DQNAgent) -> dict[str, torch.Tensor]:
    """The online network's weights: what inference serves."""
    return {name: tensor.detach() for name, tensor in agent.q_network.state_dict().items()}


def export_learner_state(agent: DQNAgent) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Target network and Adam moments as flat tensors, plus the JSON-able counters.

    Adam state is keyed by parameter name (`adam.<param>.exp_avg`, `.exp_avg_sq`, `.step`), not by the
    optimizer's positional ids, so a resumed learner maps it back even if parameter order changed.
    """
    tensors = {_TARGET_PREFIX + name: t.detach() for name, t in agent.target_network.state_dict().items()}
    for name, parameter in agent.q_network.named_parameters():
        state = agent.optimizer.state.get(parameter, {})
        for key in _ADAM_KEYS:
            if key in state:
                value = state[key]
                tensors[f"{_ADAM_PREFIX}{name}.{key}"] = (
                    value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
                )
    return tensors, {"updates": agent.updates}


def import_state(
    agent: DQNAgent,
    weights: dict[str, torch.Tensor],
    learner_state: dict[str, torch.Tensor] | None,
    counters: dict[str, Any],
) -> None:
    """Restores what `policy_weights` and `export_learner_state` produced. Raises ValueError when it does not fit.

    Without `learner_state` (a checkpoint published by something other than a learner), the target
    network starts as a copy of the weights and Adam starts fresh.
    """
    try:
        agent.q_network.load_state_dict(weights)
        if learner_state is None:
            agent.target_network.load_state_dict(weights)
        else:
            target = {k[len(_TARGET_PREFIX) :]: v for k, v in learner_state.items() if k.startswith(_TARGET_PREFIX)}
            agent.target_network.load_state_dict(target)
    except RuntimeError as e:  # load_state_dict reports missing/unexpected keys and shape mismatches this way
        raise ValueError(f"checkpoint tensors do not fit the network: {e}") from e
    agent.optimizer.state.clear()
    if learner_state is not None:
        known = {f"{_ADAM_PREFIX}{name}.{key}" for name, _ in agent.q_network.named_parameters() for key in _ADAM_KEYS}
        unknown = sorted(k for k in learner_state if k.startswith(_ADAM_PREFIX) and k not in known)
        if unknown:
            raise ValueError(f"checkpoint has optimizer state for unknown parameters: {', '.join(unknown[:5])}")
        for name, parameter in agent.q_network.named_parameters():
            keys = {key: f"{_ADAM_PREFIX}{name}.{key}" for key in _ADAM_KEYS}
            present = [key for key, full in keys.items() if full in learner_state]
            if not present:
                continue  # parameter never stepped
            if len(present) != len(_ADAM_KEYS):
                raise ValueError(f"checkpoint has incomplete optimizer state for {name}: only {', '.join(present)}")
            exp_avg = learner_state[keys["exp_avg"]]
            exp_avg_sq = learner_state[keys["exp_avg_sq"]]
            if exp_avg.shape != parameter.shape or exp_avg_sq.shape != parameter.shape:
                raise ValueError(
                    f"checkpoint optimizer state for {name} has shape {list(exp_avg.shape)}, "
                    f"the parameter has {list(parameter.shape)}"
                )
            agent.optimizer.state[parameter] = {
                # Adam keeps `step` as a CPU float tensor unless it is capturable; match that.
                "step": learner_state[keys["step"]].detach().to("cpu", torch.float32).clone(),
                "exp_avg": exp_avg.detach().to(parameter.device, parameter.dtype).clone(),
                "exp_avg_sq": exp_avg_sq.detach().to(parameter.device, parameter.dtype).clone(),
            }
    updates = counters.get("updates", 0)
    if not isinstance(updates, int) or updates < 0:
        raise ValueError(f"checkpoint counter updates={updates!r} is not a non-negative integer")
    agent.updates = updates
