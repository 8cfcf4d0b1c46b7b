"""Where the dashboard's numbers and pictures come from: gRPC calls to the gateways, the learner and
the replicas, and the replica registry in Redis.

`FrameFeed` holds one StreamFrames call per gateway open on its own thread (reconnecting after a
failure) and keeps only the newest frame, PNG-encoded once for every browser. `Poller` asks every
service for its status `refresh_hz` times a second, all calls in flight at once with a short deadline,
so one service that hangs delays no one else; a service that does not answer is shown with the
error. Replicas are the union of the static list, the registry and the addresses the gateways call.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import grpc
import numpy as np

from rtrl.grpc_util import create_channel
from rtrl.redis_client import connect_redis
from rtrl.registry import REDIS_TIMEOUT_S, RegistryError, live_replicas
from rtrl.security import SecuritySettings
from rtrl.services.dashboard.history import EpisodeReturns, History, RecentCoverage, chart_point
from rtrl.services.dashboard.settings import DashboardSettings
from rtrl.v1 import (
    common_pb2,
    env_gateway_pb2,
    env_gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    learner_pb2,
    learner_pb2_grpc,
)

log = logging.getLogger(__name__)

# Deadline of one status call: well under a refresh period, so a hung service shows as "no answer".
CALL_TIMEOUT_S = 0.5
# Replicas answer GetStatus less often than gateways: the gateway's own per-replica numbers already
# update at the refresh rate, and many replicas times 5 Hz would be many calls for little news.
REPLICA_POLL_INTERVAL_S = 1.0
REGISTRY_POLL_INTERVAL_S = 1.0
RECONNECT_DELAY_S = 1.0
# The fresh/fallback strip under the game view covers this many shown frames.
ACTION_STRIP_FRAMES = 90


def distribution(d: common_pb2.Distribution) -> dict[str, float]:
    return {"count": d.count, "mean": d.mean, "p50": d.p50, "p90": d.p90, "p99": d.p99, "max": d.max}


def describe_error(error: BaseException) -> str:
    """A short sentence for the page: the gRPC code and details, or the exception."""
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        details = (error.details() or "").split("\n")[0][:160]
        return f"{error.code().name}: {details}"
    return f"{type(error).__name__}: {error}"


@dataclass
class ShownFrame:
    """The newest frame of one gateway, ready for browsers."""

    seq: int
    """Counts frames received by the dashboard (a browser sends a frame when this changed)."""
    frame_index: int
    png: bytes
    action: int
    fresh: bool
    episode: int
    frames_skipped: int
    received_unix_s: float
    fresh_strip: str
    """The last ACTION_STRIP_FRAMES shown frames, oldest first: "1" fresh action, "0" fallback."""

    def to_json(self, gateway: int, action_meanings: list[str]) -> dict[str, Any]:
        name = action_meanings[self.action] if self.action < len(action_meanings) else str(self.action)
        return {
            "gateway": gateway,
            "frame_index": self.frame_index,
            "action": self.action,
            "action_name": name,
            "fresh": self.fresh,
            "episode": self.episode,
            "frames_skipped": self.frames_skipped,
            "fresh_strip": self.fresh_strip,
            "png_base64": base64.b64encode(self.png).decode("ascii"),
        }


class FrameFeed:
    """One gateway's StreamFrames, kept open on a thread; `latest` is the newest frame or None."""

    def __init__(
        self, address: str, every_nth_frame: int, on_frame: Callable[[], None], security: SecuritySettings
    ) -> None:
        self.address = address
        self.every_nth_frame = every_nth_frame
        self._on_frame = on_frame
        self._channel = create_channel(address, security)
        self._stub = env_gateway_pb2_grpc.EnvGatewayServiceStub(self._channel)
        self._stop = threading.Event()
        self._call: Any = None
        self._strip = ""
        self._seq = 0
        self.latest: ShownFrame | None = None
        self.error = ""
        self.connects = 0
        self._thread = threading.Thread(target=self._run, name=f"frames {address}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)
        self._channel.close()

    def _run(self) -> None:
        request = env_gateway_pb2.StreamFramesRequest(every_nth_frame=self.every_nth_frame)
        while not self._stop.is_set():
            try:
                # No deadline: the stream lasts as long as the dashboard; stop() cancels it.
                self._call = self._stub.StreamFrames(request)
                self.connects += 1
                for frame in self._call:
                    self._show(frame)
                    self.error = ""
                if not self._stop.is_set():
                    self.error = "the gateway ended the frame stream; reconnecting"
            except grpc.RpcError as error:
                if self._stop.is_set():
                    return
                self.error = describe_error(error)
            except Exception as error:  # a malformed frame must not end the view for good
                log.exception("frame from %s could not be shown", self.address)
                self.error = describe_error(error)
            self._stop.wait(RECONNECT_DELAY_S)

    def _show(self, frame: env_gateway_pb2.StreamFramesResponse) -> None:
        rgb = np.frombuffer(frame.rgb, dtype=np.uint8)
        if rgb.size != frame.height * frame.width * 3:
            raise ValueError(f"frame {frame.frame_index} has {rgb.size} bytes for {frame.height}x{frame.width}x3")
        bgr = cv2.cvtColor(rgb.reshape(frame.height, frame.width, 3), cv2.COLOR_RGB2BGR)
        ok, png = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ValueError(f"frame {frame.frame_index} could not be encoded as PNG")
        self._strip = (self._strip + ("1" if frame.action_fresh else "0"))[-ACTION_STRIP_FRAMES:]
        self._seq += 1
        self.latest = ShownFrame(
            seq=self._seq,
            frame_index=frame.frame_index,
            png=png.tobytes(),
            action=frame.action,
            fresh=frame.action_fresh,
            episode=frame.episode_index,
            frames_skipped=frame.frames_skipped,
            received_unix_s=time.time(),
            fresh_strip=self._strip,
        )
        self._on_frame()


def gateway_stats_json(stats: env_gateway_pb2.GetStatsResponse, coverage_recent: float | None) -> dict[str, Any]:
    return {
        "gateway_id": stats.gateway_id,
        "uptime_s": stats.uptime_s,
        "frames": stats.frames,
        "measured_frame_rate_hz": stats.measured_frame_rate_hz,
        "frames_late": stats.frames_late,
        "decisions": stats.decisions,
        "decisions_fresh": stats.decisions_fresh,
        "decisions_fallback": stats.decisions_fallback,
        "coverage": stats.coverage,
        "coverage_recent": coverage_recent,
        "requests_sent": stats.requests_sent,
        "requests_failed": stats.requests_failed,
        "replies_late": stats.replies_late,
        "replies_superseded": stats.replies_superseded,
        "staleness_frames": distribution(stats.staleness_frames),
        "staleness_frames_histogram": list(stats.staleness_frames_histogram),
        "decision_overhead_ms": distribution(stats.decision_overhead_ms),
        "episodes": stats.episodes,
        "last_episode_return": stats.last_episode_return,
        "mean_episode_return": stats.mean_episode_return,
        "transitions_published": stats.transitions_published,
        "transitions_dropped": stats.transitions_dropped,
        "transitions_queued": stats.transitions_queued,
        "replica_count": stats.replica_count,
        "scheduler": stats.scheduler,
        "interaction": stats.interaction,
        "lead_frames": stats.lead_frames,
        "replicas": [
            {
                "address": r.address,
                "requests": r.requests,
                "replies": r.replies,
                "failures": r.failures,
                "in_flight": r.in_flight,
                "latency_ms": distribution(r.latency_ms),
                "checkpoint_version": r.checkpoint_version,
                "excluded": r.excluded,
                "warming_up": r.warming_up,
                "transport": r.transport,
            }
            for r in stats.replicas
        ],
        # A profile game's variables (None: unknown on that frame) and reward terms; empty for ale:/gym: games.
        "variables": [{"name": v.name, "value": v.value if v.known else None} for v in stats.variables],
        "reward_terms": [
            {"label": t.label, "last_frame_reward": t.last_frame_reward, "episode_reward": t.episode_reward}
            for t in stats.reward_terms
        ],
        "last_episode_end_rules": list(stats.last_episode_end_rules),
    }


def learner_status_json(status: learner_pb2.LearnerServiceGetStatusResponse) -> dict[str, Any]:
    lag = status.policy_lag
    # Consumer lag: entries the learner has not acknowledged yet, delivered or not (-1: Redis cannot tell).
    consumer_lag = status.stream_pending + status.stream_lag if status.stream_lag >= 0 else -1
    return {
        "algorithm": status.algorithm,
        "mode": status.mode,
        "updates": status.updates,
        "updates_per_s": status.updates_per_s,
        "transitions_consumed": status.transitions_consumed,
        "replay_size": status.replay_size,
        "checkpoint_version": status.checkpoint_version,
        "loss": status.loss,
        "epsilon": status.epsilon,
        "stream_length": status.stream_length,
        "stream_pending": status.stream_pending,
        "stream_lag": status.stream_lag,
        "consumer_lag": consumer_lag,
        "transitions_too_old": status.transitions_too_old,
        "transitions_skipped": status.transitions_skipped,
        "policy_lag": {
            "transitions": lag.transitions,
            "fallback_fraction": lag.fallback_fraction,
            "version_lag_min": lag.version_lag_min,
            "version_lag_mean": lag.version_lag_mean,
            "version_lag_max": lag.version_lag_max,
            "lag_ms": distribution(lag.lag_ms),
        },
    }


def replica_status_json(status: inference_pb2.InferenceServiceGetStatusResponse) -> dict[str, Any]:
    return {
        "replica_id": status.replica_id,
        "checkpoint_version": status.checkpoint_version,
        "model_arch": status.model_arch,
        "requests_answered": status.requests_answered,
        "requests_refused_deadline": status.requests_refused_deadline,
        "requests_per_second": status.requests_per_second,
        "in_flight": status.in_flight,
        "open_streams": status.open_streams,
        "max_open_streams": status.max_open_streams,
        "inference_ms": distribution(status.inference_ms),
        "latency_ms": distribution(status.latency_ms),
        "batch_size": distribution(status.batch_size),
        "epsilon": status.epsilon,
        "registered": status.registered,
    }


class _GatewayClient:
    def __init__(self, address: str, security: SecuritySettings) -> None:
        self.address = address
        self.channel = create_channel(address, security)
        self.stub = env_gateway_pb2_grpc.EnvGatewayServiceStub(self.channel)
        self.spec: dict[str, Any] | None = None
        self.coverage = RecentCoverage()
        self.returns = EpisodeReturns()


class Poller:
    """Polls every service `refresh_hz` times a second on its own thread; `state()` is the newest view."""

    def __init__(self, settings: DashboardSettings, security: SecuritySettings, on_state: Callable[[], None]) -> None:
        self.settings = settings
        self._security = security
        self._on_state = on_state
        self._gateways = [_GatewayClient(address, security) for address in settings.gateways]
        self._learner_channel = create_channel(settings.learner_address, security)
        self._learner = learner_pb2_grpc.LearnerServiceStub(self._learner_channel)
        self._replica_channels: dict[str, grpc.Channel] = {}
        self._replicas: dict[str, dict[str, Any]] = {}
        self._registry: list[str] = []
        self._registry_error = ""
        self._redis = (
            connect_redis(settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
            if settings.redis_url
            else None
        )
        self._next_replica_poll = 0.0
        self._next_registry_poll = 0.0
        self.history = History(settings.history_s)
        self.polls = 0
        self._state: dict[str, Any] = {"t": time.time(), "gateways": [], "learner": {}, "replicas": [], "point": None}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for gateway in self._gateways:
            gateway.channel.close()
        self._learner_channel.close()
        for channel in self._replica_channels.values():
            channel.close()
        if self._redis is not None:
            self._redis.close()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return self._state

    def action_meanings(self, gateway: int) -> list[str]:
        spec = self._gateways[gateway].spec
        return spec["action_meanings"] if spec else []

    def _run(self) -> None:
        period_s = 1.0 / self.settings.refresh_hz
        next_poll = time.monotonic()
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the page must keep updating whatever one poll ran into
                log.exception("a dashboard poll failed")
            next_poll = max(next_poll + period_s, time.monotonic())
            self._stop.wait(next_poll - time.monotonic())

    def poll_once(self) -> dict[str, Any]:
        """Asks every service once, builds the new state and a chart point, and notifies browsers."""
        now = time.monotonic()
        stats_calls = [
            g.stub.GetStats.future(env_gateway_pb2.GetStatsRequest(), timeout=CALL_TIMEOUT_S) for g in self._gateways
        ]
        spec_calls = {
            i: g.stub.GetSpec.future(env_gateway_pb2.GetSpecRequest(), timeout=CALL_TIMEOUT_S)
            for i, g in enumerate(self._gateways)
            if g.spec is None
        }
        learner_call = self._learner.GetStatus.future(
            learner_pb2.LearnerServiceGetStatusRequest(), timeout=CALL_TIMEOUT_S
        )
        if self._redis is not None and now >= self._next_registry_poll:
            self._next_registry_poll = now + REGISTRY_POLL_INTERVAL_S
            try:
                self._registry = live_replicas(self._redis, self.settings.replica_registry)
                self._registry_error = ""
            except RegistryError as error:
                self._registry_error = str(error)

        gateways: list[dict[str, Any]] = []
        called: set[str] = set()
        for i, (gateway, call) in enumerate(zip(self._gateways, stats_calls, strict=True)):
            entry: dict[str, Any] = {"address": gateway.address, "stats": None, "error": ""}
            if i in spec_calls:
                try:
                    spec = spec_calls[i].result()
                    gateway.spec = {
                        "gateway_id": spec.gateway_id,
                        "env_id": spec.env_id,
                        "action_meanings": list(spec.action_meanings),
                        "frame_rate_hz": spec.frame_rate_hz,
                        "decision_interval_frames": spec.decision_interval_frames,
                        "max_staleness_frames": spec.max_staleness_frames,
                        "fallback_policy": env_gateway_pb2.FallbackPolicy.Name(spec.fallback_policy),
                    }
                except grpc.RpcError:
                    pass  # GetStats below reports the error
            try:
                stats = call.result()
            except grpc.RpcError as error:
                entry["error"] = describe_error(error)
                gateway.spec = None  # a restarted gateway may run another game
            else:
                recent = gateway.coverage.add(now, stats.decisions, stats.decisions_fresh)
                gateway.returns.update(stats.episodes, list(stats.recent_episode_returns))
                entry["stats"] = gateway_stats_json(stats, recent)
                entry["returns"] = gateway.returns.points()
                called.update(r.address for r in stats.replicas)
            entry["spec"] = gateway.spec
            gateways.append(entry)

        learner: dict[str, Any] = {"address": self.settings.learner_address, "status": None, "error": ""}
        try:
            learner["status"] = learner_status_json(learner_call.result())
        except grpc.RpcError as error:
            learner["error"] = describe_error(error)

        self._poll_replicas(now, {*self.settings.inference_addresses, *self._registry, *called})
        registered = set(self._registry)
        replicas = [
            {**self._replicas[address], "in_registry": address in registered, "called_by_gateway": address in called}
            for address in sorted(self._replicas)
        ]
        now_unix = time.time()
        state: dict[str, Any] = {
            "t": now_unix,
            "gateways": gateways,
            "learner": learner,
            "replicas": replicas,
            "registry": {"enabled": self._redis is not None, "error": self._registry_error},
        }
        point = chart_point(now_unix, state)
        state["point"] = point
        self.history.add(point)
        with self._lock:
            self._state = state
            self.polls += 1
        self._on_state()
        return state

    def _poll_replicas(self, now: float, addresses: set[str]) -> None:
        for address in set(self._replicas) - addresses:
            del self._replicas[address]
            self._replica_channels.pop(address).close()
        if now < self._next_replica_poll and addresses <= set(self._replicas):
            return
        self._next_replica_poll = now + REPLICA_POLL_INTERVAL_S
        calls = {}
        for address in addresses:
            if address not in self._replica_channels:
                self._replica_channels[address] = create_channel(address, self._security)
            stub = inference_pb2_grpc.InferenceServiceStub(self._replica_channels[address])
            calls[address] = stub.GetStatus.future(
                inference_pb2.InferenceServiceGetStatusRequest(), timeout=CALL_TIMEOUT_S
            )
        for address, call in calls.items():
            try:
                self._replicas[address] = {
                    "address": address,
                    "status": replica_status_json(call.result()),
                    "error": "",
                }
            except grpc.RpcError as error:
                self._replicas[address] = {"address": address, "status": None, "error": describe_error(error)}
