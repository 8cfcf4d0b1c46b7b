"""Settings of an inference replica, read once at start from `RTRL_*` environment variables.

An invalid value fails the start with a SettingsError whose message names the variable and what to set.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from rtrl.config import (
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_HOST,
    DEFAULT_INFERENCE_PORT,
    METRICS_DISABLED,
    PREFIX,
    SettingsError,
    env_choice,
    env_float,
    env_int,
    env_metrics_port,
    env_str,
)
from rtrl.models import env_model
from rtrl.redis_client import env_redis_url
from rtrl.registry import DEFAULT_REPLICA_REGISTRY
from rtrl.security import SecuritySettings
from services.learner.algorithms import ALGORITHMS, DEFAULT_ALGORITHM

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
DEFAULT_OCCUPY_MS = 0.0
DEFAULT_MODEL_WIDTH = 1
# Hot reload must happen within 1 s of publication, so a slower poll is refused at start.
MAX_CHECKPOINT_POLL_S = 1.0
MAX_PORT = 65535
ACT_SOCKET_OFF = -1


@dataclass(frozen=True)
class InferenceSettings:
    """Everything an inference replica is configured with."""

    host: str = DEFAULT_HOST
    """RTRL_INFERENCE_HOST: address the gRPC server listens on."""
    port: int = DEFAULT_INFERENCE_PORT
    """RTRL_INFERENCE_PORT: port the gRPC server listens on (0 picks a free one)."""
    act_socket_port: int = 0
    """RTRL_INFERENCE_ACT_SOCKET_PORT: port of the act socket on `host` (rtrl/act_socket.py), the gateway's
    faster way to ask for actions (0 picks a free one; -1: none). None is opened with TLS or a token."""
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
    occupy_ms: float = DEFAULT_OCCUPY_MS
    """RTRL_INFERENCE_OCCUPY_MS: every forward pass holds the replica at least this long (benchmarks).

    Simulates an accelerator busy with a big model by sleeping, so it costs no CPU; 0 turns it off."""
    model_arch: str = ""
    """RTRL_MODEL_ARCH, the learner's variable: network of the fresh policy served before any checkpoint ("" =
    rtrl's default). Checkpoints are served as they say; a replica set otherwise logs the difference."""
    model_width: int = DEFAULT_MODEL_WIDTH
    """RTRL_MODEL_WIDTH: channel multiplier of impala_cnn (1, 7, 29: about 1M, 10M, 100M parameters)."""
    algorithm: str = DEFAULT_ALGORITHM
    """RTRL_ALGORITHM, the learner's variable: which network the fresh policy is (its head in
    services/learner/algorithms: a Q-network acting epsilon-greedily for dqn, an actor-critic sampling its
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
        port = env_int(env, "INFERENCE_PORT", DEFAULT_INFERENCE_PORT, minimum=0)
        if port > MAX_PORT:
            raise SettingsError(f"{PREFIX}INFERENCE_PORT={port} is too large; set it to a port from 0 to {MAX_PORT}.")
        act_socket_port = env_int(env, "INFERENCE_ACT_SOCKET_PORT", 0, minimum=ACT_SOCKET_OFF)
        if act_socket_port > MAX_PORT:
            raise SettingsError(
                f"{PREFIX}INFERENCE_ACT_SOCKET_PORT={act_socket_port} is too large; set it to a port from 1 to "
                f"{MAX_PORT}, 0 for a free one, or -1 for no act socket."
            )
        poll_s = env_float(env, "CHECKPOINT_POLL_S", DEFAULT_CHECKPOINT_POLL_S)
        if not 0 < poll_s <= MAX_CHECKPOINT_POLL_S:
            raise SettingsError(
                f"{PREFIX}CHECKPOINT_POLL_S={poll_s} is out of range; set it to more than 0 and at most "
                f"{MAX_CHECKPOINT_POLL_S} seconds so that new checkpoints are served within a second."
            )
        load_spread_s = env_float(env, "CHECKPOINT_LOAD_SPREAD_S", DEFAULT_CHECKPOINT_LOAD_SPREAD_S, minimum=0.0)
        if poll_s + load_spread_s > MAX_CHECKPOINT_POLL_S:
            raise SettingsError(
                f"{PREFIX}CHECKPOINT_POLL_S={poll_s} plus {PREFIX}CHECKPOINT_LOAD_SPREAD_S={load_spread_s} is more "
                f"than {MAX_CHECKPOINT_POLL_S} seconds; lower them so that new checkpoints are served within a second."
            )
        epsilon_start = env_float(env, "EPSILON_START", DEFAULT_EPSILON_START)
        if not 0.0 <= epsilon_start <= 1.0:
            raise SettingsError(
                f"{PREFIX}EPSILON_START={epsilon_start} is not a probability; set it to a number from 0 to 1."
            )
        max_batch_size = env_int(env, "INFERENCE_MAX_BATCH", DEFAULT_MAX_BATCH_SIZE, minimum=1)
        workers = env_int(env, "INFERENCE_WORKERS", DEFAULT_WORKERS, minimum=1)
        if workers < max_batch_size:
            raise SettingsError(
                f"{PREFIX}INFERENCE_WORKERS={workers} is smaller than {PREFIX}INFERENCE_MAX_BATCH={max_batch_size}, "
                "so a batch could never fill (every waiting call holds a worker); set it to "
                f"{max_batch_size} or more, or lower {PREFIX}INFERENCE_MAX_BATCH."
            )
        model_arch, model_width = env_model(env)
        return cls(
            host=env_str(env, "INFERENCE_HOST", DEFAULT_HOST),
            port=port,
            act_socket_port=act_socket_port,
            metrics_port=env_metrics_port(env, "INFERENCE_METRICS_PORT"),
            # With port 0 the port is only known once bound; the server then names the replica itself.
            replica_id=env_str(env, "REPLICA_ID", f"{socket.gethostname()}:{port}" if port else ""),
            checkpoint_dir=env_str(env, "CHECKPOINT_DIR", DEFAULT_CHECKPOINT_DIR),
            checkpoint_poll_s=poll_s,
            checkpoint_load_spread_s=load_spread_s,
            device=resolve_device(env_choice(env, "INFERENCE_DEVICE", DEFAULT_DEVICE, DEVICE_CHOICES)),
            torch_threads=env_int(env, "TORCH_THREADS", DEFAULT_TORCH_THREADS, minimum=1),
            seed=env_int(env, "SEED", DEFAULT_SEED, minimum=0),
            epsilon_start=epsilon_start,
            workers=workers,
            max_batch_size=max_batch_size,
            max_wait_ms=env_float(env, "INFERENCE_MAX_WAIT_MS", DEFAULT_MAX_WAIT_MS, minimum=0.0),
            occupy_ms=env_float(env, "INFERENCE_OCCUPY_MS", DEFAULT_OCCUPY_MS, minimum=0.0),
            model_arch=model_arch,
            model_width=model_width,
            algorithm=env_choice(env, "ALGORITHM", DEFAULT_ALGORITHM, tuple(ALGORITHMS)),
            redis_url=env_redis_url(env, ""),
            replica_registry=env_str(env, "REPLICA_REGISTRY", DEFAULT_REPLICA_REGISTRY),
            advertise_address=env_str(env, "INFERENCE_ADVERTISE_ADDRESS", ""),
            security=SecuritySettings.from_env(env),
        )


def resolve_device(choice: str) -> str:
    """Turns an RTRL_INFERENCE_DEVICE choice into a torch device name, failing early when cuda is missing."""
    cuda = torch.cuda.is_available()
    if choice == "auto":
        return "cuda" if cuda else "cpu"
    if choice == "cuda" and not cuda:
        raise SettingsError(
            f"{PREFIX}INFERENCE_DEVICE=cuda but torch sees no CUDA device; set it to cpu or auto, "
            "or run the replica where a GPU is visible."
        )
    return choice
