"""The learner's settings, read once from RTRL_* environment variables into a frozen object.

`SETTINGS` declares every variable but the hyperparameters (docs/settings.md lists them all). Every
hyperparameter is also a variable: RTRL_<ALGORITHM>_<FIELD_NAME_UPPER> for each algorithm in
rtrl/services/learner/algorithms (e.g. RTRL_DQN_LEARNING_RATE, RTRL_PPO_EPOCHS), mapped generically from the
fields of its config dataclass, so a new hyperparameter or algorithm needs no settings code. Every
algorithm's config is read and checked whichever runs, so a bad value fails at start rather than when
someone switches algorithm.

The algorithms import torch, so they are imported where they are used rather than at the top: this
module's SETTINGS and ALGORITHM_NAMES must load without torch, because every service checks the names it
is given against every service's table (rtrl/settings.py), the gateway and the dashboard included.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import socket
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from rtrl.config import (
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_HOST,
    DEFAULT_LEARNER_PORT,
    DEFAULT_STREAM,
    METRICS_DISABLED,
    MODEL_ARCH_CHOICES,
    PREFIX,
    Setting,
    SettingsError,
    SettingsTable,
    checked_metrics_port,
    checked_model,
)
from rtrl.redis_client import checked_redis_url
from rtrl.security import SecuritySettings
from rtrl.settings import check_environment

# The names of the algorithms in rtrl/services/learner/algorithms (its ALGORITHMS registry; a test keeps the two
# the same), for the tables that must load without torch.
ALGORITHM_NAMES = ("dqn", "vtrace", "ppo")
DEFAULT_ALGORITHM = "dqn"
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


def _is_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    kind, _, index = device.partition(":")
    return kind == "cuda" and index.isdigit()


def default_hyperparameters() -> dict[str, Any]:
    """Each algorithm's config dataclass with its defaults, by name."""
    from rtrl.services.learner.algorithms import ALGORITHMS

    return {name: algorithm.config_class() for name, algorithm in ALGORITHMS.items()}


