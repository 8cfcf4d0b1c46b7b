"""The learner's settings, read once from RTRL_* environment variables into a frozen object.

Every hyperparameter is also a variable: RTRL_<ALGORITHM>_<FIELD_NAME_UPPER> for each algorithm in
services/learner/algorithms (e.g. RTRL_DQN_LEARNING_RATE, RTRL_PPO_EPOCHS), mapped generically from the
fields of its config dataclass, so a new hyperparameter or algorithm needs no settings code. Every
algorithm's config is read and checked whichever runs, so a bad value fails at start rather than when
someone switches algorithm.
"""

from __future__ import annotations

import os
import socket
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rtrl.config import (
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_HOST,
    DEFAULT_LEARNER_PORT,
    DEFAULT_STREAM,
    METRICS_DISABLED,
    PREFIX,
    SettingsError,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_metrics_port,
    env_str,
)
from rtrl.models import env_model
from rtrl.redis_client import env_redis_url
from rtrl.security import SecuritySettings
from services.learner.algorithms import ALGORITHMS, DEFAULT_ALGORITHM

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CONSUMER_GROUP = "learner"
DEFAULT_CHECKPOINT_EVERY_UPDATES = 100
DEFAULT_CHECKPOINT_EVERY_S = 1.0
DEFAULT_CHECKPOINT_KEEP = 5
DEFAULT_CHECKPOINT_STATE_INTERVAL_S = 60.0
MODES = ("async", "sequential")
DEFAULT_SEQUENTIAL_UPDATES = 1
DEFAULT_TORCH_THREADS = 1
DEFAULT_DEVICE = "auto"
DEFAULT_SEED = 0
DEFAULT_NICE = 10
DEFAULT_MAX_POLICY_LAG_VERSIONS = 0
DEFAULT_MAX_LAG_ENTRIES = 2000
DEFAULT_TENSORBOARD_INTERVAL_S = 1.0


def default_consumer_name() -> str:
    return f"learner-{socket.gethostname()}"


