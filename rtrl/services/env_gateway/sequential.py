"""The sequential baseline (RTRL_INTERACTION=sequential on the realtime clock): act -> learn -> act.

`SequentialDispatcher` reproduces the pattern of frameworks that stop acting while they train: it sends
one sample, waits for its reply, waits until the step that applied it has become a transition, asks the
learner to train on it (Train) and waits for that, and only then takes the next sample. It waits on its
own thread; the clock keeps the game running on the fallback policy meanwhile, which is the freeze this
mode exists to show.

`sequential_dispatcher` builds it, in place of the realtime gateway's staggered `Dispatcher`
(dispatcher.py), with the `LearnerTrainer` it calls the learner's Train through: gRPC errors become
`TrainError` there, so the dispatcher never sees grpc. The realtime gateway (server.py) builds neither;
it is the default path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from rtrl import grpc_util
from rtrl.metrics import Window
from rtrl.security import SecuritySettings
from rtrl.services.env_gateway.clock import ObservationSample, StepRecord
from rtrl.services.env_gateway.dispatcher import CallOutcome, ReplicaLink
from rtrl.services.env_gateway.mailbox import ActionMailbox
from rtrl.services.env_gateway.preprocess import ObservationPreprocessor
from rtrl.services.env_gateway.scheduler import NextIdleScheduler, next_in_rotation
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.v1 import learner_pb2, learner_pb2_grpc

log = logging.getLogger(__name__)

# Sequential mode: how long past a reply's arrival to wait for the step that applies it, in frames
# beyond the staleness bound (the clock applies it at its next step boundary or drops it as late).
APPLY_WAIT_EXTRA_FRAMES = 2
# Sequential mode: how long to wait for an idle replica before looking at the next sample.
IDLE_WAIT_S = 0.05
# Sequential mode: fresh step records kept while waiting for the one that applied the action (a
# reply is applied within S frames, so only the last few can be it).
RECENT_RECORDS = 64


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What the learner reports after a sequential Train call."""

    updates: int
    train_ms: float
    checkpoint_version: int


class TrainError(RuntimeError):
    """The learner did not train (unreachable, refused, or past the deadline); the message says why."""


Train = Callable[[int], TrainResult]
"""train(through_seq): asks the learner to train once it has consumed this gateway's transition `through_seq`."""


