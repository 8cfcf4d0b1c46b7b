"""Inference replicas as the gateway sees them: a channel per address, idle selection, Act with a deadline.

A replica is idle when it has no call in flight. Each observation goes to the next idle replica in
round-robin order; replicas whose last call failed within `RECENT_FAILURE_S` are chosen only when
no other replica is idle, so a replica that hangs or refuses costs one decision per second instead
of every other one, and still gets probed. A call that fails with UNAVAILABLE also keeps its replica
out of the rotation for `UNAVAILABLE_BACKOFF_S`, so a dead replica stops getting calls within one
deadline. Act is sent with `stub.Act.future(timeout=...)`; the reply (or its failure) is delivered
on a gRPC thread through the caller's `on_reply`.

`AddressResolver` turns RTRL_INFERENCE_ADDRESSES (host:port, a host may resolve to several
containers) into addresses every second and feeds `ReplicaPool.set_addresses`, so replicas added
by `docker compose --scale` are picked up; another discovery mechanism can call `set_addresses` too.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from rtrl.grpc_util import MAX_MESSAGE_BYTES
from rtrl.metrics import Window
from rtrl.tensors import to_proto
from rtrl.v1 import env_gateway_pb2, inference_pb2, inference_pb2_grpc
from services.env_gateway.clock import ActionReply
from services.env_gateway.dispatcher import OnReply
from services.env_gateway.settings import split_host_port

log = logging.getLogger(__name__)

UNAVAILABLE_BACKOFF_S = 0.5
RECENT_FAILURE_S = 1.0
RESOLVE_INTERVAL_S = 1.0
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(eq=False)
class _Replica:
    address: str
    channel: grpc.Channel
    stub: inference_pb2_grpc.InferenceServiceStub
    in_flight: int = 0
    requests: int = 0
    replies: int = 0
    failures: int = 0
    checkpoint_version: int = -1
    latency_ms: Window = field(default_factory=Window)
    unavailable_until_s: float = -math.inf
    failed_at_s: float = -math.inf


class ReplicaPool:
    """Sends Act to idle replicas; thread-safe (the dispatcher sends, gRPC threads complete)."""

    def __init__(
        self,
        gateway_id: str,
        action_count: int,
        addresses: Iterable[str] = (),
        now_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gateway_id = gateway_id
        self._action_count = action_count
        self._now_s = now_s
        self._lock = threading.Lock()
        self._replicas: list[_Replica] = []
        self._next = 0
        self._closed = False
        self.set_addresses(addresses)

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Replaces the set of replicas; kept ones keep their channel and statistics."""
        wanted = list(dict.fromkeys(addresses))
        with self._lock:
            if self._closed:
                return
            current = {replica.address: replica for replica in self._replicas}
            removed = [replica for address, replica in current.items() if address not in wanted]
            added = [address for address in wanted if address not in current]
            self._replicas = [current.get(address) or self._connect(address) for address in wanted]
            self._next %= max(len(self._replicas), 1)
        if added or removed:
            log.info(
                "inference replicas now %s (added %s, removed %s)",
                wanted,
                added,
                [replica.address for replica in removed],
            )
        # Closing cancels a removed replica's call in flight; it completes as a failure.
        for replica in removed:
            replica.channel.close()

    @staticmethod
    def _connect(address: str) -> _Replica:
        channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        return _Replica(address, channel, inference_pb2_grpc.InferenceServiceStub(channel))

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return [replica.address for replica in self._replicas]

    def __len__(self) -> int:
        return len(self._replicas)

    def _pick_idle(self, now_s: float) -> _Replica | None:
        count = len(self._replicas)
        second_choice: tuple[int, _Replica] | None = None
        for offset in range(count):
            index = (self._next + offset) % count
            replica = self._replicas[index]
            if replica.in_flight or now_s < replica.unavailable_until_s:
                continue
            if now_s - replica.failed_at_s < RECENT_FAILURE_S:
                second_choice = second_choice or (index, replica)
                continue
            self._next = (index + 1) % count
            return replica
        if second_choice is None:
            return None
        self._next = (second_choice[0] + 1) % count
        return second_choice[1]

    def request_action(self, observation: np.ndarray, frame_index: int, deadline_s: float, on_reply: OnReply) -> bool:
        """Sends Act for `observation` to an idle replica; False when none is idle or it is too late."""
        sent_s = self._now_s()
        timeout_s = deadline_s - sent_s
        if timeout_s <= 0:
            return False
        with self._lock:
            replica = None if self._closed else self._pick_idle(sent_s)
            if replica is None:
                return False
            replica.in_flight += 1
            replica.requests += 1
        request = inference_pb2.ActRequest(
            observation=to_proto(observation),
            gateway_id=self._gateway_id,
            frame_index=frame_index,
            action_count=self._action_count,
        )
        try:
            future = replica.stub.Act.future(request, timeout=timeout_s)
        except ValueError:
            # The channel was closed by set_addresses between picking and sending.
            self._finish(replica, sent_s, None, grpc.StatusCode.CANCELLED)
            return False
        future.add_done_callback(lambda done: self._complete(replica, sent_s, done, on_reply))
        return True

    def _complete(self, replica: _Replica, sent_s: float, future: grpc.Future, on_reply: OnReply) -> None:
        if future.cancelled():
            self._finish(replica, sent_s, None, grpc.StatusCode.CANCELLED)
            on_reply(None)
            return
        error = future.exception()
        if error is not None:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            self._finish(replica, sent_s, None, code)
            on_reply(None)
            return
        response: inference_pb2.ActResponse = future.result()
        if response.action >= self._action_count:
            log.warning(
                "replica %s answered action %d for a game with %d actions; counting it as a failure",
                replica.address,
                response.action,
                self._action_count,
            )
            self._finish(replica, sent_s, None, grpc.StatusCode.OUT_OF_RANGE)
            on_reply(None)
            return
        self._finish(replica, sent_s, response.checkpoint_version, None)
        on_reply(ActionReply(response.action, response.checkpoint_version, response.behaviour_log_prob))

    def _finish(
        self, replica: _Replica, sent_s: float, checkpoint_version: int | None, code: grpc.StatusCode | None
    ) -> None:
        now_s = self._now_s()
        with self._lock:
            replica.in_flight -= 1
            if code is None:
                replica.replies += 1
                replica.latency_ms.add((now_s - sent_s) * 1000.0)
                if checkpoint_version is not None:
                    replica.checkpoint_version = checkpoint_version
                return
            replica.failures += 1
            replica.failed_at_s = now_s
            if code == grpc.StatusCode.UNAVAILABLE:
                replica.unavailable_until_s = now_s + UNAVAILABLE_BACKOFF_S

    def stats(self) -> list[env_gateway_pb2.ReplicaStats]:
        with self._lock:
            replicas = list(self._replicas)
        return [
            env_gateway_pb2.ReplicaStats(
                address=replica.address,
                requests=replica.requests,
                replies=replica.replies,
                failures=replica.failures,
                in_flight=replica.in_flight,
                latency_ms=replica.latency_ms.summary(),
                checkpoint_version=replica.checkpoint_version,
            )
            for replica in replicas
        ]

    def close(self) -> None:
        """Closes every channel (cancelling calls in flight); statistics stay readable."""
        with self._lock:
            self._closed = True
            replicas = list(self._replicas)
        for replica in replicas:
            replica.channel.close()


