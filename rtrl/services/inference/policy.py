"""The policy an inference replica serves: the newest checkpoint's network, acting as its head says.

A checkpoint's model config names its head (rtrl.models): a Q-network ("q", DQN) acts epsilon-greedily
on its action values; an actor-critic ("actor_critic", V-trace) samples its softmax policy, never
greedily, and reports log pi(action) as the behaviour log-probability that V-trace corrects with.
Whatever the learner publishes is served; RTRL_ALGORITHM only decides which network the fresh policy is.

What is served (network, its config, checkpoint version, epsilon) is one immutable `ServedModel`
swapped atomically under a lock; each batch reads it once, so every answer of a batch comes from the
same snapshot and names its version. New checkpoints are loaded by a CheckpointWatcher on its own
thread; before any exists the replica serves a fresh policy (version 0) seeded identically on every
replica and built from the first request (RTRL_ALGORITHM, RTRL_MODEL_ARCH and RTRL_MODEL_WIDTH choose
its network).

Concurrent calls are grouped into one forward pass by a `DynamicBatcher` (batcher.py), which refuses
a call whose answer could not be ready before its deadline. `_forward_batch` is the one place
observations meet the network: benchmarks subclass `Policy` there (bench/replica.py) to serve a slower
or a zero-cost model through the real server.

Errors (all defined in rtrl.grpc_util, so the server maps them to status codes in one place; this
module does not use grpc itself):
- InvalidArgument: the request cannot be served as sent (shape, action count, dtype).
- DeadlineTooShort: the answer could not be ready before the caller's deadline; nothing was computed.
- Unavailable: the forward pass failed on this replica's side (or gave outputs that are not finite),
  or the replica is shutting down; the caller may retry elsewhere.
A checkpoint that cannot be served becomes a CheckpointError, which the watcher counts and logs while
the previous version keeps serving; it never reaches a caller.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtrl.acting import epsilon_greedy, sample_softmax
from rtrl.checkpoints import Checkpoint, CheckpointError, CheckpointStore, CheckpointWatcher
from rtrl.grpc_util import DeadlineTooShort, InvalidArgument, Unavailable
from rtrl.metrics import RateMeter, Window
from rtrl.models import ModelConfig, build_model, default_model_config, parameter_count
from rtrl.services.inference.batcher import DynamicBatcher
from rtrl.services.inference.settings import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_WAIT_MS, InferenceSettings
from rtrl.services.learner.algorithms import ALGORITHMS

log = logging.getLogger(__name__)

FRESH_VERSION = 0
# Exploration rate of a checkpoint whose metadata does not say: a typical final DQN epsilon.
DEFAULT_CHECKPOINT_EPSILON = 0.05
SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


@dataclass(frozen=True)
class ServedModel:
    """What answers a call: swapped as a whole, never modified."""

    model: nn.Module
    """A QNetwork or an ActorCritic, as `config.head` says."""
    config: ModelConfig
    checkpoint_version: int
    epsilon: float
    """Exploration rate of a Q-network; 0 for an actor-critic, which explores by sampling its policy."""
    parameter_count: int


@dataclass(slots=True)
class ActResult:
    """The answer to one observation: made by the batch that computed it, completed by `Policy.act`."""

    action: int
    behaviour_log_prob: float
    """log P(action) under the policy that chose it: epsilon-greedy for a Q-network, the softmax for an actor-critic."""
    action_values: tuple[float, ...]
    """Q-values of a Q-network; policy logits of an actor-critic (log-probabilities up to a constant)."""
    checkpoint_version: int
    explored: bool
    """True when the random branch of epsilon-greedy was taken (the random action may equal the greedy one);
    always False for an actor-critic."""
    epsilon: float
    batch_size: int
    """How many calls shared the forward pass that produced this answer."""
    compute_ms: float
    """Time of that batch's forward pass and exploration."""
    inference_ms: float = 0.0
    """Time spent in `act`, waiting for the model included."""


