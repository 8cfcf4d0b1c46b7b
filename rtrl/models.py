"""Policy networks shared by the learner (which trains them) and inference (which serves them).

A checkpoint's metadata carries the `ModelConfig` as JSON, so a replica rebuilds exactly the network
the learner published without any code travelling with the weights. Its `head` says which network
that is: a `QNetwork` (one value per action, DQN) or an `ActorCritic` (policy logits and a state
value, V-trace and PPO); both share the same torsos, so arch and width mean the same for either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from rtrl.config import MODEL_ARCHS

ARCHS = MODEL_ARCHS
# The ImpalaCNN's hidden layer in Espeholt et al. 2018 (and what brings k=1/7/29 to about 1M/10M/100M
# parameters on 84x84 inputs; the Nature CNN's 512 would double the small model).
IMPALA_HIDDEN_SIZE = 256
# Channels of the ImpalaCNN's three stages at width 1; width k multiplies each.
IMPALA_STAGE_CHANNELS = (16, 32, 32)
# What a network outputs: "q" one value per action (QNetwork), "actor_critic" policy logits and a
# state value (ActorCritic). Each learning algorithm names the one it trains (rtrl/services/learner/algorithms).
HEADS = ("q", "actor_critic")
# Model size bounds (ModelConfig.validate): Atari has 18 actions, a downscaled frame stack is 4x84x84.
MAX_ACTION_COUNT = 4096
MAX_MLP_INPUTS = 65_536
MAX_IMAGE_SIDE = 512


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network: stored in every checkpoint's metadata."""

    arch: str
    """"nature_cnn" for image stacks [C, H, W] (Mnih et al. 2015), "impala_cnn" for image stacks at a
    chosen size (Espeholt et al. 2018), "mlp" for flat vectors."""
    observation_shape: tuple[int, ...]
    """Shape of one observation, without the batch dimension."""
    action_count: int
    """Number of discrete actions (one output per action)."""
    hidden_size: int = 512
    """Width of the last hidden layer."""
    width: int = 1
    """Channel multiplier k of impala_cnn (16k, 32k, 32k channels); the other archs have one size and need 1."""
    head: str = "q"
    """"q" for a QNetwork (DQN), "actor_critic" for an ActorCritic (V-trace, PPO); see `build_model`."""

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
                # Configs published before impala_cnn existed have no width; they are all width 1.
                width=int(data.get("width", 1)),
                # Likewise, configs published before actor-critic networks existed are all Q-networks.
                head=str(data.get("head", "q")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"model config {data!r} is incomplete or malformed: {e}") from e
        config.validate()
        return config

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model arch {self.arch!r} is unknown; use one of {', '.join(ARCHS)}")
        if self.head not in HEADS:
            raise ValueError(f"model head {self.head!r} is unknown; use one of {', '.join(HEADS)}")
        if self.action_count < 1:
            raise ValueError("a model needs at least one action")
        # Bounds on what a request may make a replica build (a fresh policy is built for the first
        # request's game): far above any game's needs, far below what would exhaust memory.
        if self.action_count > MAX_ACTION_COUNT:
            raise ValueError(f"{self.action_count} actions is more than the {MAX_ACTION_COUNT} a model may have")
        if not self.observation_shape or min(self.observation_shape) < 1:
            raise ValueError(f"observation shape {list(self.observation_shape)} needs at least one element per axis")
        if self.arch == "mlp" and math.prod(self.observation_shape) > MAX_MLP_INPUTS:
            raise ValueError(
                f"an mlp takes at most {MAX_MLP_INPUTS} inputs, got {math.prod(self.observation_shape)} "
                f"({list(self.observation_shape)}); downscale the observation or use a CNN on [channels, height, width]"
            )
        if len(self.observation_shape) == 3 and max(self.observation_shape) > MAX_IMAGE_SIDE:
            raise ValueError(
                f"observations shaped {list(self.observation_shape)} exceed {MAX_IMAGE_SIDE} channels or pixels "
                "per side; downscale them (RTRL_OBS_WIDTH / RTRL_OBS_HEIGHT)"
            )
        if self.width < 1:
            raise ValueError(f"width must be at least 1, got {self.width}")
        if self.width != 1 and self.arch != "impala_cnn":
            raise ValueError(f"width {self.width} only applies to impala_cnn; {self.arch} has one size, use width 1")
        if self.arch == "impala_cnn" and len(self.observation_shape) != 3:
            raise ValueError(
                f"impala_cnn needs observations shaped [channels, height, width], got {list(self.observation_shape)}"
            )
        if self.arch == "nature_cnn" and (len(self.observation_shape) != 3 or min(self.observation_shape[1:]) < 36):
            raise ValueError(
                f"nature_cnn needs observations shaped [channels, height, width] of at least 36x36 pixels, "
                f"got {list(self.observation_shape)}"
            )