def resolve(target: str, getaddrinfo: Callable[..., Sequence[tuple]] = socket.getaddrinfo) -> list[str]:
    """Every address `target` (host:port) resolves to, IPv4 first-class: a name that resolves to IPv4
    addresses uses only those, because "localhost" also yielding ::1 would count one server twice."""
    host, port = split_host_port(target)
    infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    v4 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET})
    if v4:
        return [f"{ip}:{port}" for ip in v4]
    v6 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET6})
    return [f"[{ip}]:{port}" for ip in v6]


class AddressResolver:
    """Resolves the configured targets every `interval_s` and hands the union to `on_addresses`."""

    def __init__(
        self,
        targets: Sequence[str],
        on_addresses: Callable[[list[str]], None],
        interval_s: float = RESOLVE_INTERVAL_S,
        getaddrinfo: Callable[..., Sequence[tuple]] = socket.getaddrinfo,
    ) -> None:
        self._targets = list(targets)
        self._on_addresses = on_addresses
        self._interval_s = interval_s
        self._getaddrinfo = getaddrinfo
        self._known: dict[str, list[str]] = {}
        self._failing: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def resolve_once(self) -> list[str]:
        """Resolves every target and hands the addresses over; returns them."""
        for target in self._targets:
            try:
                self._known[target] = resolve(target, self._getaddrinfo)
                if target in self._failing:
                    self._failing.discard(target)
                    log.info("inference target %s resolves again", target)
            except OSError as error:
                # Keep the last known addresses: a DNS hiccup should not drop live replicas.
                if target not in self._failing:
                    self._failing.add(target)
                    log.warning("cannot resolve inference target %s (%s); keeping its last addresses", target, error)
        addresses = list(dict.fromkeys(a for target in self._targets for a in self._known.get(target, [])))
        self._on_addresses(addresses)
        return addresses

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rtrl-resolver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.resolve_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