@dataclass(frozen=True)
class LearnerSettings:
    """Everything the learner service is configured with."""

    host: str = DEFAULT_HOST
    """Address the gRPC server binds (RTRL_LEARNER_HOST)."""
    port: int = DEFAULT_LEARNER_PORT
    """gRPC port; 0 picks a free one (RTRL_LEARNER_PORT)."""
    metrics_port: int = METRICS_DISABLED
    """Prometheus /metrics on `host` (RTRL_LEARNER_METRICS_PORT; 0 picks a free port; unset or -1: off)."""
    tensorboard_dir: str = ""
    """Directory for TensorBoard event files: losses, returns, lag, throughput, hyperparameters
    (RTRL_LEARNER_TENSORBOARD_DIR; empty: none are written)."""
    tensorboard_interval_s: float = DEFAULT_TENSORBOARD_INTERVAL_S
    """Seconds between two TensorBoard samples of the learner's status (RTRL_LEARNER_TENSORBOARD_INTERVAL_S)."""
    redis_url: str = DEFAULT_REDIS_URL
    """Redis holding the transition stream (RTRL_REDIS_URL)."""
    stream: str = DEFAULT_STREAM
    """Redis stream the gateways publish transitions to (RTRL_STREAM)."""
    consumer_group: str = DEFAULT_CONSUMER_GROUP
    """Consumer group of the learner on the stream (RTRL_CONSUMER_GROUP)."""
    consumer_name: str = field(default_factory=default_consumer_name)
    """This learner's consumer name in the group; a restart under the same name re-reads what it had not
    acknowledged (RTRL_CONSUMER_NAME, default learner-<hostname>)."""
    checkpoint_dir: Path = Path(DEFAULT_CHECKPOINT_DIR)
    """Directory checkpoints are published to and resumed from (RTRL_CHECKPOINT_DIR)."""
    checkpoint_every_updates: int = DEFAULT_CHECKPOINT_EVERY_UPDATES
    """A checkpoint is published every this many updates (RTRL_CHECKPOINT_EVERY_UPDATES)."""
    checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S
    """A checkpoint is also published after an update this many seconds after the last publication, so a
    slow learner (a big network, a capped replay ratio) never leaves acting on a policy far behind it;
    0: only every checkpoint_every_updates (RTRL_CHECKPOINT_EVERY_S)."""
    checkpoint_keep: int = DEFAULT_CHECKPOINT_KEEP
    """Published versions kept on disk, at least 2 (RTRL_CHECKPOINT_KEEP)."""
    checkpoint_state_interval_s: float = DEFAULT_CHECKPOINT_STATE_INTERVAL_S
    """Seconds between two checkpoints that carry the learner's state (optimizer, target network); the
    checkpoints between carry only the policy weights and name the last state written. The final
    checkpoint of a stop always carries it. 0: every checkpoint does (RTRL_CHECKPOINT_STATE_INTERVAL_S)."""
    algorithm: str = DEFAULT_ALGORITHM
    """Learning algorithm, a name in services/learner/algorithms: "dqn", "vtrace" or "ppo" (RTRL_ALGORITHM)."""
    model_arch: str = ""
    """Network torso: "nature_cnn", "impala_cnn", "mlp", or "" for rtrl's choice by observation shape (a
    Nature CNN for images, an MLP for vectors). Written into every checkpoint; replicas build from that
    (RTRL_MODEL_ARCH)."""
    model_width: int = 1
    """Channel multiplier k of impala_cnn: 1, 7, 29 give about 1M, 10M, 100M parameters (RTRL_MODEL_WIDTH)."""
    torch_threads: int = DEFAULT_TORCH_THREADS
    """CPU threads torch may use (RTRL_TORCH_THREADS)."""
    device: str = DEFAULT_DEVICE
    """"auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N" (RTRL_LEARNER_DEVICE)."""
    seed: int = DEFAULT_SEED
    """Seeds network initialisation and replay sampling (RTRL_SEED)."""
    nice: int = DEFAULT_NICE
    """CPU niceness added to the learner process (RTRL_LEARNER_NICE, 0-19): acting and inference get the
    cores first when the machine is contended, learning takes what is left and never delays an action."""
    mode: str = "async"
    """"async": train without pause beside acting; "sequential": consume the stream but train only when a
    gateway calls Train, the act -> learn -> act baseline (RTRL_LEARNER_MODE)."""
    sequential_updates: int = DEFAULT_SEQUENTIAL_UPDATES
    """Updates per Train call that does not say how many (RTRL_SEQUENTIAL_UPDATES)."""
    hyperparameters: dict[str, Any] = field(
        default_factory=lambda: {name: algorithm.config_class() for name, algorithm in ALGORITHMS.items()}
    )
    """Each algorithm's config dataclass by name (RTRL_<ALGORITHM>_<FIELD>); `config` is the chosen one's."""
    max_policy_lag_versions: int = DEFAULT_MAX_POLICY_LAG_VERSIONS
    """Fresh transitions chosen more than this many checkpoint versions ago are acknowledged and dropped,
    not trained on; 0 keeps all (RTRL_MAX_POLICY_LAG_VERSIONS)."""
    max_lag_entries: int = DEFAULT_MAX_LAG_ENTRIES
    """When more than this many stream entries wait undelivered, the learner jumps to the stream's newest
    entry and counts what it skipped, so it trains on current data instead of an ever older backlog;
    0 never skips (RTRL_LEARNER_MAX_LAG_ENTRIES)."""
    security: SecuritySettings = field(default_factory=SecuritySettings)
    """TLS, token and message size limit of the server (RTRL_TLS_*, RTRL_AUTH_TOKEN,
    RTRL_GRPC_MAX_MESSAGE_BYTES; rtrl/security.py)."""

    @property
    def config(self) -> Any:
        """The hyperparameters of the algorithm that runs."""
        return self.hyperparameters[self.algorithm]

    def with_config(self, config: Any) -> LearnerSettings:
        """These settings with `config` as its algorithm's hyperparameters (and that algorithm chosen)."""
        name = next(name for name, algorithm in ALGORITHMS.items() if isinstance(config, algorithm.config_class))
        return replace(self, algorithm=name, hyperparameters={**self.hyperparameters, name: config})

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> LearnerSettings:
        """Reads the settings; raises SettingsError with a sentence naming the variable to fix."""
        port = env_int(env, "LEARNER_PORT", DEFAULT_LEARNER_PORT, minimum=0)
        if port > 65535:
            raise SettingsError(f"{PREFIX}LEARNER_PORT={port} is not a TCP port; set it to 0..65535.")
        redis_url = env_redis_url(env, DEFAULT_REDIS_URL)
        device = env_str(env, "LEARNER_DEVICE", DEFAULT_DEVICE).lower()
        if not _is_device(device):
            raise SettingsError(f"{PREFIX}LEARNER_DEVICE={device!r} is not valid; set it to auto, cpu, cuda or cuda:N.")
        model_arch, model_width = env_model(env)
        return cls(
            host=env_str(env, "LEARNER_HOST", DEFAULT_HOST),
            port=port,
            metrics_port=env_metrics_port(env, "LEARNER_METRICS_PORT"),
            tensorboard_dir=env_str(env, "LEARNER_TENSORBOARD_DIR", ""),
            tensorboard_interval_s=env_float(
                env, "LEARNER_TENSORBOARD_INTERVAL_S", DEFAULT_TENSORBOARD_INTERVAL_S, minimum=0.05
            ),
            redis_url=redis_url,
            stream=env_str(env, "STREAM", DEFAULT_STREAM),
            consumer_group=env_str(env, "CONSUMER_GROUP", DEFAULT_CONSUMER_GROUP),
            consumer_name=env_str(env, "CONSUMER_NAME", default_consumer_name()),
            checkpoint_dir=Path(env_str(env, "CHECKPOINT_DIR", DEFAULT_CHECKPOINT_DIR)),
            checkpoint_every_updates=env_int(
                env, "CHECKPOINT_EVERY_UPDATES", DEFAULT_CHECKPOINT_EVERY_UPDATES, minimum=1
            ),
            checkpoint_every_s=env_float(env, "CHECKPOINT_EVERY_S", DEFAULT_CHECKPOINT_EVERY_S, minimum=0.0),
            checkpoint_keep=env_int(env, "CHECKPOINT_KEEP", DEFAULT_CHECKPOINT_KEEP, minimum=2),
            checkpoint_state_interval_s=env_float(
                env, "CHECKPOINT_STATE_INTERVAL_S", DEFAULT_CHECKPOINT_STATE_INTERVAL_S, minimum=0.0
            ),
            algorithm=env_choice(env, "ALGORITHM", DEFAULT_ALGORITHM, tuple(ALGORITHMS)),
            model_arch=model_arch,
            model_width=model_width,
            torch_threads=env_int(env, "TORCH_THREADS", DEFAULT_TORCH_THREADS, minimum=1),
            device=device,
            seed=env_int(env, "SEED", DEFAULT_SEED),
            nice=env_int(env, "LEARNER_NICE", DEFAULT_NICE, minimum=0),
            mode=env_choice(env, "LEARNER_MODE", "async", MODES),
            sequential_updates=env_int(env, "SEQUENTIAL_UPDATES", DEFAULT_SEQUENTIAL_UPDATES, minimum=1),
            hyperparameters={
                name: config_from_env(env, algorithm.config_class, f"{name.upper()}_")
                for name, algorithm in ALGORITHMS.items()
            },
            max_policy_lag_versions=env_int(env, "MAX_POLICY_LAG_VERSIONS", DEFAULT_MAX_POLICY_LAG_VERSIONS, minimum=0),
            max_lag_entries=env_int(env, "LEARNER_MAX_LAG_ENTRIES", DEFAULT_MAX_LAG_ENTRIES, minimum=0),
            security=SecuritySettings.from_env(env),
        )


def _is_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    kind, _, index = device.partition(":")
    return kind == "cuda" and index.isdigit()


def config_from_env(env: Mapping[str, str], config_class: type, prefix: str) -> Any:
    """`config_class` with every field overridable as RTRL_<prefix><FIELD>, parsed by the field's type,
    then checked by the config's own `problems()` (the first problem names its variable)."""
    hints = typing.get_type_hints(config_class)
    values: dict[str, Any] = {}
    for f in fields(config_class):
        name = prefix + f.name.upper()
        kind = hints[f.name]
        default: Any = f.default
        if kind is bool:
            values[f.name] = env_bool(env, name, bool(default))
        elif kind is int:
            values[f.name] = env_int(env, name, int(default))
        elif kind is float:
            values[f.name] = env_float(env, name, float(default))
        else:  # a new field of another type needs a parser here
            raise TypeError(f"{config_class.__name__}.{f.name} has type {kind}, which has no environment parser")
    config = config_class(**values)
    problems = config.problems()
    if problems:
        field_name, expected = next(iter(problems.items()))
        name = f"{PREFIX}{prefix}{field_name.upper()}"
        raise SettingsError(f"{name}={getattr(config, field_name)!r} is not valid; set it to {expected}.")
    return config