class ResidualBlock(nn.Module):
    """relu-conv-relu-conv plus the input: the ImpalaCNN's residual block (channels unchanged)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


def impala_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """One ImpalaCNN stage: conv 3x3, max-pool 3 stride 2 (halves height and width), two residual blocks."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),
        ResidualBlock(out_channels),
        ResidualBlock(out_channels),
    )


def pooled_size(size: int) -> int:
    """Height or width after an ImpalaCNN stage's max-pool (kernel 3, stride 2, padding 1)."""
    return (size + 2 * 1 - 3) // 2 + 1


def build_torso(config: ModelConfig) -> tuple[nn.Module, int]:
    """The feature extractor `config.arch` names, and the size of the flat features it outputs."""
    if config.arch == "nature_cnn":
        channels = config.observation_shape[0]
        torso: nn.Module = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = torso(torch.zeros(1, *config.observation_shape)).shape[1]
        return torso, flat
    if config.arch == "impala_cnn":
        stages: list[nn.Module] = []
        in_channels = config.observation_shape[0]
        for channels in IMPALA_STAGE_CHANNELS:
            stages.append(impala_stage(in_channels, channels * config.width))
            in_channels = channels * config.width
        # Worked out rather than measured with a zero batch, which through a width-29 torso costs seconds.
        height, width = config.observation_shape[1:]
        for _ in IMPALA_STAGE_CHANNELS:
            height, width = pooled_size(height), pooled_size(width)
        return nn.Sequential(*stages, nn.ReLU(), nn.Flatten()), in_channels * height * width
    flat = 1
    for dim in config.observation_shape:
        flat *= dim
    return nn.Sequential(nn.Flatten(), nn.Linear(flat, 256), nn.ReLU()), 256


def scaled_input(obs: torch.Tensor) -> torch.Tensor:
    """uint8 images scaled to [0, 1]; anything else as float."""
    return obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()


class QNetwork(nn.Module):
    """Maps an observation batch to one value per action. uint8 images are scaled to [0, 1] inside."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.torso, flat = build_torso(config)
        self.head = nn.Sequential(
            nn.Linear(flat, config.hidden_size), nn.ReLU(), nn.Linear(config.hidden_size, config.action_count)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(scaled_input(obs)))


class ActorCritic(nn.Module):
    """Maps an observation batch to policy logits [N, actions] and a state value [N] (Espeholt et al. 2018).

    The torso and one hidden layer are shared by the policy and the value, as in IMPALA's network;
    uint8 images are scaled to [0, 1] inside.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.torso, flat = build_torso(config)
        self.core = nn.Sequential(nn.Linear(flat, config.hidden_size), nn.ReLU())
        self.policy_logits = nn.Linear(config.hidden_size, config.action_count)
        self.baseline = nn.Linear(config.hidden_size, 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.core(self.torso(scaled_input(obs)))
        return self.policy_logits(hidden), self.baseline(hidden).squeeze(-1)


def build_model(config: ModelConfig) -> QNetwork | ActorCritic:
    """The network a config describes: its `head` picks QNetwork or ActorCritic."""
    config.validate()
    return ActorCritic(config) if config.head == "actor_critic" else QNetwork(config)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_model_config(
    observation_shape: tuple[int, ...], action_count: int, arch: str = "", width: int = 1, head: str = "q"
) -> ModelConfig:
    """The network rtrl trains for an observation shape.

    `arch` "" picks a Nature CNN for image stacks and an MLP otherwise; "impala_cnn" gets the paper's
    hidden size of 256 and channel multiplier `width` (1, 7, 29: about 1M, 10M, 100M parameters on
    4x84x84). `head` is "q" (DQN) or "actor_critic" (V-trace, PPO). Raises ValueError for a combination no
    network fits.
    """
    if not arch:
        arch = "nature_cnn" if len(observation_shape) == 3 else "mlp"
    hidden_size = IMPALA_HIDDEN_SIZE if arch == "impala_cnn" else ModelConfig.hidden_size
    config = ModelConfig(
        arch=arch,
        observation_shape=tuple(observation_shape),
        action_count=action_count,
        hidden_size=hidden_size,
        width=width,
        head=head,
    )
    config.validate()
    return config