SETTINGS = SettingsTable(
    Setting("LEARNER_HOST", str, DEFAULT_HOST, "Address the gRPC server binds."),
    Setting("LEARNER_PORT", int, DEFAULT_LEARNER_PORT, "gRPC port; 0 picks a free one.", minimum=0),
    Setting(
        "LEARNER_METRICS_PORT",
        int,
        METRICS_DISABLED,
        "Prometheus /metrics port on the learner's host (docs/metrics.md); 0 picks a free one, -1 turns it off.",
    ),
    Setting(
        "LEARNER_TENSORBOARD_DIR",
        str,
        "",
        "Directory for TensorBoard event files (loss, returns, policy lag, throughput, hyperparameters; "
        "docs/metrics.md); empty: none are written.",
    ),
    Setting(
        "LEARNER_TENSORBOARD_INTERVAL_S",
        float,
        DEFAULT_TENSORBOARD_INTERVAL_S,
        "Seconds between two TensorBoard samples of the learner's status, written on a thread of their own.",
        minimum=0.05,
    ),
    Setting("REDIS_URL", str, DEFAULT_REDIS_URL, "Redis holding the transition stream."),
    Setting(
        "STREAM", str, DEFAULT_STREAM, "Redis stream the gateways publish transitions to (entry field transition)."
    ),
    Setting("CONSUMER_GROUP", str, DEFAULT_CONSUMER_GROUP, "Consumer group of the learner on the stream."),
    Setting(
        "CONSUMER_NAME",
        str,
        "",
        "This learner's name in the group; a restart under it first re-reads what it had not acknowledged.",
        default_text="learner-<hostname>",
    ),
    Setting("CHECKPOINT_DIR", str, DEFAULT_CHECKPOINT_DIR, "Directory checkpoints are published to and resumed from."),
    Setting(
        "CHECKPOINT_EVERY_UPDATES",
        int,
        DEFAULT_CHECKPOINT_EVERY_UPDATES,
        "A checkpoint is published every this many updates.",
        minimum=1,
    ),
    Setting(
        "CHECKPOINT_EVERY_S",
        float,
        DEFAULT_CHECKPOINT_EVERY_S,
        "Also publish after an update this long after the last publication, so acting never lags a slow learner by "
        "more; 0: by updates only.",
        minimum=0.0,
    ),
    Setting(
        "CHECKPOINT_KEEP",
        int,
        DEFAULT_CHECKPOINT_KEEP,
        "Published versions kept on disk (and the learner state a kept version names), at least 2.",
        minimum=2,
    ),
    Setting(
        "CHECKPOINT_STATE_INTERVAL_S",
        float,
        DEFAULT_CHECKPOINT_STATE_INTERVAL_S,
        "Seconds between checkpoints that carry the optimizer and target network (3 times the weights' size); 0: "
        "every one does.",
        minimum=0.0,
    ),
    Setting(
        "ALGORITHM",
        str,
        DEFAULT_ALGORITHM,
        "Learning algorithm (rtrl/services/learner/algorithms); a checkpoint directory holds one.",
        choices=ALGORITHM_NAMES,
    ),
    Setting(
        "MODEL_ARCH",
        str,
        "",
        'Network torso, written into every checkpoint; "": a Nature CNN for images, an MLP for vectors.',
        choices=MODEL_ARCH_CHOICES,
    ),
    Setting(
        "MODEL_WIDTH",
        int,
        1,
        "Channel multiplier of impala_cnn: 1, 7, 29 give about 1M, 12M, 110M parameters.",
        minimum=1,
    ),
    Setting("TORCH_THREADS", int, DEFAULT_TORCH_THREADS, "CPU threads torch may use.", minimum=1),
    Setting("LEARNER_DEVICE", str, DEFAULT_DEVICE, "auto (cuda when available, else cpu), cpu, cuda or cuda:N."),
    Setting("SEED", int, DEFAULT_SEED, "Seeds network initialisation and replay sampling."),
    Setting(
        "LEARNER_NICE",
        int,
        DEFAULT_NICE,
        "CPU niceness added to the learner (0-19; 0: none), so that acting gets contended cores first.",
        minimum=0,
    ),
    Setting(
        "LEARNER_MODE",
        str,
        "async",
        "async: train beside acting; sequential: train only when a gateway calls Train (the baseline).",
        choices=MODES,
    ),
    Setting(
        "SEQUENTIAL_UPDATES",
        int,
        DEFAULT_SEQUENTIAL_UPDATES,
        "Updates per Train call that does not say how many (asks for 0).",
        minimum=1,
    ),
    Setting(
        "MAX_POLICY_LAG_VERSIONS",
        int,
        DEFAULT_MAX_POLICY_LAG_VERSIONS,
        "Fresh transitions chosen more than this many checkpoint versions ago are dropped (acknowledged unused); 0 "
        "keeps all.",
        minimum=0,
    ),
    Setting(
        "LEARNER_MAX_LAG_ENTRIES",
        int,
        DEFAULT_MAX_LAG_ENTRIES,
        "Beyond this many undelivered stream entries the learner skips to the newest; 0 never skips.",
        minimum=0,
    ),
)


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
    """Learning algorithm, a name in rtrl/services/learner/algorithms: "dqn", "vtrace" or "ppo" (RTRL_ALGORITHM)."""
    model_arch: str = ""
    """Network torso: "nature_cnn", "impala_cnn", "mlp", or "" for rtrl's choice by observation shape (a
    Nature CNN for images, an MLP for vectors). Written into every checkpoint; replicas build from that
    (RTRL_MODEL_ARCH)."""
    model_width: int = 1
    """Channel multiplier k of impala_cnn: 1, 7, 29 give about 1M, 12M, 110M parameters (RTRL_MODEL_WIDTH)."""
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
    hyperparameters: dict[str, Any] = field(default_factory=default_hyperparameters)
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
        from rtrl.services.learner.algorithms import ALGORITHMS

        name = next(name for name, algorithm in ALGORITHMS.items() if isinstance(config, algorithm.config_class))
        return replace(self, algorithm=name, hyperparameters={**self.hyperparameters, name: config})

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> LearnerSettings:
        """Reads the settings; raises SettingsError with a sentence naming the variable to fix."""
        from rtrl.services.learner.algorithms import ALGORITHMS

        check_environment(env, hyperparameters=True)
        read = partial(SETTINGS.read, env)
        port = read("LEARNER_PORT")
        if port > 65535:
            raise SettingsError(f"{PREFIX}LEARNER_PORT={port} is not a TCP port; set it to 0..65535.")
        redis_url = checked_redis_url(read("REDIS_URL"))
        device = read("LEARNER_DEVICE").lower()
        if not _is_device(device):
            raise SettingsError(f"{PREFIX}LEARNER_DEVICE={device!r} is not valid; set it to auto, cpu, cuda or cuda:N.")
        model_arch, model_width = checked_model(read("MODEL_ARCH"), read("MODEL_WIDTH"))
        return cls(
            host=read("LEARNER_HOST"),
            port=port,
            metrics_port=checked_metrics_port(read("LEARNER_METRICS_PORT"), "LEARNER_METRICS_PORT"),
            tensorboard_dir=read("LEARNER_TENSORBOARD_DIR"),
            tensorboard_interval_s=read("LEARNER_TENSORBOARD_INTERVAL_S"),
            redis_url=redis_url,
            stream=read("STREAM"),
            consumer_group=read("CONSUMER_GROUP"),
            consumer_name=read("CONSUMER_NAME", default_consumer_name()),
            checkpoint_dir=Path(read("CHECKPOINT_DIR")),
            checkpoint_every_updates=read("CHECKPOINT_EVERY_UPDATES"),
            checkpoint_every_s=read("CHECKPOINT_EVERY_S"),
            checkpoint_keep=read("CHECKPOINT_KEEP"),
            checkpoint_state_interval_s=read("CHECKPOINT_STATE_INTERVAL_S"),
            algorithm=read("ALGORITHM"),
            model_arch=model_arch,
            model_width=model_width,
            torch_threads=read("TORCH_THREADS"),
            device=device,
            seed=read("SEED"),
            nice=read("LEARNER_NICE"),
            mode=read("LEARNER_MODE"),
            sequential_updates=read("SEQUENTIAL_UPDATES"),
            hyperparameters={
                name: config_from_env(env, algorithm.config_class, f"{name.upper()}_")
                for name, algorithm in ALGORITHMS.items()
            },
            max_policy_lag_versions=read("MAX_POLICY_LAG_VERSIONS"),
            max_lag_entries=read("LEARNER_MAX_LAG_ENTRIES"),
            security=SecuritySettings.from_env(env),
        )


