"""The learner core: consume transitions, fill the replay, train without pause, publish checkpoints.

`Learner` runs on its own thread. Each iteration reads from the stream (blocking briefly only while
there is nothing to train on), adds what it read to the replay, acknowledges it, then performs one
update; so updates run back to back while the stream keeps flowing between them. Every
`checkpoint_every_updates` updates it publishes a checkpoint, after an update `checkpoint_every_s` since
the last publication too (acting never waits on a slow learner's next hundred updates), and whenever the
algorithm wants acting to use its newest policy at once (PPO at the end of a batch); `stop()` publishes a
final one. The replicas need only the weights, so a checkpoint carries the learner's state (optimizer,
target network: 3 times the weights' size) only every `checkpoint_state_interval_s` and at the stop; the
others name the last one's, which a learner resumed from them loads with their newer weights.

The algorithm is RTRL_ALGORITHM, one of rtrl/services/learner/algorithms (dqn, vtrace, ppo), used only
through the interface in algorithms/base.py: it makes the source transitions go into (a replay of
transitions or of unrolls), says when it is ready, samples and updates. The network is the one the
run names (RTRL_MODEL_ARCH, RTRL_MODEL_WIDTH) with the algorithm's head, for the observation shape and
action count of the first transition, and every checkpoint carries its config.

Data quality: every used transition feeds a `LagWindow` (policy lag in versions and milliseconds,
staleness, fallback share, in GetStatus); transitions chosen more than RTRL_MAX_POLICY_LAG_VERSIONS
versions ago are acknowledged and dropped (`transitions_too_old`). Once a second the loop checks the
stream's backlog: beyond RTRL_LEARNER_MAX_LAG_ENTRIES undelivered entries it jumps to the newest one
and counts what it skipped (`transitions_skipped`), so a slow learner trains on current data and
nothing on the acting path ever waits for it.

On start it resumes from the newest checkpoint in the directory (weights, target network, optimizer state,
counters, version sequence, model config); otherwise the model is built from the first transition. A
checkpoint of another algorithm or network than the run names is refused with a sentence.

Sequential mode (RTRL_LEARNER_MODE=sequential), the act -> learn -> act baseline: the loop keeps
consuming the stream but never trains by itself. `train_through(gateway, seq, updates)` (the Train
RPC) waits until that gateway's transition `seq` has been consumed, then performs the updates on the
caller's thread; a lock keeps them apart from the loop adding to the replay buffer.

Errors: `LearnerError` when the learner cannot start (an unusable checkpoint, no such device);
`TrainRefused` for Train in async mode, `TrainTimeout` when its transition was not consumed in time,
`LearnerStopped` for Train while the learner is not running, `TrainInvalid` for more updates than
`MAX_UPDATES_PER_TRAIN`. At
run time nothing from outside stops it: Redis failures are counted and retried with back-off (training
continues on the replay buffer meanwhile), unusable transitions are dead-lettered and counted, and a
failed checkpoint publication is counted and retried at the next interval.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from rtrl.checkpoints import LATEST, Checkpoint, CheckpointError, CheckpointStore
from rtrl.metrics import RateMeter, Window
from rtrl.models import ModelConfig, default_model_config
from rtrl.services.learner.algorithms import ALGORITHMS
from rtrl.services.learner.algorithms.base import Algorithm, Source
from rtrl.services.learner.episodes import EpisodeReturns
from rtrl.services.learner.lag import NS_PER_MS, LagStats, LagWindow, too_old
from rtrl.services.learner.settings import LearnerSettings
from rtrl.services.learner.stream import (
    TRANSITION_FIELD,
    ReadResult,
    StreamUnavailable,
    TransitionStream,
    redacted_url,
)
from rtrl.transitions import Transition, encode

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0
RECONNECT_BACKOFF_MIN_S = 0.1
RECONNECT_BACKOFF_MAX_S = 2.0
REPEATED_WARNING_INTERVAL_S = 30.0
STOP_TIMEOUT_S = 10.0
POLICY_LAG_VERSION_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100, 200, 500, 1000)


class LearnerError(RuntimeError):
    """The learner cannot start or had to stop; the message says why and what to do."""


class TrainRefused(LearnerError):
    """Train was called on a learner that trains by itself (async mode)."""


class TrainTimeout(LearnerError):
    """The transition a Train call waits for was not consumed before its deadline."""


class LearnerStopped(LearnerError):
    """Train was called while the learner is not running (not started yet, or stopping)."""


class TrainInvalid(LearnerError):
    """A Train request asks for something no learner should do (more updates than one call may run)."""


# One Train call runs at most this many updates, and waits at most this long for its transition even
# when the caller sets no (or a longer) deadline: a call must never hold the model or a server thread
# indefinitely.
MAX_UPDATES_PER_TRAIN = 10_000
MAX_TRAIN_WAIT_S = 60.0


@dataclass(frozen=True)
class TrainResult:
    """What one sequential Train did."""

    updates: int
    """Updates performed (0 while the replay holds less than learning_starts)."""
    train_ms: float
    wait_ms: float
    """Time spent waiting for the transition to be consumed."""
    checkpoint_version: int
    updates_total: int


@dataclass(frozen=True)
class LearnerStatus:
    """A consistent-enough snapshot of the learner's counters (the GetStatus fields and a few more)."""

    algorithm: str
    updates: int
    """Gradient updates, resumed across restarts."""
    updates_per_s: float
    transitions_consumed: int
    """Stream entries acknowledged since this learner started (valid and invalid)."""
    transitions_invalid: int
    """Entries since start that could not be decoded or did not fit the model (dead-lettered)."""
    transitions_unpaired: int
    """Transitions since start never trained on: no successor (truncation, gap) or no decision observation
    (unroll algorithms: steps masked)."""
    replay_size: int
    """Transitions (DQN) or complete unrolls (V-trace, PPO) held for sampling."""
    checkpoint_version: int
    checkpoints_published: int
    checkpoint_published_unix_ms: int
    checkpoint_publish_failures: int
    checkpoint_publish_last_error: str
    loss: float
    epsilon: float
    """Exploration rate of the newest checkpoint (the schedule's current value before the first one)."""
    stream_length: int
    stream_pending: int
    stream_lag: int
    env_steps: int
    """Transitions added to the replay buffer, resumed across restarts."""
    uptime_s: float
    connected: bool
    redis_errors: int
    mode: str = "async"
    train_calls: int = 0
    transitions_too_old: int = 0
    """Transitions since start dropped unused because their policy lag exceeded RTRL_MAX_POLICY_LAG_VERSIONS."""
    transitions_skipped: int = 0
    """Stream entries since start the learner jumped over because it had fallen too far behind."""
    transitions_trimmed: int = 0
    """Of the skipped entries, those MAXLEN had trimmed before they were delivered (Redis 7.0+ only)."""
    backlog_skips: int = 0
    """Times the learner jumped ahead."""
    max_lag_entries: int = 0
    """The threshold of undelivered entries beyond which it jumps (0: never)."""
    lag: LagStats | None = None
    """Lag of the newest transitions used (None before the first)."""
    decisions_elsewhere: int = 0
    """Fresh transitions since start whose action came from another step's observation, trained on that one."""
    decisions_unpaired: int = 0
    """Fresh transitions since start whose decision observation was not found (also in `transitions_unpaired`)."""
    unrolls_skipped: int = 0
    """Complete unrolls an on-policy learner (PPO) passed over because newer ones were waiting for its next batch."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The newest update's metrics, as the algorithm names them ("loss" among them)."""


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LearnerError(f"RTRL_LEARNER_DEVICE={setting} but no CUDA device is available; set it to auto or cpu")
    return device


