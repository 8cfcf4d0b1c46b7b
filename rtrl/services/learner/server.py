"""The learner's gRPC face: LearnerService/GetStatus and Train, health and reflection, and `serve()`.

Health is NOT_SERVING until the learner loop runs and is connected to Redis, SERVING while it is, and
NOT_SERVING again when Redis is lost or shutdown begins.

Train (sequential mode only) maps the loop's errors to status codes here: TrainRefused ->
FAILED_PRECONDITION (the call can never succeed against an async learner, retrying is pointless),
TrainTimeout -> DEADLINE_EXCEEDED, LearnerStopped -> UNAVAILABLE, TrainInvalid -> INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from rtrl import grpc_util
from rtrl.services.learner.lag import LagStats
from rtrl.services.learner.loop import (
    Learner,
    LearnerError,
    LearnerStatus,
    LearnerStopped,
    TrainInvalid,
    TrainRefused,
    TrainTimeout,
    status_line,
)
from rtrl.services.learner.metrics import start_metrics
from rtrl.services.learner.settings import LearnerSettings
from rtrl.services.learner.tensorboard import start_tensorboard
from rtrl.shutdown import stop_on_signals
from rtrl.v1 import common_pb2, learner_pb2, learner_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = learner_pb2.DESCRIPTOR.services_by_name["LearnerService"].full_name
STATUS_LOG_INTERVAL_S = 5.0
SHUTDOWN_GRACE_S = 2.0


def status_response(status: LearnerStatus) -> learner_pb2.LearnerServiceGetStatusResponse:
    return learner_pb2.LearnerServiceGetStatusResponse(
        algorithm=status.algorithm,
        updates=status.updates,
        updates_per_s=status.updates_per_s,
        transitions_consumed=status.transitions_consumed,
        transitions_invalid=status.transitions_invalid,
        replay_size=status.replay_size,
        checkpoint_version=status.checkpoint_version,
        checkpoints_published=status.checkpoints_published,
        checkpoint_published_unix_ms=status.checkpoint_published_unix_ms,
        loss=status.loss,
        epsilon=status.epsilon,
        # A stream that cannot be read yet reports 0 entries rather than wrapping a negative into uint64.
        stream_length=max(0, status.stream_length),
        stream_pending=max(0, status.stream_pending),
        stream_lag=status.stream_lag,
        env_steps=status.env_steps,
        transitions_unpaired=status.transitions_unpaired,
        uptime_s=status.uptime_s,
        checkpoint_publish_failures=status.checkpoint_publish_failures,
        checkpoint_publish_last_error=status.checkpoint_publish_last_error,
        mode=status.mode,
        train_calls=status.train_calls,
        policy_lag=policy_lag_message(status.lag),
        transitions_too_old=status.transitions_too_old,
        transitions_skipped=status.transitions_skipped,
        transitions_trimmed=status.transitions_trimmed,
        backlog_skips=status.backlog_skips,
        max_lag_entries=status.max_lag_entries,
        decisions_elsewhere=status.decisions_elsewhere,
        decisions_unpaired=status.decisions_unpaired,
        update_metrics=status.metrics,
        unrolls_skipped=status.unrolls_skipped,
    )


def policy_lag_message(lag: LagStats | None) -> learner_pb2.PolicyLag:
    """The lag window as a PolicyLag; empty (all zero) before the learner used any transition."""
    if lag is None:
        return learner_pb2.PolicyLag()
    return learner_pb2.PolicyLag(
        transitions=lag.transitions,
        fresh=lag.fresh,
        fallback_fraction=lag.fallback_fraction,
        version_lag_min=lag.version_lag_min,
        version_lag_mean=lag.version_lag_mean,
        version_lag_max=lag.version_lag_max,
        lag_ms=common_pb2.Distribution(
            count=lag.timed,
            mean=lag.lag_ms_mean,
            p50=lag.lag_ms_p50,
            p90=lag.lag_ms_p90,
            p99=lag.lag_ms_p99,
            max=lag.lag_ms_max,
        ),
        staleness_frames=common_pb2.Distribution(
            count=lag.fresh,
            mean=lag.staleness_frames_mean,
            p50=lag.staleness_frames_p50,
            p90=lag.staleness_frames_p90,
            p99=lag.staleness_frames_p99,
            max=lag.staleness_frames_max,
        ),
    )


class LearnerServicer(learner_pb2_grpc.LearnerServiceServicer):
    """Answers GetStatus from the learner's counters (they are meaningful even while Redis is down)."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    def GetStatus(
        self, request: learner_pb2.LearnerServiceGetStatusRequest, context: grpc.ServicerContext
    ) -> learner_pb2.LearnerServiceGetStatusResponse:
        return status_response(self.learner.status())

    def Train(self, request: learner_pb2.TrainRequest, context: grpc.ServicerContext) -> learner_pb2.TrainResponse:
        try:
            result = self.learner.train_through(
                request.gateway_id,
                request.through_seq,
                request.updates,
                context.time_remaining(),
                cancelled=lambda: not context.is_active(),
            )
        except TrainInvalid as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except TrainRefused as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except TrainTimeout as error:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        except LearnerStopped as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        return learner_pb2.TrainResponse(
            updates=result.updates,
            train_ms=result.train_ms,
            checkpoint_version=result.checkpoint_version,
            wait_ms=result.wait_ms,
            updates_total=result.updates_total,
        )


def create_server(settings: LearnerSettings, learner: Learner) -> tuple[grpc.Server, int]:
    """A server (not started) for `learner`, bound to settings.host:settings.port (0 picks a free port).

    Health follows the learner's readiness from here on; start the learner and the server separately.
    """
    server, port = grpc_util.create_server(settings.host, settings.port, security=settings.security)
    grpc_util.add_servicer(learner_pb2_grpc.add_LearnerServiceServicer_to_server, LearnerServicer(learner), server)
    health = grpc_util.add_health_and_reflection(server, [SERVICE_NAME])
    learner.watch_ready(lambda ready: grpc_util.set_serving(health, [SERVICE_NAME], ready))
    return server, port


def serve(settings: LearnerSettings, stop: threading.Event | None = None) -> None:
    """Runs the learner and its server until SIGTERM/SIGINT (or `stop` is set), then shuts down cleanly.

    Raises LearnerError when the learner cannot start, or when its loop failed (after shutting down).
    """
    stop = stop or threading.Event()
    learner = Learner(settings)
    server, port = create_server(settings, learner)
    metrics = start_metrics(learner, settings.host, settings.metrics_port)
    learner.start()
    tensorboard = start_tensorboard(learner)
    server.start()
    log.info("learner gRPC server listening on %s:%d", settings.host, port)

    restore_signal_handlers = stop_on_signals(stop)
    try:
        next_status_s = time.monotonic() + STATUS_LOG_INTERVAL_S
        # Short waits so a signal is acted on promptly; the status line still comes every few seconds.
        while not stop.wait(0.25):
            if learner.failure is not None:
                break
            if time.monotonic() >= next_status_s:
                log.info(status_line(learner.status()))
                next_status_s += STATUS_LOG_INTERVAL_S
    finally:
        # learner.stop() flips health to NOT_SERVING first, then writes the final checkpoint.
        learner.stop()
        server.stop(SHUTDOWN_GRACE_S).wait()
        if tensorboard is not None:
            tensorboard.stop()
        if metrics is not None:
            metrics.close()
        log.info("learner stopped: %s", status_line(learner.status()))
        restore_signal_handlers()
    if learner.failure is not None:
        raise LearnerError(f"the learner loop failed: {learner.failure}") from learner.failure
