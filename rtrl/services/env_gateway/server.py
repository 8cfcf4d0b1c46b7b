"""The env gateway service: `Gateway` composes clock, dispatcher, replicas, membership, publisher and
viewers; `EnvGatewayServicer` answers GetSpec, StreamFrames and GetStats; `serve` runs it until a signal.

The realtime gateway (RealtimeClock, the staggering Dispatcher) is the plain path; the research modes
are built in their own modules and chosen in one place in `Gateway.__init__`: the sequential
act -> learn -> act baseline (RTRL_INTERACTION=sequential, sequential.py) and the frame-accurate
simulated clock (RTRL_CLOCK=simulated, simulated_clock.py), which runs either interaction.

Health is NOT_SERVING until the backend runs and the clock ticks, SERVING after, and NOT_SERVING
again as soon as shutdown starts (then the clock stops, the publisher flushes for at most
`FLUSH_TIMEOUT_S`, and everything closes).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from grpc_health.v1 import health

from rtrl import grpc_util
from rtrl.config import PREFIX, SettingsError
from rtrl.grpc_util import Unavailable, abort_for
from rtrl.redis_client import redacted_url
from rtrl.services.env_gateway.backends import Backend, make_backend
from rtrl.services.env_gateway.clock import ClockConfig, RealtimeClock, StepRecord
from rtrl.services.env_gateway.dispatcher import Dispatcher
from rtrl.services.env_gateway.episodes import EpisodeLog
from rtrl.services.env_gateway.game_rules import RulesBackend, known
from rtrl.services.env_gateway.mailbox import ActionMailbox
from rtrl.services.env_gateway.membership import REGISTRY_SOURCE, AddressResolver, Membership, RegistryWatcher
from rtrl.services.env_gateway.metrics import start_metrics
from rtrl.services.env_gateway.preprocess import make_preprocessor
from rtrl.services.env_gateway.publisher import BATCH_INTERVAL_S, TransitionPublisher
from rtrl.services.env_gateway.replicas import WARM_UP_TIMEOUT_S, ReplicaPool
from rtrl.services.env_gateway.scheduler import LeadView, make_scheduler
from rtrl.services.env_gateway.sequential import LearnerTrainer, SequentialDispatcher, sequential_dispatcher
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.services.env_gateway.simulated_clock import SimulatedClock, SimulatedDispatch, simulated_clock
from rtrl.services.env_gateway.viewers import FrameFanout
from rtrl.shutdown import stop_on_signals
from rtrl.tensors import dtype_code
from rtrl.transitions import encode
from rtrl.v1 import env_gateway_pb2, env_gateway_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = env_gateway_pb2.DESCRIPTOR.services_by_name["EnvGatewayService"].full_name
FLUSH_TIMEOUT_S = 2.0
STATUS_INTERVAL_S = 5.0
START_TIMEOUT_S = 10.0
# How often a frame stream re-checks that its client is still there when no frame comes.
_VIEWER_POLL_S = 0.25
# Each StreamFrames call holds a server thread for its lifetime, so leave room beside unary calls.
_SERVER_WORKERS = 16
# Each open StreamFrames holds a server thread; beyond this many, new streams are refused so that
# GetSpec, GetStats and health keep threads to answer with, however many viewers a client opens.
MAX_VIEWERS = _SERVER_WORKERS // 2


class Gateway:
    """One game instance: the clock and everything around it. `start()` then `stop()`.

    The backend is created here (so a bad RTRL_ENV fails before anything starts) and closed in
    `stop()` after the clock thread has ended; in between only the clock thread steps it.
    """

    def __init__(self, settings: GatewaySettings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend if backend is not None else make_backend(settings)
        try:
            if settings.fallback_action >= self.backend.action_count:
                raise SettingsError(
                    f"{PREFIX}FALLBACK_ACTION={settings.fallback_action} is out of range for "
                    f"{settings.env.spec}, which has {self.backend.action_count} actions; "
                    f"set it between 0 and {self.backend.action_count - 1}."
                )
            self.clock_config = ClockConfig.from_settings(settings, self.backend.native_frame_rate_hz)
            self.preprocessor = make_preprocessor(settings, self.backend)
            # Sequential interaction applies each reply as soon as it can, as the frameworks it reproduces do.
            self.mailbox = ActionMailbox(
                settings.max_staleness_frames,
                jitter_reserve_frames=settings.jitter_reserve_frames if settings.interaction == "async" else 0,
            )
            self.replicas = ReplicaPool(
                settings.gateway_id,
                self.backend.action_count,
                security=settings.security,
                observation_shape=self.preprocessor.observation_shape(settings.frame_stack),
                observation_dtype=self.preprocessor.dtype,
            )
            self.membership = Membership(self.replicas.set_members)
            self.resolver = AddressResolver(settings.inference_addresses, self.membership.static_addresses())
            # Fewer wake-ups, mid-frame, beside the calls in flight in realtime; a sequential Train waits for
            # each transition, and a simulated clock runs as fast as the publisher keeps up.
            batching = settings.interaction == "async" and settings.clock == "realtime"
            try:
                self.publisher: TransitionPublisher[StepRecord] = TransitionPublisher(
                    settings.redis_url,
                    settings.stream,
                    settings.stream_maxlen,
                    settings.publish_queue_size,
                    encode=self._encode,
                    batch_interval_s=BATCH_INTERVAL_S if batching else 0.0,
                    quiet_after=self._quiet_after if batching else None,
                )
                self.registry = RegistryWatcher(
                    settings.redis_url,
                    settings.replica_registry,
                    lambda seen: self.membership.update(REGISTRY_SOURCE, seen),
                )
            except ValueError as error:
                raise SettingsError(
                    f"{PREFIX}REDIS_URL={redacted_url(settings.redis_url)!r} is not a Redis URL ({error}); "
                    "set it like redis://127.0.0.1:6379/0."
                ) from error
            # A state backend's frames are vectors: viewers get its render, made only while someone watches.
            self.frames = FrameFanout(self.backend.render if self.backend.observation_kind == "state" else None)
            self.trainer: LearnerTrainer | None = None
            self.dispatcher: Dispatcher | SequentialDispatcher | SimulatedDispatch
            self.clock: RealtimeClock | SimulatedClock
            # The one place the research modes branch off the realtime gateway: each is built in its own
            # module, RTRL_CLOCK=simulated (clock and dispatch) and RTRL_INTERACTION=sequential (dispatcher).
            if settings.clock == "simulated":
                # As fast as possible, each action exactly d frames after its observation.
                self.clock_config, self.dispatcher, self.clock = simulated_clock(
                    settings,
                    self.backend,
                    self.clock_config,
                    self.preprocessor,
                    self.replicas,
                    publish=self._publish,
                    show_frame=self.frames.publish,
                    has_room=lambda: self.publisher.queued < settings.publish_queue_size,
                )
            else:
                if settings.interaction == "sequential":
                    self.dispatcher, self.trainer = sequential_dispatcher(
                        settings, self.preprocessor, self.mailbox, self.replicas, self.clock_config.frame_rate_hz
                    )
                else:
                    scheduler = make_scheduler(settings.scheduler)
                    self.dispatcher = Dispatcher(
                        self.preprocessor,
                        self.mailbox,
                        self.replicas,
                        scheduler,
                        # A scheduler that acts only on a new sample or an answer can act on the clock's
                        # thread (see dispatcher.py).
                        inline=scheduler.inline,
                        frame_period_s=1.0 / self.clock_config.frame_rate_hz,
                    )
                self.clock = RealtimeClock(
                    self.backend,
                    self.clock_config,
                    dispatch=self.dispatcher.submit,
                    publish=self._publish,
                    show_frame=self.frames.publish,
                    mailbox=self.mailbox,
                    # Sequential interaction keeps the configured lead, as the frameworks it reproduces do.
                    lead_for_episode=self._episode_lead if settings.interaction == "async" else None,
                )
            self.episode_log = EpisodeLog(settings.episode_log_path) if settings.episode_log_path else None
            if self.episode_log is not None:
                self.clock.on_episode_end = self.episode_log.record
        except BaseException:
            self.backend.close()
            raise
        self._health: health.HealthServicer | None = None
        self._lifecycle = threading.Lock()
        self.stop_requested = threading.Event()
        """Set by `stop()`, or by a signal in `serve`; it also ends the wait for a warm replica at start."""
        self.started = False
        self.stopped = False

    def _publish(self, record: StepRecord) -> bool:
        # The sequential dispatcher waits for the step that applied its action (clock thread; never blocks).
        self.dispatcher.on_record(record)
        return self.publisher.publish(record)

    def _episode_lead(self) -> int | None:
        """The scheduler's lead for an episode that starts now (None: the configured one); see clock.py, Lead."""
        settings = self.settings
        return self.dispatcher.scheduler.lead_frames(
            LeadView(
                frame_period_s=1.0 / self.clock_config.frame_rate_hz,
                configured_frames=settings.lead_frames,
                usual_staleness_frames=self.mailbox.usual_staleness(),
                room_frames=settings.max_staleness_frames - settings.decision_interval_frames,
            )
        )

    def _quiet_after(self, not_before_s: float) -> float:
        assert isinstance(self.clock, RealtimeClock), "the publisher batches only beside a realtime clock"
        return self.clock.quiet_after(not_before_s)

    def _encode(self, record: StepRecord) -> bytes:
        return encode(record.to_transition(self.preprocessor))

    def attach_health(self, health_servicer: health.HealthServicer) -> None:
        self._health = health_servicer

    def _set_serving(self, serving: bool) -> None:
        if self._health is not None:
            grpc_util.set_serving(self._health, [SERVICE_NAME], serving)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Starts every thread and returns once the clock ticks; then health says SERVING. A stop requested
        while it waits for a warm replica ends the wait, and the clock never starts."""
        with self._lifecycle:
            if self.started:
                return
            self.started = True
            self.resolver.resolve_once()
            self.resolver.start()
            self.registry.poll_once()
            self.registry.start()
            self.publisher.start()
            self.dispatcher.start()
        # Outside the lock, so that a stop (SIGTERM while a replica builds its network) need not wait for it.
        self._wait_for_a_warm_replica()
        with self._lifecycle:
            if self.stopped or self.stop_requested.is_set():
                return
            self.clock.start()
        deadline = time.monotonic() + timeout_s
        while not self.clock.ticking.wait(0.05):
            if self.clock.failure is not None:
                raise self.clock.failure
            if time.monotonic() > deadline:
                raise RuntimeError(f"the game clock did not tick within {timeout_s} s")
        self._set_serving(True)
        log.info(
            "gateway %s runs %s from %s (observations %s %s) at %.1f fps, k=%d L=%d S=%d, fallback %s, "
            "%s interaction, scheduler %s; replicas %s (static list %s, registry %r)",
            self.settings.gateway_id,
            self.settings.env.spec,
            self.backend.observation_kind,
            list(self.preprocessor.observation_shape(self.settings.frame_stack)),
            self.preprocessor.dtype,
            self.clock_config.frame_rate_hz,
            self.clock_config.decision_interval_frames,
            self.clock_config.lead_frames,
            self.clock_config.max_staleness_frames,
            self.clock_config.fallback_policy.name.lower(),
            self.settings.interaction,
            self.dispatcher.scheduler.name,
            self.replicas.addresses or "none yet",
            list(self.settings.inference_addresses),
            self.settings.replica_registry,
        )

    def _wait_for_a_warm_replica(self) -> None:
        """Before the first frame, waits for a replica known now to end its warm-up call (bounded by that
        call's timeout), so that the first decisions are not left to the fallback while it builds its
        network. With no replica known yet, the clock starts at once."""
        if not self.replicas.addresses:
            return
        started_s = time.monotonic()
        in_rotation = self.replicas.wait_for_rotation(WARM_UP_TIMEOUT_S + 1.0, self.stop_requested)
        log.info(
            "%s after %.0f ms; the game clock starts",
            "a replica is in rotation" if in_rotation else "no replica answered its warm-up call",
            (time.monotonic() - started_s) * 1000.0,
        )

    def stop(self, flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """NOT_SERVING, stop the clock, flush transitions for at most `flush_timeout_s`, close all."""
        self.stop_requested.set()
        with self._lifecycle:
            if self.stopped:
                return
            self.stopped = True
            self._set_serving(False)
            self.frames.close()
            if self.started:
                self.clock.stop()
                self.dispatcher.stop()
                self.resolver.stop()
                self.registry.stop()
            self.publisher.stop(flush_timeout_s)
            self.replicas.close()
            if self.trainer is not None:
                self.trainer.close()
            if self.episode_log is not None:
                self.episode_log.close()
            self.backend.close()

    def spec(self) -> env_gateway_pb2.GetSpecResponse:
        settings, config = self.settings, self.clock_config
        return env_gateway_pb2.GetSpecResponse(
            env_id=settings.env.spec,
            observation_shape=list(self.preprocessor.observation_shape(settings.frame_stack)),
            observation_dtype=dtype_code(self.preprocessor.dtype),
            action_count=self.backend.action_count,
            action_meanings=list(self.backend.action_meanings),
            frame_rate_hz=config.frame_rate_hz,
            decision_interval_frames=config.decision_interval_frames,
            lead_frames=self.clock.lead_frames,
            max_staleness_frames=config.max_staleness_frames,
            fallback_policy=env_gateway_pb2.FallbackPolicy.Name(config.fallback_policy),
            fallback_action=config.fallback_action,
            gateway_id=settings.gateway_id,
        )

    def stats(self) -> env_gateway_pb2.GetStatsResponse:
        clock, dispatcher, mailbox, publisher = self.clock, self.dispatcher, self.mailbox, self.publisher
        scheduler = dispatcher.scheduler
        sequential = dispatcher if isinstance(dispatcher, SequentialDispatcher) else None
        return env_gateway_pb2.GetStatsResponse(
            gateway_id=self.settings.gateway_id,
            uptime_s=clock.uptime_s(),
            frames=clock.frame,
            measured_frame_rate_hz=clock.frame_rate_hz(),
            frames_late=clock.frames_late,
            decisions=clock.decisions,
            decisions_fresh=clock.decisions_fresh,
            decisions_fallback=clock.decisions_fallback,
            coverage=clock.coverage,
            requests_sent=dispatcher.requests_sent,
            requests_not_sent=dispatcher.requests_not_sent,
            requests_failed=dispatcher.requests_failed,
            replies_late=mailbox.replies_late,
            replies_superseded=mailbox.replies_superseded,
            staleness_frames=clock.staleness_frames.summary(),
            decision_overhead_ms=mailbox.decision_overhead_ms.summary(),
            replicas=self.replicas.stats(),
            episodes=clock.episodes,
            last_episode_return=clock.last_episode_return,
            mean_episode_return=clock.mean_episode_return,
            transitions_published=publisher.published,
            transitions_dropped=publisher.dropped,
            transitions_queued=publisher.queued,
            replica_count=len(self.replicas),
            episode_frames=clock.episode_frames,
            scheduler=scheduler.name,
            scheduler_period_ms=scheduler.period_s * 1000.0,
            scheduler_spacing_ms=scheduler.spacing_s(dispatcher.replica_count) * 1000.0,
            scheduler_turns_passed=scheduler.turns_passed,
            scheduler_slots_waited=scheduler.slots_waited,
            requests_resent=dispatcher.requests_resent,
            lead_frames=clock.lead_frames,
            interaction=self.settings.interaction,
            sequential_cycles=sequential.cycles if sequential else 0,
            train_ms=sequential.train_ms.summary() if sequential else None,
            train_failures=sequential.train_failures if sequential else 0,
            cycle_ms=sequential.cycle_ms.summary() if sequential else None,
            staleness_frames_histogram=staleness_histogram(clock.staleness_frames.values()),
            recent_episode_returns=list(clock.recent_returns),
            unknown_variable_frames=getattr(self.backend, "unknown_variable_frames", 0),
            unknown_variable_truncations=getattr(self.backend, "unknown_variable_truncations", 0),
            **self._profile_stats(),
        )

    def _profile_stats(self) -> dict[str, Any]:
        """The profile's variables and reward terms as the rules saw them on the latest frame (GetStats)."""
        rules = self.backend
        if not isinstance(rules, RulesBackend):
            return {}
        # One read of each attribute: the clock thread replaces them (never changes them in place) meanwhile.
        outcome, episode_terms = rules.last_outcome, rules.episode_terms
        values = outcome.variables
        variables = []
        for name in rules.engine.variables:
            value = values.get(name)
            if value is not None and known(value):
                variables.append(env_gateway_pb2.ProfileVariable(name=name, value=float(value), known=True))
            else:
                variables.append(env_gateway_pb2.ProfileVariable(name=name, value=0.0, known=False))
        return {
            "variables": variables,
            "reward_terms": [
                env_gateway_pb2.RewardTermStats(label=label, last_frame_reward=paid, episode_reward=total)
                for label, paid, total in zip(rules.engine.labels, outcome.terms, episode_terms, strict=True)
            ],
            "last_episode_end_rules": list(rules.last_end),
        }

    def status_line(self) -> str:
        s = self.stats()
        return (
            f"frames {s.frames} at {s.measured_frame_rate_hz:.1f} fps (late {s.frames_late}, tick cpu p50 "
            f"{self.clock.tick_cpu_us.summary().p50:.0f} us) | decisions {s.decisions} coverage {s.coverage:.3f} "
            f"staleness p50 {s.staleness_frames.p50:.0f} overhead p50 {s.decision_overhead_ms.p50:.1f} ms | "
            f"replicas {s.replica_count} ({s.scheduler} T {s.scheduler_period_ms:.1f} ms, L {s.lead_frames}) "
            f"sent {s.requests_sent} not sent {s.requests_not_sent} "
            f"failed {s.requests_failed} late {s.replies_late} | published {s.transitions_published} "
            f"dropped {s.transitions_dropped} queued {s.transitions_queued} | episodes {s.episodes} "
            f"last return {s.last_episode_return:.1f}"
        )


class EnvGatewayServicer(env_gateway_pb2_grpc.EnvGatewayServiceServicer):
    """rtrl.v1.EnvGatewayService over a `Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def GetSpec(
        self, request: env_gateway_pb2.GetSpecRequest, context: grpc.ServicerContext
    ) -> env_gateway_pb2.GetSpecResponse:
        return self._gateway.spec()

    def GetStats(
        self, request: env_gateway_pb2.GetStatsRequest, context: grpc.ServicerContext
    ) -> env_gateway_pb2.GetStatsResponse:
        return self._gateway.stats()

    def StreamFrames(
        self, request: env_gateway_pb2.StreamFramesRequest, context: grpc.ServicerContext
    ) -> Iterator[env_gateway_pb2.StreamFramesResponse]:
        if self._gateway.stopped:
            abort_for(context, Unavailable("the gateway is shutting down; connect to another gateway"))
        frames = self._gateway.frames
        if len(frames) >= MAX_VIEWERS:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the gateway already streams frames to {MAX_VIEWERS} viewers, its most at once; "
                "close one of them (or watch through it) and try again",
            )
        viewer = frames.subscribe(request.every_nth_frame)
        # Wakes the loop below as soon as the client cancels or the call ends.
        context.add_callback(viewer.close)
        try:
            while context.is_active() and not viewer.closed:
                frame = viewer.get(_VIEWER_POLL_S)
                if frame is None:
                    continue
                height, width = frame.rgb.shape[:2]
                yield env_gateway_pb2.StreamFramesResponse(
                    frame_index=frame.frame_index,
                    rgb=frame.rgb.tobytes(),
                    height=height,
                    width=width,
                    action=frame.action,
                    action_fresh=frame.fresh,
                    episode_index=frame.episode,
                    captured_unix_ns=frame.captured_unix_ns,
                    frames_skipped=viewer.frames_skipped,
                )
        finally:
            frames.unsubscribe(viewer)


def create_server(settings: GatewaySettings, gateway: Gateway) -> tuple[grpc.Server, int]:
    """A server (not started) with the gateway's service, health and reflection on settings.host:port."""
    server, port = grpc_util.create_server(
        settings.host, settings.port, max_workers=_SERVER_WORKERS, security=settings.security
    )
    grpc_util.add_servicer(
        env_gateway_pb2_grpc.add_EnvGatewayServiceServicer_to_server, EnvGatewayServicer(gateway), server
    )
    gateway.attach_health(grpc_util.add_health_and_reflection(server, [SERVICE_NAME]))
    return server, port


def serve(settings: GatewaySettings) -> None:
    """Runs the gateway until SIGTERM or SIGINT, logging a status line every few seconds."""
    gateway = Gateway(settings)
    try:
        server, port = create_server(settings, gateway)
    except BaseException:
        gateway.stop()
        raise
    stop_requested = gateway.stop_requested
    stop_on_signals(stop_requested)
    server.start()
    metrics = None
    try:
        # Before the clock starts, so that its histograms count from the first frame.
        metrics = start_metrics(gateway, settings.host, settings.metrics_port)
        gateway.start()
        log.info("env gateway listening on %s:%d", settings.host, port)
        while not stop_requested.wait(STATUS_INTERVAL_S):
            if gateway.clock.failure is not None:
                raise RuntimeError("the game clock stopped") from gateway.clock.failure
            log.info("%s", gateway.status_line())
    finally:
        gateway.stop()
        server.stop(grace=1.0).wait()
        if metrics is not None:
            metrics.close()
        log.info("final: %s", gateway.status_line())
        if settings.final_stats_path:
            write_final_stats(gateway, Path(settings.final_stats_path))


def staleness_histogram(staleness_frames: np.ndarray) -> list[int]:
    """Counts per whole number of frames (index = frames) of a window of staleness measurements."""
    if staleness_frames.size == 0:
        return []
    return [int(count) for count in np.bincount(np.maximum(staleness_frames, 0).astype(np.int64))]


def write_final_stats(gateway: Gateway, path: Path) -> None:
    """Writes the final GetStats as JSON (snake_case names), for `rtrl up`'s summary and for scripts."""
    stats = json_format.MessageToDict(
        gateway.stats(), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    try:
        path.write_text(json.dumps(stats, indent=1))
    except OSError as e:
        log.warning("could not write the final stats to %s: %s", path, e)
