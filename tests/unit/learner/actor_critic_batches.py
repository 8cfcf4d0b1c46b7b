"""Actor-critic test pieces for the learner's unit tests: a tiny network whose outputs are set by hand,
two observations, and one-unroll batches as trajectories.py hands them out."""

from __future__ import annotations

import math

import numpy as np
import torch

from rtrl.models import ActorCritic, ModelConfig
from rtrl.services.learner.trajectories import UnrollBatch

TINY = ModelConfig(arch="mlp", observation_shape=(3,), action_count=2, hidden_size=4, head="actor_critic")
A = np.array([1.0, 0.0, 0.0], dtype=np.float32)
B = np.array([0.0, 1.0, 0.0], dtype=np.float32)


def constant_outputs(network: ActorCritic, logits: list[float], value: float) -> None:
    """Makes `network` answer `logits` and `value` for every observation: zero weights, the outputs as biases."""
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        network.policy_logits.bias.copy_(torch.tensor(logits))
        network.baseline.bias.fill_(value)


def input_dependent(network: ActorCritic) -> None:
    """Makes `network` answer logits (0, ln 3 * obs[0]) and value 0: pi(1 | A) = 0.75, pi(1 | B) = 0.5."""
    constant_outputs(network, [0.0, 0.0], value=0.0)
    torso, core = network.torso[1], network.core[0]
    assert isinstance(torso, torch.nn.Linear) and isinstance(core, torch.nn.Linear)
    with torch.no_grad():
        torso.weight[0, 0] = 1.0  # feature 0 = obs[0]
        core.weight[0, 0] = 1.0  # hidden 0 = feature 0
        network.policy_logits.weight[1, 0] = math.log(3.0)


def one_unroll(
    observations: list[np.ndarray],
    actions: list[int],
    rewards: list[float],
    terminated: list[float],
    behaviour_log_probs: list[float],
    *,
    mask: list[float] | None = None,
    fresh: list[float] | None = None,
    decision_index: list[int] | None = None,
) -> UnrollBatch:
    """A batch of one unroll (B = 1), time-major, as trajectories.py hands it out."""
    steps = len(actions)

    def column(values: list[float] | list[int], dtype: type) -> np.ndarray:
        return np.array(values, dtype=dtype).reshape(steps, 1)

    return UnrollBatch(
        obs=np.stack(observations)[:, None],
        actions=column(actions, np.int64),
        rewards=column(rewards, np.float32),
        terminated=column(terminated, np.float32),
        behaviour_log_probs=column(behaviour_log_probs, np.float32),
        mask=column(mask or [1.0] * steps, np.float32),
        policy_versions=column([0] * steps, np.int64),
        decision_index=column(decision_index or list(range(steps)), np.int64),
        fresh=column(fresh or [1.0] * steps, np.float32),
    )
