"""The inference replica's gRPC server: rtrl.v1.InferenceService over a `Policy`, plus health and reflection.

`create_server(settings)` builds a bound but not yet started server so that tests can use port 0;
`serve(settings)` runs one until SIGTERM or SIGINT, logging a status line every few seconds.

Live membership: with RTRL_REDIS_URL set, a replica that is ready registers its advertised address
in the Redis sorted set RTRL_REPLICA_REGISTRY (default "rtrl:replicas") and refreshes it every 0.5 s
from its own thread (rtrl.registry.Heartbeat); it removes itself first thing on graceful shutdown,
and a replica that dies without shutting down ages out of readers' view after 2 s. Gateways list
replicas with rtrl.registry.live_replicas, so replicas started by hand, by `rtrl up` or by
`docker compose up --scale inference=N` are found the same way. A Redis outage is logged once and
retried; serving never waits for Redis.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import torch

from rtrl import grpc_util
from rtrl.grpc_util import DeadlineTooShort, InvalidArgument, Unavailable, abort_for, set_serving, status_code_for
from rtrl.registry import Heartbeat, advertised_address
from rtrl.services.inference.act_socket import ActSocketServer
from rtrl.services.inference.metrics import start_metrics
from rtrl.services.inference.policy import Policy
from rtrl.services.inference.settings import ACT_SOCKET_OFF, InferenceSettings
from rtrl.services.inference.streams import OpenStreams, StreamRefused
from rtrl.shutdown import stop_on_signals
from rtrl.tensors import from_proto
from rtrl.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)
# Longer than the gateways' registry poll (rtrl/services/env_gateway/membership.py, 0.5 s): a stopping
# replica keeps answering until every gateway has seen it leave.
DRAIN_S = 1.0

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
STATUS_INTERVAL_S = 10.0
SHUTDOWN_GRACE_S = 5.0
# Worker threads that ActStreams never take (each open stream holds one for its whole life): they serve
# warm-up Act calls, GetStatus, health and reflection.
WORKERS_KEPT_FROM_STREAMS = 2

PolicyFactory = Callable[[InferenceSettings, str], Policy]
"""Builds a replica's policy from its settings and replica id: `Policy.from_settings` unless a benchmark
serves another `Policy` subclass through the real server (bench/replica.py)."""


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Translates between the wire and `Policy`; every error becomes a status code: Act's, or an ActStream
    answer's `error_code`."""

    def __init__(
        self, policy: Policy, streams: OpenStreams, advertised_address: str = "", heartbeat: Heartbeat | None = None
    ) -> None:
        self.policy = policy
        self.streams = streams
        self.advertised_address = advertised_address
        self.heartbeat = heartbeat
        self.act_socket_port = 0
        """Port of the replica's act socket, for GetStatus (0: none)."""

    def Act(self, request: inference_pb2.ActRequest, context: grpc.ServicerContext) -> inference_pb2.ActResponse:
        try:
            return self._act(request, context.time_remaining())
        except (InvalidArgument, Unavailable, DeadlineTooShort) as error:
            abort_for(context, error)
            raise  # not reached: abort_for always raises

    def ActStream(
        self, requests: Iterator[inference_pb2.ActStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.ActStreamResponse]:
        """Answers each request in turn, on this worker thread; the stream's calls batch with every other call."""
        try:
            with self.streams.open(context, context.cancel):
                for message in requests:
                    self.streams.busy(context)
                    yield self.answer(message)
                    if not self.streams.idle(context):
                        return
        except StreamRefused as refused:
            context.abort(refused.code, refused.message)
        except grpc.RpcError:
            return  # cancelled: the caller closed it, or `OpenStreams.stop` ended it while idle

    def answer(self, message: inference_pb2.ActStreamRequest) -> inference_pb2.ActStreamResponse:
        """Act's answer to one ActStream request, its error included in the response."""
        try:
            if not message.timeout_ms > 0:
                self.policy.record_invalid()
                raise InvalidArgument(
                    f"ActStreamRequest.timeout_ms is {message.timeout_ms}; set it to the milliseconds you will "
                    "wait for this answer, more than 0"
                )
            return inference_pb2.ActStreamResponse(response=self._act(message.request, message.timeout_ms / 1000.0))
        except (InvalidArgument, Unavailable, DeadlineTooShort) as error:
            code = status_code_for(error)
            assert code is not None
            return inference_pb2.ActStreamResponse(error_code=code.value[0], error_message=str(error))

    def _act(self, request: inference_pb2.ActRequest, time_remaining_s: float | None) -> inference_pb2.ActResponse:
        try:
            if not request.HasField("observation"):
                raise InvalidArgument(
                    "ActRequest.observation is required; send the observation as an rtrl.v1.Tensor shaped "
                    "as the gateway's GetSpec says"
                )
            observation = from_proto(request.observation)
        except InvalidArgument:
            self.policy.record_invalid()
            raise
        result = self.policy.act(observation, request.action_count, time_remaining_s)
        return inference_pb2.ActResponse(
            action=result.action,
            behaviour_log_prob=result.behaviour_log_prob,
            action_values=result.action_values,
            checkpoint_version=result.checkpoint_version,
            explored=result.explored,
            epsilon=result.epsilon,
            inference_ms=result.inference_ms,
            frame_index=request.frame_index,
            batch_size=result.batch_size,
        )

    def GetStatus(
        self, request: inference_pb2.InferenceServiceGetStatusRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferenceServiceGetStatusResponse:
        status = self.policy.status()
        return inference_pb2.InferenceServiceGetStatusResponse(
            replica_id=status.replica_id,
            checkpoint_version=status.checkpoint_version,
            model_arch=status.model_arch,
            parameter_count=status.parameter_count,
            requests_answered=status.requests_answered,
            requests_refused_deadline=status.requests_refused_deadline,
            requests_invalid=status.requests_invalid,
            in_flight=status.in_flight,
            inference_ms=self.policy.inference_ms.summary(),
            checkpoints_loaded=status.checkpoints_loaded,
            checkpoint_load_failures=status.checkpoint_load_failures,
            checkpoint_load_last_error=status.checkpoint_load_last_error,
            epsilon=status.epsilon,
            observation_shape=status.observation_shape,
            action_count=status.action_count,
            batch_size=self.policy.batcher.batch_sizes.summary(),
            max_batch_size=status.max_batch_size,
            max_wait_ms=status.max_wait_ms,
            advertised_address=self.advertised_address,
            requests_per_second=self.policy.answer_rate.rate(time.monotonic()),
            latency_ms=self.policy.latency_ms.summary(),
            model_width=status.model_width,
            requests_answered_late=status.requests_answered_late,
            expected_forward_ms=status.expected_forward_ms,
            batches_run=status.batches_run,
            registered=self.heartbeat is not None and self.heartbeat.registered,
            open_streams=len(self.streams),
            max_open_streams=self.streams.limit,
            act_socket_port=self.act_socket_port,
        )


class InferenceServer:
    """A replica's gRPC server with its policy; started and stopped like a grpc.Server.

    `start()` is `listen()` then `become_ready()`: the port opens (health NOT_SERVING) before the
    initial checkpoint is loaded, so a slow load shows as not ready rather than as a refused connection.
    """

    def __init__(
        self,
        settings: InferenceSettings,
        replica_id: str | None = None,
        policy_factory: PolicyFactory = Policy.from_settings,
    ) -> None:
        self.settings = settings
        self.grpc_server, self.port = grpc_util.create_server(
            settings.host, settings.port, settings.workers, security=settings.security
        )
        # With port 0 the real port is only known now; the default name should carry it.
        self.replica_id = replica_id or settings.replica_id or f"{socket.gethostname()}:{self.port}"
        self.policy = policy_factory(settings, self.replica_id)
        self.advertised_address = advertised_address(settings.host, self.port, settings.advertise_address)
        self.heartbeat: Heartbeat | None = None
        if settings.redis_url:
            self.heartbeat = Heartbeat(settings.redis_url, self.advertised_address, settings.replica_registry)
        self.streams = OpenStreams(limit=max(settings.workers - WORKERS_KEPT_FROM_STREAMS, 0))
        servicer = InferenceServicer(
            self.policy, self.streams, self.advertised_address if self.heartbeat else "", self.heartbeat
        )
        self.act_socket = self._open_act_socket(servicer)
        if self.act_socket is not None:
            servicer.act_socket_port = self.act_socket.port
        grpc_util.add_servicer(inference_pb2_grpc.add_InferenceServiceServicer_to_server, servicer, self.grpc_server)
        self.health = grpc_util.add_health_and_reflection(self.grpc_server, [SERVICE_NAME])
        self._stopped = False

    def _open_act_socket(self, servicer: InferenceServicer) -> ActSocketServer | None:
        """Binds the act socket (rtrl/act_socket.py) unless it is off or TLS is on: the socket checks the
        token but has no TLS, so such a replica's gateways use ActStream (SECURITY.md)."""
        settings = self.settings
        if settings.act_socket_port == ACT_SOCKET_OFF:
            return None
        if settings.security.tls:
            log.info("no act socket: TLS is on, which only gRPC carries; gateways use ActStream")
            return None
        return ActSocketServer(
            servicer.answer,
            self.streams,
            settings.host,
            settings.act_socket_port,
            settings.security.max_message_bytes,
            self.policy.record_invalid,
            settings.security.token,
        )

    def listen(self) -> None:
        """Starts answering RPCs; health stays NOT_SERVING until `become_ready`."""
        self.grpc_server.start()
        if self.act_socket is not None:
            self.act_socket.start()
            log.info("act socket on port %d", self.act_socket.port)

    def become_ready(self) -> None:
        """Loads the newest checkpoint if one was published, starts watching for newer ones, reports SERVING.

        The replica can answer even when nothing was published (it then builds the fresh policy from
        the first request), so SERVING follows the initial load attempt whether or not it succeeded.
        """
        started_s = time.monotonic()
        if self.policy.load_initial():
            log.info(
                "loaded checkpoint %d at start in %.0f ms",
                self.policy.status().checkpoint_version,
                (time.monotonic() - started_s) * 1000.0,
            )
        else:
            log.info(
                "no usable checkpoint in %s yet; serving the fresh policy until one is published",
                self.settings.checkpoint_dir,
            )
        self.policy.start_watching()
        set_serving(self.health, [SERVICE_NAME], True)
        # Announced only once it can answer, so that no gateway calls a replica that is still loading.
        if self.heartbeat is not None:
            self.heartbeat.start()

    def start(self) -> None:
        self.listen()
        self.become_ready()

    def stop(self, grace: float | None) -> threading.Event:
        """Leaves the registry, reports NOT_SERVING and lets calls in flight finish within `grace`.

        Leaving the registry comes first, then the replica keeps answering for `DRAIN_S` so that every
        gateway has re-read the registry and stopped choosing it before it stops answering (without
        the drain, calls sent in that window fail and cost decisions). Calls already waiting for a
        batch are still answered; new ones get UNAVAILABLE. Open ActStreams end then: one computing
        an answer after sending it, one waiting for a request at once (it would hold the grace).
        """
        if self._stopped:
            return self.grpc_server.stop(grace)
        self._stopped = True
        set_serving(self.health, [SERVICE_NAME], False)
        if self.heartbeat is not None:
            was_registered = self.heartbeat.registered
            self.heartbeat.stop(unregister_address=True)
            if was_registered:
                time.sleep(DRAIN_S)
        self.streams.stop()
        if self.act_socket is not None:
            self.act_socket.stop()
        stopped = self.grpc_server.stop(grace)
        self.policy.close(grace)
        return stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)

    def status_line(self) -> str:
        """One line for the log: what is served and how it performs."""
        status = self.policy.status()
        latency = self.policy.latency_ms.summary()
        batch = self.policy.batcher.batch_sizes.summary()
        registry = ""
        if self.heartbeat is not None:
            registry = f", registry {'ok' if self.heartbeat.registered else 'unreachable'}"
        return (
            f"replica {status.replica_id}: checkpoint {status.checkpoint_version} "
            f"({status.model_arch or 'no model yet'}, epsilon {status.epsilon:.3f}), "
            f"{self.policy.answer_rate.rate(time.monotonic()):.1f} answers/s, "
            f"p50 {latency.p50:.2f} ms, p99 {latency.p99:.2f} ms, "
            f"batch mean {batch.mean:.2f} max {batch.max:.0f}, "
            f"refused {status.requests_refused_deadline} (deadline) {status.requests_invalid} (invalid), "
            f"late {status.requests_answered_late}, in flight {status.in_flight}, open streams {len(self.streams)}, "
            f"checkpoint loads {status.checkpoints_loaded} (failed {status.checkpoint_load_failures}){registry}"
        )


def create_server(
    settings: InferenceSettings, policy_factory: PolicyFactory = Policy.from_settings
) -> tuple[InferenceServer, int]:
    """Builds a replica bound to settings.host:settings.port (0 picks a free port); returns it and its port.

    Call `start()` on the result to serve and `stop(grace)` to drain it.
    """
    # One thread by default: replicas share the machine with the emulators and the learner.
    torch.set_num_threads(settings.torch_threads)
    server = InferenceServer(settings, policy_factory=policy_factory)
    return server, server.port


def serve(settings: InferenceSettings, policy_factory: PolicyFactory = Policy.from_settings) -> None:
    """Runs a replica until SIGTERM or SIGINT, then drains it gracefully."""
    server, port = create_server(settings, policy_factory)
    stop_requested = threading.Event()
    stop_on_signals(stop_requested)
    # Before the replica answers anything, so that its histograms count every call.
    metrics = start_metrics(server, settings.host, settings.metrics_port)
    server.listen()
    log.info(
        "inference replica %s listening on %s:%d (device %s, %d torch threads, checkpoints in %s, "
        "batches of up to %d waiting up to %.2f ms, %s)",
        server.replica_id,
        settings.host,
        port,
        settings.device,
        settings.torch_threads,
        settings.checkpoint_dir,
        settings.max_batch_size,
        settings.max_wait_ms,
        f"registering as {server.advertised_address} in {settings.replica_registry}"
        if server.heartbeat
        else "not registering: RTRL_REDIS_URL is unset",
    )
    server.become_ready()
    while not stop_requested.wait(STATUS_INTERVAL_S):
        log.info("%s", server.status_line())
    server.stop(SHUTDOWN_GRACE_S).wait()
    if metrics is not None:
        metrics.close()
    log.info("inference replica %s stopped", server.replica_id)