class Learner:
    """Trains continuously on the transition stream; `start()`, then `stop()` (final checkpoint)."""

    def __init__(
        self,
        settings: LearnerSettings,
        *,
        stream: TransitionStream | None = None,
        store: CheckpointStore | None = None,
    ) -> None:
        assert settings.algorithm in ALGORITHMS, f"algorithm {settings.algorithm!r} is not implemented"
        self.settings = settings
        self.algorithm_class = ALGORITHMS[settings.algorithm]
        self.config = settings.config
        self.stream = stream or TransitionStream(
            settings.redis_url, settings.stream, settings.consumer_group, settings.consumer_name
        )
        self.store = store or CheckpointStore(settings.checkpoint_dir, keep=settings.checkpoint_keep)
        self.device = torch.device("cpu")
        self._algorithm: Algorithm | None = None
        self._source: Source | None = None
        self._lag = LagWindow()
        # The window is a deque: status() on a gRPC thread must not iterate it while the loop appends.
        self._lag_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="learner", daemon=True)
        self._ready_lock = threading.Lock()
        self._ready = False
        self._on_ready_change: Callable[[bool], None] | None = None
        self.failure: BaseException | None = None
        """The unexpected error that ended the training thread, if one did."""
        self.sequential = settings.mode == "sequential"
        # Held while the model or the replay buffer changes: the loop adds transitions, and in
        # sequential mode Train updates on a gRPC thread.
        self._model_lock = threading.Lock()
        # Newest consumed seq per gateway; Train waits on the condition for its transition.
        self._consumed_seq: dict[str, int] = {}
        self._consumed_cond = threading.Condition()
        self._train_calls = 0

        # Counters. Written by the learner thread only; other threads read them through `status()`.
        self._started_s = time.monotonic()
        self._updates_meter = RateMeter()
        # Histograms for Prometheus and returns for TensorBoard (metrics.py, tensorboard.py read them).
        self.update_ms = Window()
        """Milliseconds of one update: sampling the batch, the gradient step, publishing when due."""
        self.policy_lag_versions = Window(buckets=POLICY_LAG_VERSION_BUCKETS)
        """Versions between the checkpoint that chose a fresh action and the newest one, per used transition."""
        self.policy_lag_ms = Window()
        """Milliseconds from an action being first applied to the learner receiving its transition."""
        self.episodes = EpisodeReturns()
        self._metrics: dict[str, torch.Tensor] = {}
        self._env_steps = 0
        self._consumed = 0
        self._consumed_before_start = 0
        self._invalid = 0
        self._too_old = 0
        self._skipped = 0
        self._trimmed = 0
        self._backlog_skips = 0
        self._version = 0
        self._updates_at_last_publish = 0
        # The newest checkpoint naming a learner state (written by us, or resumed from), and when its
        # state was written or read: checkpoints in between name that one's (settings.checkpoint_state_interval_s).
        self._state_checkpoint: Checkpoint | None = None
        self._state_written_s = 0.0
        self._published_without_state = False
        self._publication_tried_s = time.monotonic()
        """When the last publication was attempted (a failed one too: it is retried every checkpoint_every_s)."""
        self._published = 0
        self._published_unix_ms = 0
        self._published_epsilon: float | None = None
        self._publish_failures = 0
        self._publish_last_error = ""
        self._stream_length = 0
        self._stream_pending = 0
        self._stream_lag = -1
        self._stats_refreshed_s = 0.0
        self._connected = False
        self._redis_errors = 0
        self._reconnect_backoff_s = RECONNECT_BACKOFF_MIN_S
        self._next_connect_s = 0.0
        self._last_redis_warning_s = -REPEATED_WARNING_INTERVAL_S

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Resumes from the newest checkpoint (raises LearnerError if it cannot) and starts the thread."""
        torch.set_num_threads(self.settings.torch_threads)
        self.device = resolve_device(self.settings.device)
        self._resume()
        self._started_s = time.monotonic()
        self._thread.start()
        log.info(
            "learner started: stream %r group %r consumer %r on %s, checkpoints in %s, device %s",
            self.settings.stream,
            self.settings.consumer_group,
            self.settings.consumer_name,
            redacted_url(self.settings.redis_url),
            self.settings.checkpoint_dir,
            self.device,
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stops training, publishes a final checkpoint if anything changed, and returns (bounded)."""
        self._stop.set()
        self._set_ready(False)
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                log.warning("the learner thread did not finish within %.0f s", timeout_s)

    def watch_ready(self, on_change: Callable[[bool], None]) -> None:
        """Calls `on_change(ready)` now and whenever readiness (running and connected to Redis) changes."""
        with self._ready_lock:
            self._on_ready_change = on_change
            on_change(self._ready)

    def _set_ready(self, ready: bool) -> None:
        with self._ready_lock:
            if ready == self._ready:
                return
            self._ready = ready
            if self._on_ready_change is not None:
                self._on_ready_change(ready)

    # -- resume ------------------------------------------------------------------------------------

    def _resume(self) -> None:
        directory = self.settings.checkpoint_dir
        started_s = time.monotonic()
        try:
            latest = self.store.latest()
            if latest is None:
                log.info("no checkpoint in %s: starting fresh, the model is built from the first transition", directory)
                return
            metadata = latest.metadata
            name = self.algorithm_class.name
            if metadata.get("algorithm") != name:
                raise LearnerError(
                    f"checkpoint {latest.version} in {directory} was trained with {metadata.get('algorithm')!r}, "
                    f"not {name!r} (RTRL_ALGORITHM); set RTRL_ALGORITHM={metadata.get('algorithm')} "
                    "to continue it, or set RTRL_CHECKPOINT_DIR to another directory to start afresh"
                )
            model_config = ModelConfig.from_json(metadata["model"])
            self._check_model_settings(model_config, f"checkpoint {latest.version} in {directory}")
            weights = self.store.load_weights(latest)
            learner_state = self.store.load_learner_state(latest) if "learner_state" in metadata["files"] else None
            algorithm = self.algorithm_class(self.config, model_config, self.device, self.settings.seed)
            algorithm.load_state(weights, learner_state, _counter(metadata, "updates"))
            env_steps = _counter(metadata, "env_steps")
            consumed = _counter(metadata, "transitions_consumed")
        except (CheckpointError, ValueError, KeyError, AssertionError) as e:
            # AssertionError: an algorithm refuses a model config of the wrong head (a hand-edited checkpoint).
            raise LearnerError(
                f"cannot resume from the checkpoint in {directory}: {e}; "
                "repair or move that directory away, or set RTRL_CHECKPOINT_DIR to a fresh one"
            ) from e
        if learner_state is None:
            log.warning("checkpoint %d has no learner state: the optimizer starts fresh", latest.version)
        else:
            log.info("learner state resumed from %s", metadata["files"]["learner_state"]["name"])
            self._state_checkpoint = latest
            self._state_written_s = time.monotonic()
        self._algorithm = algorithm
        self._env_steps = env_steps
        self._consumed_before_start = consumed
        # latest.json may point below a version already on disk (restored from a backup, or written by
        # another learner): continue above every version there, so replicas that loaded it take ours.
        self._version = max(latest.version, self.store.highest_version())
        if self._version > latest.version:
            log.warning(
                "%s points at checkpoint %d but version %d is in %s; publishing from version %d on",
                LATEST,
                latest.version,
                self._version,
                directory,
                self._version + 1,
            )
        self._updates_at_last_publish = algorithm.updates
        epsilon = metadata.get("epsilon")
        self._published_epsilon = float(epsilon) if isinstance(epsilon, int | float) else None
        log.info(
            "resumed from checkpoint %d in %.0f ms: %d updates, %d env steps, model %s",
            latest.version,
            (time.monotonic() - started_s) * 1000.0,
            algorithm.updates,
            env_steps,
            model_config.to_json(),
        )

    def _check_model_settings(self, model_config: ModelConfig, what: str) -> None:
        """Refuses a network other than the one RTRL_MODEL_ARCH and RTRL_MODEL_WIDTH name (when they name one)."""
        arch, width = self.settings.model_arch, self.settings.model_width
        if arch and (model_config.arch, model_config.width) != (arch, width):
            raise LearnerError(
                f"{what} is a {model_config.arch} network of width {model_config.width}, but this run names "
                f"RTRL_MODEL_ARCH={arch} RTRL_MODEL_WIDTH={width}; set them to the checkpoint's to continue it, "
                "or set RTRL_CHECKPOINT_DIR to another directory to train the new network from scratch"
            )

    # -- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._iterate()
        except Exception as e:  # a bug, or the device failing: end visibly rather than spin on it
            self.failure = e
            log.exception("the learner loop failed and stopped; no final checkpoint is written")
        finally:
            self._set_ready(False)
            with self._consumed_cond:
                self._consumed_cond.notify_all()  # Train calls waiting for a transition give up now
            with self._model_lock:
                # A stop leaves an exact resume point: the last version names its own learner state.
                if (
                    self.failure is None
                    and self._algorithm is not None
                    and (self._algorithm.updates != self._updates_at_last_publish or self._published_without_state)
                ):
                    self._publish(final=True)
            self.stream.close()

    def _iterate(self) -> None:
        now = time.monotonic()
        if not self._connected and now >= self._next_connect_s:
            self._connect()
        if self._connected:
            try:
                stats_due = time.monotonic() - self._stats_refreshed_s >= STATS_INTERVAL_S
                if stats_due:
                    # Before reading, so a learner that was away starts from the newest data at once.
                    self._check_backlog()
                # Sequential mode never trains here, so it may always wait for new entries.
                self._consume(self.stream.read(block=self.sequential or not self._can_train()))
                if stats_due:
                    # After reading, so the statistics include what was just consumed.
                    self._refresh_stream_stats()
            except StreamUnavailable as e:
                self._on_redis_error(e)
        if self._can_train() and not self.sequential:
            with self._model_lock:
                self._train()
        elif not self._connected:
            # Nothing to train on and nothing to read: idle until the next reconnection attempt.
            self._stop.wait(min(0.05, max(0.0, self._next_connect_s - time.monotonic())))

    def _connect(self) -> None:
        try:
            self.stream.connect()
        except StreamUnavailable as e:
            self._on_redis_error(e)
            return
        self._connected = True
        self._reconnect_backoff_s = RECONNECT_BACKOFF_MIN_S
        self._set_ready(not self._stop.is_set())
        log.info("connected to the transition stream %r", self.settings.stream)

    def _on_redis_error(self, error: StreamUnavailable) -> None:
        self._redis_errors += 1
        now = time.monotonic()
        # The first failure after being connected always shows; a long outage shows every 30 s, not 2.
        if self._connected or now - self._last_redis_warning_s >= REPEATED_WARNING_INTERVAL_S:
            log.warning(
                "%s (retrying with back-off; %d Redis errors so far; training goes on with the replay buffer)",
                error,
                self._redis_errors,
            )
            self._last_redis_warning_s = now
        self._connected = False
        self._set_ready(False)
        self._next_connect_s = time.monotonic() + self._reconnect_backoff_s
        self._reconnect_backoff_s = min(self._reconnect_backoff_s * 2, RECONNECT_BACKOFF_MAX_S)

    def _check_backlog(self) -> None:
        if self.settings.max_lag_entries == 0:
            return
        backlog = self.stream.skip_backlog(self.settings.max_lag_entries)
        if backlog.skipped:
            self._skipped += backlog.skipped
            self._trimmed += backlog.trimmed
            self._backlog_skips += 1

    def _refresh_stream_stats(self) -> None:
        stats = self.stream.stats()
        self._stream_length, self._stream_pending, self._stream_lag = stats.length, stats.pending, stats.lag
        self._stats_refreshed_s = time.monotonic()

    def _consume(self, result: ReadResult) -> None:
        used: list[bytes] = []
        used_transitions: list[Transition] = []
        dropped: list[bytes] = []
        unusable: list[tuple[bytes, Transition, str]] = []
        max_lag = self.settings.max_policy_lag_versions
        with self._model_lock:
            for entry in result.entries:
                problem = self._unusable_reason(entry.transition)
                if problem is not None:
                    unusable.append((entry.entry_id, entry.transition, problem))
                elif max_lag and too_old(entry.transition, self._version, max_lag):
                    # Acknowledged without use: it is valid, only older than this learner wants.
                    dropped.append(entry.entry_id)
                else:
                    assert self._source is not None
                    self._source.add(entry.transition)
                    used.append(entry.entry_id)
                    used_transitions.append(entry.transition)
        # Acknowledge only now that they are in the replay: a crash before this re-delivers them.
        self.stream.ack(used + dropped)
        if used_transitions:
            now_unix_ns = time.time_ns()
            with self._lag_lock:
                self._lag.add(used_transitions, self._version, now_unix_ns)
            for transition in used_transitions:
                if transition.fresh:
                    self.policy_lag_versions.add(self._version - transition.policy_version)
                if transition.action_applied_unix_ns > 0:
                    self.policy_lag_ms.add((now_unix_ns - transition.action_applied_unix_ns) / NS_PER_MS)
            self.episodes.add(used_transitions)
        self._env_steps += len(used)
        self._too_old += len(dropped)
        self._consumed += len(used) + len(dropped) + result.invalid
        self._invalid += result.invalid
        for entry_id, transition, problem in unusable:
            self.stream.dead_letter(entry_id, {TRANSITION_FIELD: encode(transition)}, problem)
            self._consumed += 1
            self._invalid += 1
        if result.entries:
            with self._consumed_cond:
                for entry in result.entries:
                    gateway, seq = entry.transition.gateway_id, entry.transition.seq
                    if seq > self._consumed_seq.get(gateway, -1):
                        self._consumed_seq[gateway] = seq
                self._consumed_cond.notify_all()

    # -- sequential mode -----------------------------------------------------------------------------

    def train_through(
        self,
        gateway_id: str,
        through_seq: int,
        updates: int,
        timeout_s: float | None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> TrainResult:
        """Sequential mode: waits (at most `timeout_s`, never more than MAX_TRAIN_WAIT_S, and not after
        `cancelled()` turns true) until transition `through_seq` of `gateway_id` (or a later one) was
        consumed, then performs `updates` updates (0: RTRL_SEQUENTIAL_UPDATES) here, stopping at the deadline."""
        if not self.sequential:
            raise TrainRefused(
                "this learner trains without pause (RTRL_LEARNER_MODE=async); Train is only served in "
                "sequential mode: restart it with RTRL_LEARNER_MODE=sequential"
            )
        if updates > MAX_UPDATES_PER_TRAIN:
            raise TrainInvalid(
                f"Train asked for {updates} updates; one call runs at most {MAX_UPDATES_PER_TRAIN}: "
                "ask for fewer and call again"
            )
        started_s = time.monotonic()
        timeout_s = MAX_TRAIN_WAIT_S if timeout_s is None else min(timeout_s, MAX_TRAIN_WAIT_S)
        give_up_s = started_s + timeout_s
        with self._consumed_cond:
            while self._consumed_seq.get(gateway_id, -1) < through_seq:
                if self._stop.is_set() or not self._thread.is_alive():
                    raise LearnerStopped("the learner is not running; call Train again once it is")
                if cancelled():
                    raise TrainTimeout(f"the caller gave up waiting for transition {through_seq} of {gateway_id!r}")
                remaining_s = give_up_s - time.monotonic()
                if remaining_s <= 0:
                    raise TrainTimeout(
                        f"transition {through_seq} of gateway {gateway_id!r} was not consumed within "
                        f"{timeout_s:.3f} s (newest consumed: {self._consumed_seq.get(gateway_id, -1)}); "
                        "check that the gateway publishes to this learner's stream, or call with a longer deadline"
                    )
                # Bounded so that a stopped learner is noticed even if nobody notifies.
                self._consumed_cond.wait(min(remaining_s, 0.5))
        waited_s = time.monotonic() - started_s
        wanted = updates or self.settings.sequential_updates
        with self._model_lock:
            trained_s = time.monotonic()
            done = 0
            while done < wanted and self._can_train() and time.monotonic() < give_up_s:
                self._train()
                done += 1
            train_ms = (time.monotonic() - trained_s) * 1000.0
            self._train_calls += 1
            return TrainResult(
                updates=done,
                train_ms=train_ms,
                wait_ms=waited_s * 1000.0,
                checkpoint_version=self._version,
                updates_total=self._algorithm.updates if self._algorithm is not None else 0,
            )

    def _unusable_reason(self, transition: Transition) -> str | None:
        """Why `transition` cannot be trained on, or None (building the model on the first one)."""
        obs = transition.observation
        if self._algorithm is None:
            settings = self.settings
            try:
                model_config = default_model_config(
                    tuple(obs.shape),
                    transition.action_count,
                    arch=settings.model_arch,
                    width=settings.model_width,
                    head=self.algorithm_class.head,
                )
            except ValueError as e:
                return f"no model can be built for it: {e}"
            self._algorithm = self.algorithm_class(self.config, model_config, self.device, settings.seed)
            log.info("built the model from the first transition: %s", model_config.to_json())
        if not math.isfinite(transition.reward):
            return f"reward {transition.reward} is not a finite number"
        if obs.dtype.kind == "f" and not np.isfinite(obs).all():
            return "the observation contains NaN or infinite values"
        model_config = self._algorithm.model_config
        if tuple(obs.shape) != model_config.observation_shape or transition.action_count != model_config.action_count:
            return (
                f"observation shape {list(obs.shape)} with {transition.action_count} actions does not match the "
                f"model's {list(model_config.observation_shape)} with {model_config.action_count} actions; "
                "a gateway on another game needs its own RTRL_CHECKPOINT_DIR and stream"
            )
        if self._source is None:
            self._source = self._algorithm.make_source(tuple(obs.shape), obs.dtype, self.settings.seed)
        elif not self._source.accepts(transition):
            return f"observation dtype {obs.dtype} differs from the replay's {self._source.observation_dtype}"
        return None

    def _can_train(self) -> bool:
        return self._algorithm is not None and self._source is not None and self._algorithm.ready(self._source)

    def _train(self) -> None:
        started_s = time.perf_counter()
        algorithm, source = self._algorithm, self._source
        assert algorithm is not None and source is not None
        self._metrics = algorithm.update(algorithm.sample(source))
        now_s = time.monotonic()
        self._updates_meter.add(now_s)
        every_s = self.settings.checkpoint_every_s
        if (
            algorithm.updates % self.settings.checkpoint_every_updates == 0
            or algorithm.wants_publication()
            or (every_s and now_s - self._publication_tried_s >= every_s)
        ):
            self._publish()
        self.update_ms.add((time.perf_counter() - started_s) * 1000.0)

    # -- checkpoints -------------------------------------------------------------------------------

    def _publish(self, final: bool = False) -> None:
        """Publishes the next version; with the learner's state when `final`, when none was written yet or
        when the last was written `checkpoint_state_interval_s` ago, else naming the last one's."""
        algorithm = self._algorithm
        assert algorithm is not None
        version = self._version + 1
        started_s = time.monotonic()
        self._publication_tried_s = started_s
        with_state = (
            final
            or self._state_checkpoint is None
            or started_s - self._state_written_s >= self.settings.checkpoint_state_interval_s
        )
        metadata: dict[str, Any] = {
            "algorithm": algorithm.name,
            "model": algorithm.model_config.to_json(),
            "epsilon": algorithm.exploration(self.config, self._env_steps),
            "updates": algorithm.updates,
            "env_steps": self._env_steps,
            # Cumulative over restarts, unlike the per-run `transitions_consumed` of GetStatus.
            "transitions_consumed": self._consumed_before_start + self._consumed,
            "hyperparameters": asdict(self.config),
        }
        try:
            checkpoint = self.store.publish(
                version,
                algorithm.policy_weights(),
                metadata,
                learner_state=algorithm.learner_state() if with_state else None,
                learner_state_of=None if with_state else self._state_checkpoint,
            )
        except (CheckpointError, OSError) as e:  # CheckpointStore lets an OSError from mkdir through
            self._publish_failures += 1
            # Retried every interval: the same error is logged once (and counted every time), not ten
            # times a second while a disk stays full.
            if str(e) != self._publish_last_error:
                log.warning(
                    "%s; training goes on and publication is retried at every interval (failures are counted "
                    "in GetStatus checkpoint_publish_failures)",
                    e,
                )
            self._publish_last_error = str(e)
            return
        if self._publish_last_error:
            log.info("checkpoint %d published again (%d failed publications so far)", version, self._publish_failures)
            self._publish_last_error = ""
        self._version = version
        self._updates_at_last_publish = algorithm.updates
        if with_state:
            self._state_checkpoint = checkpoint
            self._state_written_s = started_s
        self._published_without_state = not with_state
        self._published += 1
        self._published_unix_ms = int(checkpoint.metadata["created_unix_ms"])
        self._published_epsilon = algorithm.exploration(self.config, self._env_steps)
        log.info(
            "published checkpoint %d at %d updates in %.0f ms (%s)",
            version,
            algorithm.updates,
            (time.monotonic() - started_s) * 1000.0,
            "with the learner state" if with_state else "weights only",
        )

    # -- observing ---------------------------------------------------------------------------------

    def status(self) -> LearnerStatus:
        now = time.monotonic()
        algorithm = self._algorithm
        source = self._source
        metrics = {name: float(value.item()) for name, value in self._metrics.items()}
        with self._lag_lock:
            lag = self._lag.stats()
        return LearnerStatus(
            algorithm=self.settings.algorithm,
            updates=algorithm.updates if algorithm is not None else 0,
            updates_per_s=self._updates_meter.rate(now),
            transitions_consumed=self._consumed,
            transitions_invalid=self._invalid,
            transitions_unpaired=source.unpaired if source is not None else 0,
            replay_size=len(source) if source is not None else 0,
            checkpoint_version=self._version,
            checkpoints_published=self._published,
            checkpoint_published_unix_ms=self._published_unix_ms,
            checkpoint_publish_failures=self._publish_failures,
            checkpoint_publish_last_error=self._publish_last_error,
            loss=metrics.get("loss", 0.0),
            epsilon=self._published_epsilon
            if self._published_epsilon is not None
            else self.algorithm_class.exploration(self.config, self._env_steps),
            stream_length=self._stream_length,
            stream_pending=self._stream_pending,
            stream_lag=self._stream_lag,
            env_steps=self._env_steps,
            uptime_s=now - self._started_s,
            connected=self._connected,
            redis_errors=self._redis_errors,
            mode=self.settings.mode,
            train_calls=self._train_calls,
            transitions_too_old=self._too_old,
            transitions_skipped=self._skipped,
            transitions_trimmed=self._trimmed,
            backlog_skips=self._backlog_skips,
            max_lag_entries=self.settings.max_lag_entries,
            lag=lag if lag.transitions else None,
            decisions_elsewhere=getattr(source, "decisions_elsewhere", 0),
            decisions_unpaired=getattr(source, "decisions_unpaired", 0),
            unrolls_skipped=getattr(source, "unrolls_skipped", 0),
            metrics=metrics,
        )


def _counter(metadata: dict[str, Any], name: str) -> int:
    value = metadata.get(name, 0)
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"metadata counter {name}={value!r} is not a non-negative integer")
    return value


