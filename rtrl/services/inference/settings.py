"""Settings of an inference replica, read once at start from `RTRL_*` environment variables.

`SETTINGS` declares every variable (docs/settings.md lists them). An invalid value fails the start with a
SettingsError whose message names the variable and what to set.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from rtrl.config import (
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_HOST,
    DEFAULT_INFERENCE_PORT,
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
from rtrl.registry import DEFAULT_REPLICA_REGISTRY
from rtrl.security import SecuritySettings
from rtrl.services.learner.settings import ALGORITHM_NAMES, DEFAULT_ALGORITHM
from rtrl.settings import check_environment

DEFAULT_CHECKPOINT_POLL_S = 0.1
# Replicas of a pool load a new checkpoint at random times within this window rather than all at once
# (rtrl/checkpoints.py, CheckpointWatcher, says what that bought).
DEFAULT_CHECKPOINT_LOAD_SPREAD_S = 0.4
DEFAULT_DEVICE = "auto"
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEFAULT_TORCH_THREADS = 1
DEFAULT_SEED = 0
DEFAULT_EPSILON_START = 1.0
# Every call waiting for a batch holds a gRPC worker thread, so the pool bounds how full a batch can
# get; threads that wait cost little, so the default leaves room for several gateways' calls.
DEFAULT_WORKERS = 16
DEFAULT_MAX_BATCH_SIZE = 8
# No artificial wait by default: calls that queue while a forward pass runs are batched anyway, and
# with one gateway (one call at a time) any wait would be pure added latency on every decision.
DEFAULT_MAX_WAIT_MS = 0.0
DEFAULT_MODEL_WIDTH = 1
# Hot reload must happen within 1 s of publication, so a slower poll is refused at start.
MAX_CHECKPOINT_POLL_S = 1.0
MAX_PORT = 65535
ACT_SOCKET_OFF = -1

SETTINGS = SettingsTable(
    Setting("INFERENCE_HOST", str, DEFAULT_HOST, "Address the gRPC server listens on."),
    Setting(
        "INFERENCE_PORT", int, DEFAULT_INFERENCE_PORT, "Port the gRPC server listens on; 0 picks a free one.", minimum=0
    ),
    Setting(
        "INFERENCE_ACT_SOCKET_PORT",
        int,
        0,
        "Port of the act socket on RTRL_INFERENCE_HOST, the gateway's faster way to ask for actions; 0: a free one "
        "(GetStatus names it), -1: none.",
        minimum=ACT_SOCKET_OFF,
    ),
    Setting(
        "INFERENCE_METRICS_PORT",
        int,
        METRICS_DISABLED,
        "Prometheus /metrics port on the replica's host (docs/metrics.md); 0 picks a free one, -1 turns it off.",
    ),
    Setting(
        "REPLICA_ID", str, "", "Name of this replica in logs, metrics and status.", default_text="<hostname>:<port>"
    ),
    Setting(
        "CHECKPOINT_DIR",
        str,
        DEFAULT_CHECKPOINT_DIR,
        "Directory the learner publishes checkpoints into (read-only is enough).",
    ),
    Setting(
        "CHECKPOINT_POLL_S",
        float,
        DEFAULT_CHECKPOINT_POLL_S,
        f"Seconds between looks at latest.json for a newer checkpoint (above 0, at most {MAX_CHECKPOINT_POLL_S:g}).",
    ),
    Setting(
        "CHECKPOINT_LOAD_SPREAD_S",
        float,
        DEFAULT_CHECKPOINT_LOAD_SPREAD_S,
        "A new checkpoint is loaded a random time up to this long after it is seen, so a pool's replicas do not all "
        f"load at once (poll + spread at most {MAX_CHECKPOINT_POLL_S:g} s).",
        minimum=0.0,
    ),
    Setting(
        "INFERENCE_DEVICE",
        str,
        DEFAULT_DEVICE,
        "Where the policy runs; auto: cuda when there is one.",
        choices=DEVICE_CHOICES,
    ),
    Setting(
        "TORCH_THREADS",
        int,
        DEFAULT_TORCH_THREADS,
        "Intra-op threads of torch; 1 leaves the cores to the others.",
        minimum=1,
    ),
    Setting(
        "SEED",
        int,
        DEFAULT_SEED,
        "Seeds the fresh policy's weights (the same on every replica) and exploration.",
        minimum=0,
    ),
    Setting(
        "EPSILON_START",
        float,
        DEFAULT_EPSILON_START,
        "Exploration rate of the fresh policy served before any checkpoint (DQN); checkpoints carry their own.",
    ),
    Setting(
        "INFERENCE_WORKERS",
        int,
        DEFAULT_WORKERS,
        "gRPC threads, so calls served at once; at least RTRL_INFERENCE_MAX_BATCH; each open ActStream holds one, and "
        "2 are kept from streams.",
        minimum=1,
    ),
    Setting(
        "INFERENCE_MAX_BATCH",
        int,
        DEFAULT_MAX_BATCH_SIZE,
        "Most calls one forward pass answers; 1 turns batching off.",
        minimum=1,
    ),
    Setting(
        "INFERENCE_MAX_WAIT_MS",
        float,
        DEFAULT_MAX_WAIT_MS,
        "How long a batch's first call may wait for company; 0: batch only what queued while the previous pass ran "
        "(raise it when many gateways share a pool).",
        minimum=0.0,
    ),
    Setting(
        "MODEL_ARCH",
        str,
        "",
        "Network of the fresh policy before any checkpoint (the learner's setting); \"\": rtrl's choice.",
        choices=MODEL_ARCH_CHOICES,
    ),
    Setting(
        "MODEL_WIDTH",
        int,
        DEFAULT_MODEL_WIDTH,
        "Channel multiplier of impala_cnn: 1, 7, 29 give about 1M, 12M, 110M parameters.",
        minimum=1,
    ),
    Setting(
        "ALGORITHM",
        str,
        DEFAULT_ALGORITHM,
        "The learner's algorithm, whose head the fresh policy has before any checkpoint; checkpoints are served as "
        "published, whatever it says.",
        choices=ALGORITHM_NAMES,
    ),
    Setting(
        "REDIS_URL",
        str,
        "",
        "Redis to register in for live membership; empty: none (gateways reach the replica by static address only).",
    ),
    Setting("REPLICA_REGISTRY", str, DEFAULT_REPLICA_REGISTRY, "Redis key (a sorted set) the replica heartbeats into."),
    Setting(
        "INFERENCE_ADVERTISE_ADDRESS",
        str,
        "",
        "host:port gateways should dial; empty: host:port, a wildcard host replaced by this host's IP.",
    ),
)


@dataclass(frozen=True)
class InferenceSettings:
    """Everything an inference replica is configured with."""

    host: str = DEFAULT_HOST
    """RTRL_INFERENCE_HOST: address the gRPC server listens on."""
    port: int = DEFAULT_INFERENCE_PORT
    """RTRL_INFERENCE_PORT: port the gRPC server listens on (0 picks a free one)."""
    act_socket_port: int = 0
    """RTRL_INFERENCE_ACT_SOCKET_PORT: port of the act socket on `host` (rtrl/act_socket.py), the gateway's
    faster way to ask for actions (0 picks a free one; -1: none). None is opened with TLS (SECURITY.md)."""
    metrics_port: int = METRICS_DISABLED
    """RTRL_INFERENCE_METRICS_PORT: Prometheus /metrics on `host` (0 picks a free port; unset or -1: off)."""
    replica_id: str = ""
    """RTRL_REPLICA_ID: name of this replica in metrics and status (default "hostname:port").

    Empty means "hostname:port" with the port the server bound."""
    checkpoint_dir: str = DEFAULT_CHECKPOINT_DIR
    """RTRL_CHECKPOINT_DIR: directory the learner publishes checkpoints into."""
    checkpoint_poll_s: float = DEFAULT_CHECKPOINT_POLL_S
    """RTRL_CHECKPOINT_POLL_S: seconds between looks for a newer checkpoint."""
    checkpoint_load_spread_s: float = DEFAULT_CHECKPOINT_LOAD_SPREAD_S
    """RTRL_CHECKPOINT_LOAD_SPREAD_S: a new checkpoint is loaded a random time up to this long after it is seen."""
    device: str = "cpu"
    """RTRL_INFERENCE_DEVICE resolved to "cpu" or "cuda" ("auto" picks cuda when there is one)."""
    torch_threads: int = DEFAULT_TORCH_THREADS
    """RTRL_TORCH_THREADS: intra-op threads of torch; 1 leaves the cores to the other processes."""
    seed: int = DEFAULT_SEED
    """RTRL_SEED: seeds the fresh policy's weights (the same on every replica) and exploration."""
    epsilon_start: float = DEFAULT_EPSILON_START
    """RTRL_EPSILON_START: exploration rate of the fresh policy served before any checkpoint."""
    workers: int = DEFAULT_WORKERS
    """RTRL_INFERENCE_WORKERS: size of the gRPC thread pool (calls served at once); at least max_batch_size."""
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    """RTRL_INFERENCE_MAX_BATCH: most calls answered by one forward pass (1 turns batching off)."""
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    """RTRL_INFERENCE_MAX_WAIT_MS: how long the first call of a batch may wait for company.

    Never longer than its deadline (and the other members') allows."""
    model_arch: str = ""
    """RTRL_MODEL_ARCH, the learner's variable: network of the fresh policy served before any checkpoint ("" =
    rtrl's default). Checkpoints are served as they say; a replica set otherwise logs the difference."""
    model_width: int = DEFAULT_MODEL_WIDTH
    """RTRL_MODEL_WIDTH: channel multiplier of impala_cnn (1, 7, 29: about 1M, 12M, 110M parameters)."""
    algorithm: str = DEFAULT_ALGORITHM
    """RTRL_ALGORITHM, the learner's variable: which network the fresh policy is (its head in
    rtrl/services/learner/algorithms: a Q-network acting epsilon-greedily for dqn, an actor-critic sampling its
    policy for vtrace and ppo). Checkpoints are served as they say."""
    redis_url: str = ""
    """RTRL_REDIS_URL: where to register for live membership; "" registers nowhere."""
    replica_registry: str = DEFAULT_REPLICA_REGISTRY
    """RTRL_REPLICA_REGISTRY: Redis key (a sorted set) the replica heartbeats into."""
    advertise_address: str = ""
    """RTRL_INFERENCE_ADVERTISE_ADDRESS: host:port gateways should dial ("" = host:port, wildcard host
    replaced by this host's IP)."""
    security: SecuritySettings = field(default_factory=SecuritySettings)
    """TLS, token and message size limit of the server (RTRL_TLS_*, RTRL_AUTH_TOKEN,
    RTRL_GRPC_MAX_MESSAGE_BYTES; rtrl/security.py)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> InferenceSettings:
        """Reads the settings; raises SettingsError with a sentence saying what to set."""
        check_environment(env, hyperparameters=True)
        read = partial(SETTINGS.read, env)
        port = read("INFERENCE_PORT")
        if port > MAX_PORT:
            raise SettingsError(f"{PREFIX}INFERENCE_PORT={port} is too large; set it to a port from 0 to {MAX_PORT}.")
        act_socket_port = read("INFERENCE_ACT_SOCKET_PORT")
        if act_socket_port > MAX_PORT:
            raise SettingsError(
                f"{PREFIX}INFERENCE_ACT_SOCKET_PORT={act_socket_port} is too large; set it to a port from 1 to "
                f"{MAX_PORT}, 0 for a free one, or -1 for no act socket."
            )
        poll_s = read("CHECKPOINT_POLL_S")
        if not 0 < poll_s <= MAX_CHECKPOINT_POLL_S:
            raise SettingsError(
                f"{PREFIX}CHECKPOINT_POLL_S={poll_s} is out of range; set it to more than 0 and at most "
                f"{MAX_CHECKPOINT_POLL_S} seconds so that new checkpoints are served within a second."
            )
        load_spread_s = read("CHECKPOINT_LOAD_SPREAD_S")
        if poll_s + load_spread_s > MAX_CHECKPOINT_POLL_S:
            raise SettingsError(
                f"{PREFIX}CHECKPOINT_POLL_S={poll_s} plus {PREFIX}CHECKPOINT_LOAD_SPREAD_S={load_spread_s} is more "
                f"than {MAX_CHECKPOINT_POLL_S} seconds; lower them so that new checkpoints are served within a second."
            )
        epsilon_start = read("EPSILON_START")
        if not 0.0 <= epsilon_start <= 1.0:
            raise SettingsError(
                f"{PREFIX}EPSILON_START={epsilon_start} is not a probability; set it to a number from 0 to 1."
            )
        max_batch_size = read("INFERENCE_MAX_BATCH")
        workers = read("INFERENCE_WORKERS")
        if workers < max_batch_size:
            raise SettingsError(
                f"{PREFIX}INFERENCE_WORKERS={workers} is smaller than {PREFIX}INFERENCE_MAX_BATCH={max_batch_size}, "
                "so a batch could never fill (every waiting call holds a worker); set it to "
                f"{max_batch_size} or more, or lower {PREFIX}INFERENCE_MAX_BATCH."
            )
        model_arch, model_width = checked_model(read("MODEL_ARCH"), read("MODEL_WIDTH"))
        return cls(
            host=read("INFERENCE_HOST"),
            port=port,
            act_socket_port=act_socket_port,
            metrics_port=checked_metrics_port(read("INFERENCE_METRICS_PORT"), "INFERENCE_METRICS_PORT"),
            # With port 0 the port is only known once bound; the server then names the replica itself.
            replica_id=read("REPLICA_ID", f"{socket.gethostname()}:{port}" if port else ""),
            checkpoint_dir=read("CHECKPOINT_DIR"),
            checkpoint_poll_s=poll_s,
            checkpoint_load_spread_s=load_spread_s,
            device=resolve_device(read("INFERENCE_DEVICE")),
            torch_threads=read("TORCH_THREADS"),
            seed=read("SEED"),
            epsilon_start=epsilon_start,
            workers=workers,
            max_batch_size=max_batch_size,
            max_wait_ms=read("INFERENCE_MAX_WAIT_MS"),
            model_arch=model_arch,
            model_width=model_width,
            algorithm=read("ALGORITHM"),
            redis_url=checked_redis_url(read("REDIS_URL")),
            replica_registry=read("REPLICA_REGISTRY"),
            advertise_address=read("INFERENCE_ADVERTISE_ADDRESS"),
            security=SecuritySettings.from_env(env),
        )


def resolve_device(choice: str) -> str:
    """Turns an RTRL_INFERENCE_DEVICE choice into a torch device name, failing early when cuda is missing."""
    # Imported here, not at the top: this module's SETTINGS must load without torch, because every service
    # checks the names it is given against every service's table (rtrl/settings.py), the gateway included.
    import torch

    cuda = torch.cuda.is_available()
    if choice == "auto":
        return "cuda" if cuda else "cpu"
    if choice == "cuda" and not cuda:
        raise SettingsError(
            f"{PREFIX}INFERENCE_DEVICE=cuda but torch sees no CUDA device; set it to cpu or auto, "
            "or run the replica where a GPU is visible."
        )
    return choice