def field_docstrings(config_class: type) -> dict[str, str]:
    """Each field's docstring: the string literal right after its annotated assignment in the class body."""
    [definition] = ast.parse(inspect.getsource(config_class)).body
    assert isinstance(definition, ast.ClassDef)
    docs: dict[str, str] = {}
    for statement, following in zip(definition.body, definition.body[1:], strict=False):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = following.value.value
    return docs


def first_sentence(text: str) -> str:
    """Up to the first period followed by a word ("et al. 2016" does not end a sentence)."""
    flat = " ".join(text.split())
    match = re.match(r"(.+?\.)(\s+[^\d\s]|$)", flat)
    return match.group(1) if match else flat


def hyperparameter_settings(config_class: type, prefix: str) -> SettingsTable:
    """The settings RTRL_<prefix><FIELD> of every field of an algorithm's config dataclass: its type, its
    default, and the first sentence of its docstring as the meaning."""
    hints = typing.get_type_hints(config_class)
    docs = field_docstrings(config_class)
    settings = []
    for f in fields(config_class):
        if hints[f.name] not in (bool, int, float):  # a new field of another type needs a parser in Setting.read
            raise TypeError(
                f"{config_class.__name__}.{f.name} has type {hints[f.name]}, which has no environment parser"
            )
        settings.append(
            Setting(prefix + f.name.upper(), hints[f.name], f.default, first_sentence(docs.get(f.name, "")))
        )
    return SettingsTable(*settings)


def config_from_env(env: Mapping[str, str], config_class: type, prefix: str) -> Any:
    """`config_class` with every field overridable as RTRL_<prefix><FIELD>, parsed by the field's type,
    then checked by the config's own `problems()` (the first problem names its variable)."""
    table = hyperparameter_settings(config_class, prefix)
    config = config_class(**{f.name: table.read(env, prefix + f.name.upper()) for f in fields(config_class)})
    problems = config.problems()
    if problems:
        field_name, expected = next(iter(problems.items()))
        name = f"{PREFIX}{prefix}{field_name.upper()}"
        raise SettingsError(f"{name}={getattr(config, field_name)!r} is not valid; set it to {expected}.")
    return config
