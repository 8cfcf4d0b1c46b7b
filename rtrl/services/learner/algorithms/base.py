"""The interface between the learner loop (loop.py) and a learning algorithm, and the sources it learns from.

An algorithm is one flat file in this folder holding one class that satisfies `Algorithm`: its
hyperparameters, its networks and optimizer, its data source and its update. The loop owns everything
else (the stream, checking transitions, checkpoints, metrics) and calls an algorithm in this order:

    algorithm = ALGORITHMS[name](config, model_config, device, seed)
    source = algorithm.make_source(observation_shape, observation_dtype, seed)
    source.add(transition)                        # for every transition the stream delivers
    if algorithm.ready(source):
        metrics = algorithm.update(algorithm.sample(source))

Which observation an action belongs to. A transition's action was computed from the observation of
frame `action_obs_frame`: usually the step's own, but an earlier step's when a reply missed its step
and served the next one (with a lead shorter than the round trip, every reply does), and a later
step's when a reply overtook. The sources pair each step with that observation, its decision
observation, and count the steps whose decision observation they cannot find as unpaired; the
algorithms evaluate their policy on it (the value of a state stays on the step's own observation).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from rtrl.models import ModelConfig
from rtrl.transitions import Transition


class Source(Protocol):
    """Where an algorithm's transitions go: a replay of transitions (replay.py) or of unrolls (trajectories.py)."""

    observation_dtype: np.dtype

    def __len__(self) -> int:
        """Transitions (or unrolls) held for sampling."""
        ...

    def accepts(self, transition: Transition) -> bool:
        """Whether `transition`'s observation fits (shape and dtype)."""
        ...

    def add(self, transition: Transition) -> None: ...

    @property
    def unpaired(self) -> int:
        """Steps never trained on: no successor (a truncation, a gap) or no decision observation found."""
        ...


class Algorithm(Protocol):
    """A learning algorithm as the loop sees it; each file in this folder has one class that satisfies it."""

    name: ClassVar[str]
    """RTRL_ALGORITHM's value; also written into every checkpoint."""
    head: ClassVar[str]
    """The network it trains and publishes (rtrl.models.HEADS): "q" or "actor_critic". Inference serves a
    fresh policy of this head before the first checkpoint."""
    config_class: ClassVar[type]
    """Its hyperparameter dataclass, whose `problems()` names the fields it cannot train with; every field is
    also a setting RTRL_<NAME>_<FIELD>."""

    config: Any
    model_config: ModelConfig
    updates: int
    """Gradient steps taken, resumed across restarts."""

    def __init__(self, config: Any, model_config: ModelConfig, device: torch.device | str, seed: int) -> None: ...

    def make_source(self, observation_shape: tuple[int, ...], observation_dtype: np.dtype, seed: int) -> Source: ...

    def ready(self, source: Any) -> bool:
        """Whether `source` holds what the next update needs."""
        ...

    def sample(self, source: Any) -> Any:
        """The next batch (numpy arrays) from `source`."""
        ...

    def update(self, batch: Any) -> dict[str, torch.Tensor]:
        """One gradient step on `batch`; returns detached scalar metrics, "loss" among them. Tensors rather
        than floats, so that on a GPU the caller decides when to pay for a device sync."""
        ...

    def wants_publication(self) -> bool:
        """Whether acting should use the policy of the update just made at once, before the next checkpoint is
        due (RTRL_CHECKPOINT_EVERY_UPDATES): true after PPO's last pass over a batch, whose next batch is to
        be collected with it."""
        ...

    @staticmethod
    def exploration(config: Any, env_steps: int) -> float:
        """The epsilon a Q-network acts with after `env_steps` steps (0 for a policy that samples itself)."""
        ...

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """The network inference serves."""
        ...

    def learner_state(self) -> dict[str, torch.Tensor]:
        """Everything else a restart needs to continue exactly (target network, optimizer), as flat tensors."""
        ...

    def load_state(
        self, weights: dict[str, torch.Tensor], learner_state: dict[str, torch.Tensor] | None, updates: int
    ) -> None:
        """Restores what `policy_weights` and `learner_state` gave; raises ValueError when it does not fit.
        Without `learner_state` (a checkpoint that carries only weights) the optimizer starts fresh."""
        ...


def decision_rows(b_all: torch.Tensor, b_decision_index: torch.Tensor) -> torch.Tensor:
    """The rows of time-major `b_all` ([T + 1, B, ...], one per observation of an unroll) at each step's
    decision index ([T, B]): [T, B, ...]. Index -1 (no decision observation) gives row 0; such steps are
    masked out by the caller."""
    index = b_decision_index.clamp(min=0)
    columns = torch.arange(index.shape[1], device=index.device).expand_as(index)
    return b_all[index, columns]