@dataclass(slots=True)
class _ActItem:
    """One call's share of a batch: what the batcher's worker needs to answer it."""

    observation: np.ndarray
    action_count: int


@dataclass(frozen=True)
class PolicyStatus:
    """Counters and what is served, read at one moment."""

    replica_id: str
    checkpoint_version: int
    model_arch: str
    model_width: int
    model_head: str
    parameter_count: int
    observation_shape: tuple[int, ...]
    action_count: int
    epsilon: float
    requests_answered: int
    requests_refused_deadline: int
    requests_invalid: int
    requests_answered_late: int
    """Answers that were ready only after their deadline (a forward pass overran its estimate)."""
    in_flight: int
    checkpoints_loaded: int
    checkpoint_load_failures: int
    checkpoint_load_last_error: str
    expected_forward_ms: float
    """The forward time of a batch of one that the deadline check assumes."""
    batches_run: int
    max_batch_size: int
    max_wait_ms: float


class Policy:
    """Answers `act` calls with the newest loaded checkpoint; thread-safe."""

    def __init__(
        self,
        checkpoint_dir: str | Path,
        *,
        device: str = "cpu",
        seed: int = 0,
        epsilon_start: float = 1.0,
        replica_id: str = "",
        poll_interval_s: float = 0.1,
        load_spread_s: float = 0.0,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        model_arch: str = "",
        model_width: int = 1,
        algorithm: str = "dqn",
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r} is unknown; use one of {', '.join(ALGORITHMS)}")
        self.replica_id = replica_id
        self.device = torch.device(device)
        self.seed = seed
        self.epsilon_start = epsilon_start
        self.model_arch = model_arch
        self.model_width = model_width
        self.algorithm = algorithm
        self.fresh_head = ALGORITHMS[algorithm].head
        # The last checkpoint network reported as differing from this replica's settings (logged once each).
        self._reported_difference: tuple[str, str, int] | None = None
        # Only a Q-network explores with epsilon; an actor-critic samples its own policy.
        self.fresh_epsilon = epsilon_start if self.fresh_head == "q" else 0.0
        self.store = CheckpointStore(checkpoint_dir)
        self.watcher = CheckpointWatcher(self.store, self._install_checkpoint, poll_interval_s, load_spread_s)
        # Compute time of each answer's batch (forward pass and exploration), one entry per
        # answer, and time spent in act (queueing for a batch included).
        self.inference_ms = Window()
        self.latency_ms = Window()
        self.answer_rate = RateMeter()

        self._served: ServedModel | None = None
        self._swap_lock = threading.Lock()
        # A str seed is hashed with SHA-512, never salted per process as hash() is: exploration repeats.
        self._rng = random.Random(f"{seed}:{replica_id}")

        self._counts_lock = threading.Lock()
        self._answered = 0
        self._answered_late = 0
        self._refused_deadline = 0
        self._invalid = 0
        self._in_flight = 0
        # Forward passes run one batch at a time (on the batcher's worker, or on a lone caller's thread):
        # that keeps latency predictable on a shared CPU, and exploration draws in the order batches run.
        # Created last: its thread starts at once.
        self.batcher: DynamicBatcher[_ActItem, ActResult] = DynamicBatcher(
            self._run_batch,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_ms / 1000.0,
            name=f"batcher {replica_id}",
        )

    @classmethod
    def from_settings(cls, settings: InferenceSettings, replica_id: str | None = None) -> Policy:
        return cls(
            settings.checkpoint_dir,
            device=settings.device,
            seed=settings.seed,
            epsilon_start=settings.epsilon_start,
            replica_id=settings.replica_id if replica_id is None else replica_id,
            poll_interval_s=settings.checkpoint_poll_s,
            load_spread_s=settings.checkpoint_load_spread_s,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            model_arch=settings.model_arch,
            model_width=settings.model_width,
            algorithm=settings.algorithm,
        )

    # -- checkpoints (off the request path) --------------------------------------------------------

    def load_initial(self) -> bool:
        """Loads the newest published checkpoint, if any, before serving; True when one was loaded."""
        return self.watcher.poll_once()

    def poll_once(self) -> bool:
        """Loads a newer checkpoint if one was published; True when one was loaded."""
        return self.watcher.poll_once()

    def start_watching(self) -> None:
        self.watcher.start()

    def stop_watching(self) -> None:
        self.watcher.stop()

    def close(self, timeout_s: float | None = None) -> None:
        """Stops loading checkpoints and refuses new calls (Unavailable); calls already queued are answered."""
        self.watcher.stop()
        self.batcher.close(timeout_s)

    def _install_checkpoint(self, checkpoint: Checkpoint, weights: dict[str, torch.Tensor]) -> None:
        """The watcher's callback: builds the checkpoint's network and swaps it in."""
        build_started_s = time.monotonic()
        try:
            served = self._build_from_checkpoint(checkpoint, weights)
        except CheckpointError:
            raise
        except Exception as e:
            # Anything else going wrong with a file the learner wrote (torch, a bad config, memory)
            # must be counted as a failed load, not kill the watcher thread: the watcher only
            # catches CheckpointError.
            raise CheckpointError(f"checkpoint {checkpoint.version} cannot be served: {e}") from e
        with self._swap_lock:
            current = self._served
            if current is not None and current.checkpoint_version >= served.checkpoint_version:
                return
            self._served = served
        log.info(
            "serving checkpoint %d (%s %s, %d parameters, epsilon %.3f; built and warmed up in %.0f ms)",
            served.checkpoint_version,
            served.config.arch,
            served.config.head,
            served.parameter_count,
            served.epsilon,
            (time.monotonic() - build_started_s) * 1000.0,
        )
        self._report_difference(served.config, checkpoint)

    def _report_difference(self, config: ModelConfig, checkpoint: Checkpoint) -> None:
        """One log line when the learner's network is not the one this replica's settings name: the
        checkpoint is what the learner trains, so it is served as it says; the settings only shaped the
        fresh policy before it."""
        algorithm = str(checkpoint.metadata.get("algorithm", ""))
        differs_algorithm = bool(algorithm) and algorithm != self.algorithm
        differs_model = bool(self.model_arch) and (config.arch, config.width) != (self.model_arch, self.model_width)
        seen = (algorithm, config.arch, config.width)
        if not (differs_algorithm or differs_model) or seen == self._reported_difference:
            return
        self._reported_difference = seen
        log.warning(
            "checkpoint %d is a %s network of width %d trained by %s, but this replica is set to "
            "RTRL_ALGORITHM=%s RTRL_MODEL_ARCH=%s RTRL_MODEL_WIDTH=%d; serving the checkpoint's network (the "
            "learner's settings decide it); give the replicas the learner's values to start with the same one",
            checkpoint.version,
            config.arch,
            config.width,
            algorithm or "an unnamed algorithm",
            self.algorithm,
            self.model_arch or "(rtrl's choice)",
            self.model_width,
        )

    def _build_from_checkpoint(self, checkpoint: Checkpoint, weights: dict[str, torch.Tensor]) -> ServedModel:
        version = checkpoint.version
        if not isinstance(checkpoint.metadata.get("model"), dict):
            raise CheckpointError(
                f"checkpoint {version} has no 'model' config in its metadata; "
                "publish ModelConfig.to_json() under 'model'"
            )
        try:
            config = ModelConfig.from_json(checkpoint.model_config)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {version} has an unusable model config: {e}") from e
        if config.head == "q":
            epsilon = float(checkpoint.metadata.get("epsilon", DEFAULT_CHECKPOINT_EPSILON))
            if not 0.0 <= epsilon <= 1.0:
                raise CheckpointError(f"checkpoint {version} has epsilon {epsilon}, which is not a probability")
        else:
            epsilon = 0.0
        model = build_model(config)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {version} weights do not fit its model config: {e}") from e
        served = self._prepare(model, config, version, epsilon)
        self._warm_up(served)
        return served

    def _prepare(self, model: nn.Module, config: ModelConfig, version: int, epsilon: float) -> ServedModel:
        model = model.to(self.device).eval()
        model.requires_grad_(False)
        return ServedModel(model, config, version, epsilon, parameter_count(model))

    def _warm_up(self, served: ServedModel) -> None:
        """One forward pass per observation dtype a call may send, before the network answers any.

        The first pass of a new network allocates and (on cuda) loads and picks kernels; measured as a
        call's, it would set the batcher's cost estimate past every deadline and the replica would refuse
        calls until its next probe. A uint8 observation runs kernels a float one does not (the
        conversion and scaling in front of the network), so both are warmed.
        """
        with torch.inference_mode():
            for dtype in SUPPORTED_DTYPES:
                observation = np.zeros((1, *served.config.observation_shape), dtype=dtype)
                served.model(torch.from_numpy(observation).to(self.device))

    def _fresh_policy(self, observation_shape: tuple[int, ...], action_count: int) -> ServedModel:
        """The policy served before any checkpoint: the default network for the first request's game."""
        try:
            config = default_model_config(
                observation_shape, action_count, self.model_arch, self.model_width, self.fresh_head
            )
        except ValueError as e:
            configured = f" (this replica is set to RTRL_MODEL_ARCH={self.model_arch})" if self.model_arch else ""
            raise InvalidArgument(
                f"no network can be built for observations shaped {list(observation_shape)} with "
                f"{action_count} actions{configured}: {e}; send observations shaped as the gateway's GetSpec says"
            ) from e
        # Seeding a forked generator gives every replica the same fresh weights without disturbing
        # the global torch RNG; the network is built on the CPU so the device does not change them.
        build_started_s = time.monotonic()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = build_model(config)
        served = self._prepare(model, config, FRESH_VERSION, self.fresh_epsilon)
        self._warm_up(served)
        log.info(
            "serving a fresh policy (%s width %d %s, %d parameters, for %s, %d actions, epsilon %.3f; built and "
            "warmed up in %.0f ms) until a checkpoint is published",
            config.arch,
            config.width,
            config.head,
            served.parameter_count,
            list(observation_shape),
            action_count,
            served.epsilon,
            (time.monotonic() - build_started_s) * 1000.0,
        )
        return served

    def _snapshot_for(self, observation_shape: tuple[int, ...], action_count: int) -> ServedModel:
        served = self._served
        if served is not None:
            return served
        with self._swap_lock:
            # Checked again under the lock: a concurrent first call or a checkpoint may have won.
            if self._served is None:
                self._served = self._fresh_policy(observation_shape, action_count)
            return self._served

    # -- serving -----------------------------------------------------------------------------------

    def act(self, observation: np.ndarray, action_count: int, time_remaining_s: float | None) -> ActResult:
        """Chooses an action for one observation, in a batch with the calls that wait at the same time.

        `time_remaining_s` is the caller's remaining deadline (None: no deadline). A call whose answer
        could not be ready in time is refused with DeadlineTooShort and nothing is computed for it.
        """
        started = time.perf_counter()
        deadline = None if time_remaining_s is None else started + time_remaining_s
        with self._counts_lock:
            self._in_flight += 1
        try:
            result = self._act(observation, action_count, deadline)
        except BaseException as error:
            with self._counts_lock:
                self._in_flight -= 1
                if isinstance(error, InvalidArgument):
                    self._invalid += 1
                elif isinstance(error, DeadlineTooShort):
                    self._refused_deadline += 1
            raise
        finished = time.perf_counter()
        with self._counts_lock:
            self._in_flight -= 1
            self._answered += 1
            if deadline is not None and finished > deadline:
                self._answered_late += 1
        result.inference_ms = (finished - started) * 1000.0
        # Recorded here rather than by the worker so that only answers count, not the batcher's probes.
        self.inference_ms.add(result.compute_ms)
        self.latency_ms.add(result.inference_ms)
        self.answer_rate.add(time.monotonic())
        return result

    def record_invalid(self) -> None:
        """Counts a request rejected for bad input before it reached `act` (e.g. an undecodable tensor)."""
        with self._counts_lock:
            self._invalid += 1

    def _act(self, observation: np.ndarray, action_count: int, deadline: float | None) -> ActResult:
        if action_count < 1:
            raise InvalidArgument(
                f"ActRequest.action_count is {action_count}; send the number of actions of your game "
                "(the gateway's GetSpec action_count)"
            )
        if observation.dtype not in SUPPORTED_DTYPES:
            raise InvalidArgument(f"observation dtype {observation.dtype} is not supported; send uint8 or float32")
        served = self._snapshot_for(observation.shape, action_count)
        self._validate(served, observation, action_count)
        # Only calls whose observations can be stacked into one tensor share a batch.
        key = (observation.shape, observation.dtype.str, action_count)
        return self.batcher.submit(_ActItem(observation, action_count), deadline, key)

    def _run_batch(self, items: Sequence[_ActItem]) -> list[ActResult | BaseException]:
        """Answers a batch, one at a time (see `DynamicBatcher`): one forward pass, then an action per call."""
        # Read once: every answer of the batch comes from this snapshot and names its version.
        served = self._served
        assert served is not None, "a call reaches the batcher only after a policy was chosen for it"
        outcomes: dict[int, ActResult | BaseException] = {}
        for index, item in enumerate(items):
            # A checkpoint for another game may have been swapped in since the call was validated;
            # such a call gets its own InvalidArgument and the rest of the batch is still answered.
            try:
                self._validate(served, item.observation, item.action_count)
            except InvalidArgument as error:
                outcomes[index] = error
        rows = [index for index in range(len(items)) if index not in outcomes]
        if not rows:
            return [outcomes[index] for index in range(len(items))]
        started = time.perf_counter()
        # Stacking copies, which also gives torch a writable array (arrays decoded from the wire are read-only).
        values = self._forward_batch(served, np.array([items[index].observation for index in rows]))
        listed = values.tolist()
        choices = [self._choose(served, values, listed, row) for row in range(len(rows))]
        compute_ms = (time.perf_counter() - started) * 1000.0
        for row, index in enumerate(rows):
            choice = choices[row]
            if isinstance(choice, Unavailable):
                outcomes[index] = choice
                continue
            action, explored, log_prob = choice
            outcomes[index] = ActResult(
                action=action,
                behaviour_log_prob=log_prob,
                action_values=tuple(listed[row]),
                checkpoint_version=served.checkpoint_version,
                explored=explored,
                epsilon=served.epsilon,
                batch_size=len(items),
                compute_ms=compute_ms,
            )
        return [outcomes[index] for index in range(len(items))]

    def _choose(
        self, served: ServedModel, values: np.ndarray, listed: list[list[float]], row: int
    ) -> tuple[int, bool, float] | Unavailable:
        """(action, explored, log-probability) for one row of the outputs, or Unavailable for non-finite outputs.

        A Q-network acts epsilon-greedily; an actor-critic samples its softmax, never greedily: V-trace's and
        PPO's importance weights pi/mu assume mu is the policy that was sampled.
        """
        if not all(map(math.isfinite, listed[row])):
            outputs = "policy logits" if served.config.head == "actor_critic" else "action values"
            return Unavailable(
                f"replica {self.replica_id} got non-finite {outputs} from checkpoint {served.checkpoint_version}; "
                "retry on another replica and check the learner's loss"
            )
        if served.config.head == "actor_critic":
            action, log_prob = sample_softmax(values[row], self._rng)
            return action, False, log_prob
        return epsilon_greedy(listed[row], served.epsilon, self._rng)

    @staticmethod
    def _validate(served: ServedModel, observation: np.ndarray, action_count: int) -> None:
        if observation.shape != served.config.observation_shape:
            expected = list(served.config.observation_shape)
            raise InvalidArgument(
                f"observation shape {list(observation.shape)} does not match the shape {expected} that the "
                f"served model (checkpoint {served.checkpoint_version}) expects; send observations shaped "
                f"{expected} as the gateway's GetSpec says"
            )
        if action_count != served.config.action_count:
            raise InvalidArgument(
                f"ActRequest.action_count is {action_count} but the served model (checkpoint "
                f"{served.checkpoint_version}) has {served.config.action_count} actions; send "
                f"action_count={served.config.action_count} or use replicas that serve your game"
            )

    def _forward_batch(self, served: ServedModel, observations: np.ndarray) -> np.ndarray:
        """Action outputs for a batch of observations [N, *observation_shape] -> [N, action_count].

        Q-values of a Q-network, policy logits of an actor-critic (its state value is not needed to act).

        The one place observations meet the network, and so the one a benchmark overrides
        (bench/replica.py) to make a replica slower or free without changing anything around it.
        """
        try:
            with torch.inference_mode():
                outputs = served.model(torch.from_numpy(observations).to(self.device))
            values = outputs[0] if served.config.head == "actor_critic" else outputs
            # .cpu() also waits for an accelerator to finish, so the time below is the real forward time.
            result = values.float().cpu().numpy()
        except RuntimeError as e:
            # Inputs were validated, so a failure here is the replica's (memory, device), not the caller's.
            log.warning("forward pass of checkpoint %d failed: %s", served.checkpoint_version, e)
            raise Unavailable(
                f"replica {self.replica_id} could not compute an action with checkpoint "
                f"{served.checkpoint_version}: {e}; retry on another replica"
            ) from e
        return result

    # -- status ------------------------------------------------------------------------------------

    @property
    def served(self) -> ServedModel | None:
        """What answers calls now (None before the first request when no checkpoint was loaded)."""
        return self._served

    @property
    def expected_forward_s(self) -> float:
        """The forward time of a batch of one that the deadline check assumes (0 before the first batch)."""
        return self.batcher.expected_forward_s(1)

    def status(self) -> PolicyStatus:
        served = self._served
        with self._counts_lock:
            answered, answered_late, refused, invalid, in_flight = (
                self._answered,
                self._answered_late,
                self._refused_deadline,
                self._invalid,
                self._in_flight,
            )
        batcher = self.batcher
        return PolicyStatus(
            replica_id=self.replica_id,
            checkpoint_version=served.checkpoint_version if served else FRESH_VERSION,
            model_arch=served.config.arch if served else "",
            model_width=served.config.width if served else 0,
            model_head=served.config.head if served else "",
            parameter_count=served.parameter_count if served else 0,
            observation_shape=served.config.observation_shape if served else (),
            action_count=served.config.action_count if served else 0,
            epsilon=served.epsilon if served else self.fresh_epsilon,
            requests_answered=answered,
            requests_refused_deadline=refused,
            requests_invalid=invalid,
            requests_answered_late=answered_late,
            in_flight=in_flight,
            checkpoints_loaded=self.watcher.loads,
            checkpoint_load_failures=self.watcher.failures,
            checkpoint_load_last_error=self.watcher.last_error,
            expected_forward_ms=batcher.expected_forward_s(1) * 1000.0,
            batches_run=batcher.counts().batches_run,
            max_batch_size=batcher.max_batch_size,
            max_wait_ms=batcher.max_wait_s * 1000.0,
        )
