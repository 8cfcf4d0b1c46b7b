"""Policy networks shared by the learner (which trains them) and inference (which serves them).

A checkpoint's metadata carries the `ModelConfig` as JSON, so a replica rebuilds exactly the network
the learner published without any code travelling with the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

ARCHS = ("nature_cnn", "mlp")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network: stored in every checkpoint's metadata."""

    arch: str
    """"nature_cnn" for image stacks [C, H, W] (Mnih et al. 2015), "mlp" for flat vectors."""
    observation_shape: tuple[int, ...]
    """Shape of one observation, without the batch dimension."""
    action_count: int
    """Number of discrete actions (one output per action)."""
    hidden_size: int = 512
    """Width of the last hidden layer."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["observation_shape"] = list(self.observation_shape)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        try:
            config = cls(
                arch=str(data["arch"]),
                observation_shape=tuple(int(d) for d in data["observation_shape"]),
                action_count=int(data["action_count"]),
                hidden_size=int(data.get("hidden_size", 512)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"model config {data!r} is incomplete or malformed: {e}") from e
        config.validate()
        return config

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model arch {self.arch!r} is unknown; use one of {', '.join(ARCHS)}")
        if self.action_count < 1:
            raise ValueError("a model needs at least one action")
        if self.arch == "nature_cnn" and (len(self.observation_shape) != 3 or min(self.observation_shape[1:]) < 36):
            raise ValueError(
                f"nature_cnn needs observations shaped [channels, height, width] of at least 36x36 pixels, "
                f"got {list(self.observation_shape)}"
            )


class QNetwork(nn.Module):
    """Maps an observation batch to one value per action. uint8 images are scaled to [0, 1] inside."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if config.arch == "nature_cnn":
            channels = config.observation_shape[0]
            self.torso: nn.Module = nn.Sequential(
                nn.Conv2d(channels, 32, 8, stride=4),
                nn.ReLU(),
                nn.Conv2d(32, 64, 4, stride=2),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1),
                nn.ReLU(),
                nn.Flatten(),
            )
            with torch.no_grad():
                flat = self.torso(torch.zeros(1, *config.observation_shape)).shape[1]
        else:
            flat = 1
            for dim in config.observation_shape:
                flat *= dim
            self.torso = nn.Sequential(nn.Flatten(), nn.Linear(flat, 256), nn.ReLU())
            flat = 256
        self.head = nn.Sequential(
            nn.Linear(flat, config.hidden_size), nn.ReLU(), nn.Linear(config.hidden_size, config.action_count)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()
        return self.head(self.torso(x))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_model_config(observation_shape: tuple[int, ...], action_count: int) -> ModelConfig:
    """The network rtrl trains for an observation shape: a Nature CNN for image stacks, an MLP otherwise."""
    arch = "nature_cnn" if len(observation_shape) == 3 else "mlp"
    config = ModelConfig(arch=arch, observation_shape=tuple(observation_shape), action_count=action_count)
    config.validate()
    return config