class SequentialDispatcher:
    """act -> learn -> act on its own thread (see the module docstring); the clock never waits for it."""

    def __init__(
        self,
        preprocessor: ObservationPreprocessor,
        mailbox: ActionMailbox,
        replicas: ReplicaLink,
        train: Train,
        *,
        frame_period_s: float,
        max_staleness_frames: int,
        decision_interval_frames: int,
        now_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._preprocessor = preprocessor
        self._mailbox = mailbox
        self._replicas = replicas
        self._train = train
        self._apply_wait_s = (
            max_staleness_frames + decision_interval_frames + APPLY_WAIT_EXTRA_FRAMES
        ) * frame_period_s
        self._now_s = now_s
        self.scheduler = NextIdleScheduler()
        self._changed = threading.Condition()
        self._latest: ObservationSample | None = None
        self._outcome: CallOutcome | None = None
        self._records: deque[StepRecord] = deque(maxlen=RECENT_RECORDS)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_address: str | None = None
        self._train_failures_logged = False
        self.requests_sent = 0
        self.requests_resent = 0
        self.requests_not_sent = 0
        """Samples the clock produced while a cycle was in progress (the freeze, counted in samples)."""
        self.requests_failed = 0
        self.replica_count = 0
        self.cycles = 0
        """Completed act -> learn cycles."""
        self.replies_not_applied = 0
        """Replies the clock dropped (late, or their episode ended), so no Train followed."""
        self.train_failures = 0
        self.train_ms = Window()
        """Time the learner reported for each Train."""
        self.cycle_ms = Window()
        """Time from taking a sample to the learner's answer."""

    def submit(self, sample: ObservationSample) -> None:
        with self._changed:
            if self._latest is not None:
                self.requests_not_sent += 1
            self._latest = sample
            self._changed.notify_all()

    def on_record(self, record: StepRecord) -> None:
        if not record.fresh:
            return  # a fallback step applied no reply, so it is nobody's
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rtrl-sequential", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping:
            try:
                self.cycle()
            except Exception:
                log.exception("a sequential act -> learn cycle failed; starting the next one")

    def _wait(self, ready: Callable[[], bool], until_s: float | None) -> bool:
        """Waits under the lock until `ready()` or `until_s`; False when stopping or out of time."""
        while not self._stopping and not ready():
            if until_s is None:
                self._changed.wait()
                continue
            remaining_s = until_s - self._now_s()
            if remaining_s <= 0:
                return False
            self._changed.wait(remaining_s)
        return not self._stopping

    def cycle(self) -> None:
        """One act -> learn cycle: the newest sample, its action, its transition, Train."""
        with self._changed:
            if not self._wait(lambda: self._latest is not None, None):
                return
            sample = self._latest
            assert sample is not None
            self._latest = None
            self._records.clear()
        started_s = self._now_s()
        views = self._replicas.views(started_s)
        self.replica_count = len(views)
        chosen = next_in_rotation(views, self._last_address)
        if chosen is None:
            # Nothing to act with; the clock runs on the fallback until a replica is there.
            with self._changed:
                self._wait(lambda: False, started_s + IDLE_WAIT_S)
            self.requests_not_sent += 1
            return
        self._last_address = chosen.address
        request = self._replicas.prepare(self._preprocessor.stack(sample.frames), sample.frame_index)
        with self._changed:
            self._outcome = None
        if not self._replicas.send(chosen.address, request, sample.deadline_s, self._on_call_done):
            self.requests_not_sent += 1
            return
        self.requests_sent += 1
        with self._changed:
            if not self._wait(lambda: self._outcome is not None, None):
                return
            outcome = self._outcome
        assert outcome is not None
        if outcome.reply is None:
            self.requests_failed += 1
            return
        self._mailbox.offer(sample.episode, sample.frame_index, sample.produced_s, outcome.reply)
        record = self._wait_for_step(sample, self._now_s() + self._apply_wait_s)
        if record is None:
            self.replies_not_applied += 1
            return
        try:
            result = self._train(record.seq)
        except TrainError as error:
            self.train_failures += 1
            if not self._train_failures_logged:
                log.warning("%s; acting goes on without training", error)
                self._train_failures_logged = True
            return
        self._train_failures_logged = False
        self.train_ms.add(result.train_ms)
        self.cycle_ms.add((self._now_s() - started_s) * 1000.0)
        self.cycles += 1
        # The next cycle acts on an observation taken after training, as act -> learn -> act does.
        with self._changed:
            if self._latest is not None:
                self.requests_not_sent += 1
            self._latest = None

    def _on_call_done(self, outcome: CallOutcome) -> None:
        with self._changed:
            self._outcome = outcome
            self._changed.notify_all()

    def _wait_for_step(self, sample: ObservationSample, until_s: float) -> StepRecord | None:
        """The record of the step that applied the reply to `sample`, or None if none did in time."""

        def applied() -> StepRecord | None:
            for record in self._records:
                if record.episode == sample.episode and record.action_obs_frame == sample.frame_index:
                    return record
            return None

        with self._changed:
            if not self._wait(lambda: applied() is not None, until_s):
                return None
            return applied()


class LearnerTrainer:
    """Calls LearnerService/Train for one gateway (sequential interaction); errors become TrainError."""

    def __init__(
        self, address: str, gateway_id: str, updates: int, timeout_s: float, security: SecuritySettings | None = None
    ) -> None:
        self.address = address
        self._gateway_id = gateway_id
        self._updates = updates
        self._timeout_s = timeout_s
        self._channel = grpc_util.create_channel(address, security)
        self._stub = learner_pb2_grpc.LearnerServiceStub(self._channel)

    def __call__(self, through_seq: int) -> TrainResult:
        request = learner_pb2.TrainRequest(gateway_id=self._gateway_id, through_seq=through_seq, updates=self._updates)
        try:
            response = self._stub.Train(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise TrainError(
                f"the learner at {self.address} did not train through transition {through_seq} "
                f"({code.name}: {details}); check that it runs with RTRL_LEARNER_MODE=sequential"
            ) from error
        return TrainResult(response.updates, response.train_ms, response.checkpoint_version)

    def close(self) -> None:
        self._channel.close()


def sequential_dispatcher(
    settings: GatewaySettings,
    preprocessor: ObservationPreprocessor,
    mailbox: ActionMailbox,
    replicas: ReplicaLink,
    frame_rate_hz: float,
) -> tuple[SequentialDispatcher, LearnerTrainer]:
    """The dispatcher of the sequential baseline and the trainer it calls; the gateway closes the trainer."""
    trainer = LearnerTrainer(
        settings.learner_address,
        settings.gateway_id,
        settings.sequential_updates,
        settings.sequential_train_timeout_s,
        security=settings.security,
    )
    dispatcher = SequentialDispatcher(
        preprocessor,
        mailbox,
        replicas,
        trainer,
        frame_period_s=1.0 / frame_rate_hz,
        max_staleness_frames=settings.max_staleness_frames,
        decision_interval_frames=settings.decision_interval_frames,
    )
    return dispatcher, trainer
