"""The inference replicas as the gateway sees them: which are in rotation, and each one's transport.

`ReplicaPool` keeps one channel per replica address and sends Act requests where the dispatcher (with
its scheduler) says; `send` never blocks, and each outcome comes through the sender's `on_done`. Each
replica has one transport (transports/), which carries its requests and answers in order. The pool
warms a joining replica up before it enters rotation, takes it out when it goes away or refuses its
stream, fails the requests of a stalled one at their deadline: docs/dispatch.md#the-replica-pool-replicaspy.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import numpy.typing as npt

from rtrl.grpc_util import create_channel
from rtrl.metrics import HistogramSnapshot
from rtrl.security import SecuritySettings
from rtrl.services.env_gateway.dispatcher import CallOutcome, OnCallDone
from rtrl.services.env_gateway.mailbox import ActionReply
from rtrl.services.env_gateway.replica_stats import ReplicaMeasures
from rtrl.services.env_gateway.scheduler import ReplicaView
from rtrl.services.env_gateway.transports import Call, Endpoint, OpenTransport, Transport, open_transport
from rtrl.services.env_gateway.transports.act_socket import offered_by
from rtrl.tensors import to_proto
from rtrl.v1 import env_gateway_pb2, inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

# A replica whose last call failed this recently is chosen only when no other is idle.
RECENT_FAILURE_S = 1.0
# How often a channel whose replica cannot be reached tries to connect again (gRPC's default: up to 120 s).
RECONNECT_BACKOFF_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# How often the pool looks for a transport whose oldest request is past its deadline (a stalled replica).
STREAM_DEADLINE_CHECK_S = 0.01
# A replica's answers to ActStream that mean "I will not take this stream".
STREAM_REFUSALS = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED)
# Ends of a transport that mean the replica went away.
REPLICA_GONE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Long enough for a replica to build a large network on a CPU (the 100M-parameter impala_cnn takes seconds).
WARM_UP_TIMEOUT_S = 10.0


@dataclass(eq=False)
class _Replica:
    address: str
    channel: grpc.Channel
    endpoint: Endpoint
    in_flight: int = 0
    measures: ReplicaMeasures = field(default_factory=ReplicaMeasures)
    failed_at_s: float = -math.inf
    excluded_since_s: float | None = None
    """Set when it went away or refused its stream; cleared when it is seen alive after that."""
    warming_up: bool = False
    """Its warm-up is under way; it is out of rotation until that ends."""
    quiet: bool = False
    """Why it left the rotation (unavailable at its warm-up, or it refused its stream) was logged, and it has
    answered nothing since: it is tried again without saying so each time."""
    transport: Transport | None = None
    """None until one opens (after its warm-up, or with the next request)."""

    @property
    def in_rotation(self) -> bool:
        """Warmed up, and not out of rotation."""
        return self.excluded_since_s is None and not self.warming_up


class ReplicaPool:
    """Sends Act to the replica the dispatcher names; thread-safe (the dispatcher sends, transports complete)."""

    def __init__(
        self,
        gateway_id: str,
        action_count: int,
        addresses: Iterable[str] = (),
        now_s: Callable[[], float] = time.monotonic,
        security: SecuritySettings | None = None,
        observation_shape: Sequence[int] | None = None,
        observation_dtype: npt.DTypeLike = np.uint8,
    ) -> None:
        """`observation_shape` and `observation_dtype` (the gateway's observations): warm every replica up before it
        enters rotation (docs/dispatch.md); None puts replicas in rotation at once."""
        self._gateway_id = gateway_id
        # TLS, token and message size of every channel to a replica (by default from the RTRL_* environment).
        self._security = security if security is not None else SecuritySettings.from_env()
        self._action_count = action_count
        self._warm_up_request = (
            None
            if observation_shape is None
            else self.prepare(np.zeros(tuple(observation_shape), observation_dtype), 0)
        )
        self.open_transport: OpenTransport = open_transport
        """How each replica's transport opens; benchmarks replace it to compare transports."""
        self._now_s = now_s
        self._lock = threading.Lock()
        self._replicas: dict[str, _Replica] = {}
        self._closed = False
        self._closing = threading.Event()
        self._deadline_watch: threading.Thread | None = None
        self.set_addresses(addresses)

    # -- membership ---------------------------------------------------------------------------------

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Replaces the set of replicas with `addresses`, all seen alive now."""
        now_s = self._now_s()
        self.set_members({address: now_s for address in addresses})

    def set_members(self, last_seen_s: Mapping[str, float]) -> None:
        """Replaces the set of replicas: address -> when it was last seen alive (monotonic seconds).

        Kept replicas keep their channel and statistics; one out of rotation comes back when it was seen
        alive after it left.
        """
        warm_up: list[_Replica] = []
        with self._lock:
            if self._closed:
                return
            current = self._replicas
            removed = [replica for address, replica in current.items() if address not in last_seen_s]
            added = [address for address in last_seen_s if address not in current]
            readmitted: list[str] = []
            retried: list[str] = []
            replicas: dict[str, _Replica] = {}
            for address, seen_s in last_seen_s.items():
                replica = current.get(address)
                if replica is None:
                    channel = create_channel(address, self._security, RECONNECT_BACKOFF_OPTIONS)
                    stub = inference_pb2_grpc.InferenceServiceStub(channel)
                    replica = _Replica(address, channel, Endpoint(address, stub, self._security.token))
                    warm_up.append(replica)
                elif replica.excluded_since_s is not None and seen_s > replica.excluded_since_s:
                    replica.excluded_since_s = None
                    (retried if replica.quiet else readmitted).append(address)
                    warm_up.append(replica)
                replicas[address] = replica
            self._replicas = replicas
            warm_up = [replica for replica in warm_up if self._warm_up_request is not None and not replica.warming_up]
            for replica in warm_up:
                replica.warming_up = True
            threads = [
                threading.Thread(target=self._warm_up, args=(r,), name=f"rtrl-warm-up {r.address}", daemon=True)
                for r in warm_up
            ]
            if replicas and self._deadline_watch is None:
                watch = threading.Thread(target=self._watch_deadlines, name="rtrl-act-deadlines", daemon=True)
                threads.append(watch)
                self._deadline_watch = watch
        # Started outside the lock: starting a thread can take milliseconds on a busy machine, and the
        # deciding thread's `send` takes the lock.
        for thread in threads:
            thread.start()
        if added or removed:
            log.info(
                "inference replicas now %s (added %s, removed %s)",
                list(last_seen_s),
                added,
                [replica.address for replica in removed],
            )
        if readmitted:
            verb = "back in rotation" if self._warm_up_request is None else "warming them up before they rejoin"
            log.info("inference replicas %s are seen alive again; %s", readmitted, verb)
        if retried:
            log.debug("inference replicas %s are seen alive again; trying their warm-up call again", retried)
        # Closing cancels a removed replica's calls in flight; they complete as failures.
        for replica in removed:
            self._close_replica(replica)

    def _close_replica(self, replica: _Replica) -> None:
        with self._lock:
            transport = replica.transport
            unanswered = self._detach(replica, transport)
        if transport is not None:
            transport.close()
        self._fail(replica, unanswered, grpc.StatusCode.CANCELLED)
        replica.channel.close()

    @staticmethod
    def _detach(replica: _Replica, transport: Transport | None) -> list[Call]:
        """Takes `transport` off `replica` when it is still the replica's, and its unanswered requests; lock held."""
        if transport is None:
            return []
        if replica.transport is transport:
            replica.transport = None
        return transport.take_pending()

    def _fail(self, replica: _Replica, calls: list[Call], code: grpc.StatusCode) -> None:
        for call in calls:
            self._complete(replica, call, None, code)

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return list(self._replicas)

    def __len__(self) -> int:
        return len(self._replicas)

    def views(self, now_s: float) -> list[ReplicaView]:
        """The replicas in rotation, in a stable order."""
        with self._lock:
            return [
                ReplicaView(replica.address, replica.in_flight, now_s - replica.failed_at_s < RECENT_FAILURE_S)
                for replica in self._replicas.values()
                if replica.in_rotation
            ]

    def wait_for_rotation(self, timeout_s: float, interrupt: threading.Event) -> bool:
        """Waits until a replica is in rotation, while any is still warming up, at most `timeout_s` and not
        once `interrupt` is set; True when one is in rotation."""
        give_up_s = time.monotonic() + timeout_s
        while True:
            with self._lock:
                replicas = list(self._replicas.values())
                if any(replica.in_rotation for replica in replicas):
                    return True
                if not any(replica.warming_up for replica in replicas) or time.monotonic() >= give_up_s:
                    return False
            if interrupt.wait(0.01):
                return False

    # -- sending --------------------------------------------------------------------------------------

    def prepare(self, observation: np.ndarray, frame_index: int) -> inference_pb2.ActRequest:
        """The Act request for an observation; built once, sent to as many replicas as the scheduler says."""
        return inference_pb2.ActRequest(
            observation=to_proto(observation),
            gateway_id=self._gateway_id,
            frame_index=frame_index,
            action_count=self._action_count,
        )

    def send(self, address: str, request: inference_pb2.ActRequest, deadline_s: float, on_done: OnCallDone) -> bool:
        """Sends `request` to `address`; False (nothing sent) when it is gone or out of rotation, or the deadline
        has passed."""
        sent_s = self._now_s()
        if deadline_s <= sent_s:
            return False
        opened = None
        with self._lock:
            replica = None if self._closed else self._replicas.get(address)
            if replica is None:
                return False
            transport = replica.transport
            if transport is None:
                # Rare: transports open after the warm-up and after a stall, off this thread.
                transport = opened = self._attach_if_wanted(replica)
                if transport is None:
                    return False
            replica.in_flight += 1
            replica.measures.requests += 1
            transport.send(Call(request, sent_s, deadline_s, on_done), sent_s)
        if opened is not None:
            opened.start()
        return True

    def _attach_if_wanted(self, replica: _Replica) -> Transport | None:
        """A new transport made `replica`'s when it is in the pool, not out of rotation, and has none, for the
        caller to `start()` once the lock is released (starting a thread can take milliseconds on a busy
        machine); lock held."""
        if (
            self._closed
            or self._replicas.get(replica.address) is not replica
            or replica.transport is not None
            or replica.excluded_since_s is not None
        ):
            return None
        transport = self.open_transport(
            replica.endpoint,
            lambda transport, answer: self._on_answer(replica, transport, answer),
            lambda transport, code: self._on_end(replica, transport, code),
        )
        replica.transport = transport
        return transport

    # -- on the transports' threads -----------------------------------------------------------------

    def _on_answer(self, replica: _Replica, transport: Transport, answer: inference_pb2.ActStreamResponse) -> None:
        """The answer to the transport's oldest request."""
        with self._lock:
            if not transport.pending:
                return  # its request already failed (deadline passed, or the replica left)
            call = transport.pending.popleft()
            replica.quiet = False
        if answer.error_code:
            self._complete(replica, call, None, _STATUS_CODES.get(answer.error_code, grpc.StatusCode.UNKNOWN))
        else:
            self._complete(replica, call, answer.response, None)

    def _on_end(self, replica: _Replica, transport: Transport, code: grpc.StatusCode) -> None:
        """The transport ended: its unanswered requests fail with `code`. One this pool did not close that
        ends unavailable or cancelled means the replica went away, and one refused means it will not take
        this gateway's stream: either way it leaves the rotation now, before a request is lost to it."""
        excluded, level = "", logging.INFO
        with self._lock:
            if replica.transport is transport:
                if code in REPLICA_GONE:
                    code = grpc.StatusCode.UNAVAILABLE
                    excluded = "ended its stream" if self._exclude(replica, self._now_s()) else ""
                elif code in STREAM_REFUSALS and self._exclude(replica, self._now_s()):
                    excluded = f"refused ActStream ({code.name})"
                    level = logging.DEBUG if replica.quiet else logging.INFO
                    replica.quiet = True
            unanswered = self._detach(replica, transport)
        if excluded:
            log.log(level, "inference replica %s %s; out of rotation until it is seen alive", replica.address, excluded)
        self._fail(replica, unanswered, code)

    def _watch_deadlines(self) -> None:
        """Fails the requests of every transport whose oldest request is past its deadline, and replaces it."""
        while not self._closing.wait(STREAM_DEADLINE_CHECK_S):
            now_s = self._now_s()
            overdue: list[tuple[_Replica, Transport, list[Call], Transport | None]] = []
            with self._lock:
                if self._closed:
                    return  # the channels are being closed: no transport may open now
                for replica in self._replicas.values():
                    transport = replica.transport
                    if transport is not None and transport.pending and transport.pending[0].deadline_s <= now_s:
                        # Replaced at once, so that the failures below make the dispatcher send on the new one.
                        calls = self._detach(replica, transport)
                        overdue.append((replica, transport, calls, self._attach_if_wanted(replica)))
            for replica, transport, calls, replacement in overdue:
                transport.close()
                if replacement is not None:
                    replacement.start()
                # The ones behind the oldest waited for a stalled replica: they fail with it.
                self._fail(replica, calls, grpc.StatusCode.DEADLINE_EXCEEDED)

    def _warm_up(self, replica: _Replica) -> None:
        """On a thread of its own: the warm-up call, then the act socket's lookup and the transport."""
        assert self._warm_up_request is not None
        started_s = self._now_s()
        code: grpc.StatusCode | None = None
        details = ""
        try:
            replica.endpoint.stub.Act(self._warm_up_request, timeout=WARM_UP_TIMEOUT_S)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
        except ValueError:  # the channel was closed under the call (the replica left the membership)
            code, details = grpc.StatusCode.CANCELLED, "the replica left"
        if code is None:
            # A pool with TLS never asks: the act socket has none (SECURITY.md).
            offered = None if self._security.tls else offered_by(replica.endpoint.stub, replica.address)
            # Opened before the replica enters the rotation, so that the first decision's request finds it open.
            with self._lock:
                replica.endpoint.act_socket = offered
                transport = self._attach_if_wanted(replica)
            if transport is not None:
                transport.start()
        now_s = self._now_s()
        took_ms = (now_s - started_s) * 1000.0
        unreachable = code == grpc.StatusCode.UNAVAILABLE
        with self._lock:
            replica.warming_up = False
            first_unreachable = unreachable and not replica.quiet
            if unreachable:
                replica.quiet = True
                self._exclude(replica, now_s)
        if code is None:
            level, outcome = logging.INFO, f"answered its warm-up call in {took_ms:.0f} ms; in rotation"
        elif unreachable:
            level = logging.INFO if first_unreachable else logging.DEBUG
            outcome = f"is unavailable ({details}); out of rotation until it is seen alive and warmed up"
        elif code != grpc.StatusCode.CANCELLED:
            level = logging.WARNING
            outcome = (
                f"failed its warm-up call after {took_ms:.0f} ms ({code.name}: {details}); in rotation, judged by "
                "its calls"
            )
        else:
            return  # it left the membership meanwhile
        log.log(level, "inference replica %s %s", replica.address, outcome)

    def _complete(
        self,
        replica: _Replica,
        call: Call,
        response: inference_pb2.ActResponse | None,
        code: grpc.StatusCode | None,
    ) -> None:
        """Records how `call` ended (an answer, or the status `code`) and tells its sender."""
        if response is not None and response.action >= self._action_count:
            log.warning(
                "replica %s answered action %d for a game with %d actions; counting it as a failure",
                replica.address,
                response.action,
                self._action_count,
            )
            response, code = None, grpc.StatusCode.OUT_OF_RANGE
        now_s = self._now_s()
        round_trip_s = now_s - call.sent_s
        excluded = False
        with self._lock:
            replica.in_flight -= 1
            if response is not None:
                # "Recently failed" is about the last call: one answered since a failure clears it. Each
                # replica's first call, which builds its network, can outlast its deadline; counted for a
                # second, it left every replica a second choice and a stalled one could not be hedged.
                replica.failed_at_s = -math.inf
                replica.measures.answered(response, round_trip_s)
            else:
                replica.measures.failures += 1
                replica.failed_at_s = now_s
                excluded = code == grpc.StatusCode.UNAVAILABLE and self._exclude(replica, now_s)
        if excluded:
            log.info("inference replica %s is unavailable; out of rotation until it is seen alive", replica.address)
        reply = None
        if response is not None:
            reply = ActionReply(response.action, response.checkpoint_version, response.behaviour_log_prob)
        call.on_done(CallOutcome(replica.address, reply, round_trip_s))

    @staticmethod
    def _exclude(replica: _Replica, now_s: float) -> bool:
        """Takes `replica` out of rotation until it is seen alive after `now_s`; True when that happened now.
        Lock held."""
        if replica.excluded_since_s is not None:
            return False
        replica.excluded_since_s = now_s
        return True

    # -- reading ------------------------------------------------------------------------------------

    def stats(self) -> list[env_gateway_pb2.ReplicaStats]:
        with self._lock:  # summarised outside it: the deciding thread's `send` takes it
            rows = [
                (replica, replica.excluded_since_s is not None, replica.transport.name if replica.transport else "")
                for replica in self._replicas.values()
            ]
        return [
            replica.measures.to_proto(replica.address, replica.in_flight, excluded, replica.warming_up, transport)
            for replica, excluded, transport in rows
        ]

    def round_trip_histograms(self) -> list[tuple[str, HistogramSnapshot]]:
        """Each replica's Act round-trip histogram (ms), for /metrics; read off the clock's thread."""
        with self._lock:
            replicas = list(self._replicas.values())
        return [(replica.address, replica.measures.latency_ms.histogram()) for replica in replicas]

    def close(self) -> None:
        """Closes every channel (cancelling calls in flight); statistics stay readable."""
        with self._lock:
            self._closed = True
            replicas = list(self._replicas.values())
        self._closing.set()
        for replica in replicas:
            self._close_replica(replica)