def status_line(status: LearnerStatus) -> str:
    """One line for the periodic log."""
    return (
        f"learner ({status.mode}) v{status.checkpoint_version} upd {status.updates} ({status.updates_per_s:.1f}/s) "
        f"loss {status.loss:.4g} eps {status.epsilon:.3f} replay {status.replay_size} "
        f"consumed {status.transitions_consumed} invalid {status.transitions_invalid} "
        f"unpaired {status.transitions_unpaired} stream len {status.stream_length} "
        f"pending {status.stream_pending} lag {status.stream_lag} env_steps {status.env_steps} "
        f"published {status.checkpoints_published} failed {status.checkpoint_publish_failures} "
        f"redis {'up' if status.connected else 'DOWN'} errors {status.redis_errors} "
        f"{lag_text(status)}"
    )


def lag_text(status: LearnerStatus) -> str:
    """The data-quality part of the status line: policy lag, staleness, fallbacks, drops and skips."""
    text = f"too_old {status.transitions_too_old} skipped {status.transitions_skipped}"
    lag = status.lag
    if lag is None:
        return text + " lag -"
    return (
        f"{text} policy_lag v{lag.version_lag_min}/{lag.version_lag_mean:.1f}/{lag.version_lag_max} "
        f"{lag.lag_ms_mean:.0f}ms stale {lag.staleness_frames_mean:.1f}f fallback {lag.fallback_fraction:.0%}"
    )
