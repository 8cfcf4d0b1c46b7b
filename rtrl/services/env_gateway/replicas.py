"""Inference replicas as the gateway sees them: a channel per address, Act with a deadline, membership.

`ReplicaPool` keeps one channel per replica address and sends Act requests where the dispatcher (with
its scheduler, see scheduler.py) says. `send` never blocks, and each outcome comes through the sender's
`on_done`.

Each replica gets one long-lived stream of requests and answers, which come in the order of the
requests; each request carries its timeout and each answer its error. When the replica offers an act
socket (rtrl/act_socket.py; its GetStatus, asked during its warm-up), that is the stream
(`_SocketStream`): `send` writes the request from the deciding thread itself, without waiting, and a
thread reading the socket delivers the answers. Otherwise it is an ActStream (`_Stream`): `send` puts
the request on it, gRPC's thread writes it, and a thread reading the stream delivers the answers. A
message on an open ActStream skips a call's set-up, about 0.4 ms of each round trip
(bench/paced_round_trip.py); the act socket also skips the hand-overs between gRPC's threads, which
halved the zero-cost round trip again (docs/staggering-benchmark.md). An act socket that cannot be
used (nothing listening, no hello, an answer that is not the protocol's) gives that replica ActStream
until it rejoins, with the requests that were waiting on the socket sent again there. A pool with TLS
or a token never uses an act socket: it carries neither.
The pool checks every `STREAM_DEADLINE_CHECK_S` that no stream's oldest request is past its deadline;
when one is (a stalled replica), the stream's requests fail with DEADLINE_EXCEEDED, the stream is
cancelled and a new one opened. Streams open off the deciding thread (`_ensure_stream`), except when a
request finds none (a pool that does not warm replicas up, or a stream that ended otherwise). A
replica that refuses the stream (UNIMPLEMENTED: an older replica; RESOURCE_EXHAUSTED: no worker thread
to spare) gets its requests, those refused included, as unary Act calls made one after the other by a
thread of its own (`_Caller`), until it rejoins. A replica that ends its stream (it died, or it is
shutting down) leaves the rotation at once, without a request lost to it.

Warm-up: a replica's first call builds its network (the observation's shape is known only then), which
can take longer than a decision's deadline, so that call would be lost. Given the observation's shape,
the pool first sends a joining replica one call on a blank observation with a generous deadline
(`WARM_UP_TIMEOUT_S`), and the replica enters rotation when that call has ended. The same happens when
a replica comes back after UNAVAILABLE (it may be a new process).

Membership: the pool is told which addresses exist and when each was last seen alive
(`set_members`, fed by membership.py from the Redis registry and RTRL_INFERENCE_ADDRESSES). A replica
whose call fails with UNAVAILABLE (refused connection, shutting down) is dropped from rotation at
once and comes back only when it is seen alive after that failure: a fresh heartbeat in the
registry, or its static address resolving again. So a dead replica stops getting calls as soon as
one call to it fails, well within one deadline. Replicas whose last call failed otherwise (deadline
exceeded, refused) within `RECENT_FAILURE_S` stay in rotation but are chosen only when no other
replica is idle.

`AddressResolver` turns RTRL_INFERENCE_ADDRESSES (host:port, a host may resolve to several
containers) into addresses every second.
"""

from __future__ import annotations

import logging
import math
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from rtrl.act_socket import HELLO, ConnectionEnded, configure, frame, receive_exactly, receive_length, shut
from rtrl.config import SettingsError
from rtrl.grpc_util import create_channel
from rtrl.metrics import HistogramSnapshot, Window
from rtrl.security import SecuritySettings
from rtrl.services.env_gateway.clock import ActionReply
from rtrl.services.env_gateway.dispatcher import CallOutcome, OnCallDone
from rtrl.services.env_gateway.scheduler import ReplicaView
from rtrl.services.env_gateway.settings import split_host_port
from rtrl.tensors import to_proto
from rtrl.v1 import env_gateway_pb2, inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

RECENT_FAILURE_S = 1.0
RESOLVE_INTERVAL_S = 1.0
# How often a channel whose replica cannot be reached tries to connect again. gRPC's default backs off
# up to 120 s, so a replica restarted on the same address (docker compose, a pod) could stay unreachable
# for minutes after it is seen alive again; retrying every second costs nothing against a dead address.
RECONNECT_BACKOFF_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# How often the pool looks for an ActStream whose oldest request is past its deadline (a stalled replica):
# such a request fails at most this long after its deadline, against exactly at it for a unary call.
STREAM_DEADLINE_CHECK_S = 0.01
# The replica's answers to ActStream that mean "call Act instead".
STREAM_REFUSALS = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED)
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Long enough for a replica to build and warm up a large network on a CPU (the 100M-parameter impala_cnn
# takes seconds); a replica that has not answered by then enters rotation anyway and is judged by its calls.
WARM_UP_TIMEOUT_S = 10.0
# How long a warmed-up replica may take to name its act socket (GetStatus) and a socket to connect, before
# the replica gets ActStream; and an accepted socket to answer the hello, before it counts as stalled.
ACT_SOCKET_CONNECT_TIMEOUT_S = 1.0
# The largest answer an act socket may send; answers are a few hundred bytes.
ACT_SOCKET_MAX_ANSWER_BYTES = 1 << 20


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
    batch_size: Window = field(default_factory=Window)
    inference_ms: Window = field(default_factory=Window)
    failed_at_s: float = -math.inf
    excluded_since_s: float | None = None
    """Set when a call failed with UNAVAILABLE; cleared when the replica is seen alive after it."""
    warming_up: bool = False
    """Its warm-up call is queued or in flight; it is out of rotation until that call ends."""
    warm_up_unreachable: bool = False
    """Its last warm-up call failed with UNAVAILABLE: a dead static address is logged once, not every second."""
    stream: _Stream | _SocketStream | None = None
    """Its open ActStream, on gRPC or on its act socket; None until one opens (after its warm-up, or with
    the next request)."""
    act_socket: tuple[str, int] | None = None
    """Where its act socket is, when its warm-up found it offers one and none failed since."""
    unary: bool = False
    """It refused ActStream: its requests go by Act on its caller thread until it rejoins."""

    @property
    def in_rotation(self) -> bool:
        """Warmed up, and not dropped after UNAVAILABLE."""
        return self.excluded_since_s is None and not self.warming_up

    caller: _Caller | None = None


@dataclass(frozen=True)
class _Call:
    request: inference_pb2.ActRequest
    sent_s: float
    deadline_s: float
    on_done: OnCallDone


class _WarmUp:
    """The work item of a warm-up call (see the module docstring)."""


class _Stream:
    """One replica's ActStream: requests go out in order, and a thread of its own reads their answers.

    `pending` holds the requests sent and not answered, oldest first, and is guarded by the pool's lock.
    The requests' writer is gRPC's thread for the stream, so `put` only queues.
    """

    def __init__(
        self,
        stub: inference_pb2_grpc.InferenceServiceStub,
        on_answer: Callable[[_Stream, inference_pb2.ActStreamResponse], None],
        on_end: Callable[[_Stream, grpc.StatusCode], None],
        name: str,
    ) -> None:
        self.pending: deque[_Call] = deque()
        self.ended = False
        """Set (under the pool's lock) when its reader saw it end: it must not become a replica's stream."""
        self._requests: queue.SimpleQueue[inference_pb2.ActStreamRequest | None] = queue.SimpleQueue()
        self._answers = stub.ActStream(iter(self._requests.get, None))
        threading.Thread(target=self._read, args=(on_answer, on_end), name=name, daemon=True).start()

    def put(self, request: inference_pb2.ActStreamRequest) -> None:
        self._requests.put(request)

    def close(self) -> None:
        """Cancels the stream; its reader ends with CANCELLED."""
        self._requests.put(None)
        self._answers.cancel()

    def _read(
        self,
        on_answer: Callable[[_Stream, inference_pb2.ActStreamResponse], None],
        on_end: Callable[[_Stream, grpc.StatusCode], None],
    ) -> None:
        try:
            for answer in self._answers:
                on_answer(self, answer)
        except grpc.RpcError as error:
            on_end(self, error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN)
            return
        # The replica ended the stream without an error: it is shutting down.
        on_end(self, grpc.StatusCode.UNAVAILABLE)


class _Unusable(Exception):
    """An act socket that cannot be used: not listening, unreachable, or not speaking the protocol."""


class _SocketStream:
    """One replica's act socket (rtrl/act_socket.py): the same messages as ActStream on a TCP connection.
    `put` writes a request from the deciding thread itself, and a thread of its own connects, then
    reads the answers, which come in the order of the requests.

    `pending` is guarded by the pool's lock, as `_Stream`'s. Connecting happens on the stream's thread,
    so `put` never waits: the requests put before the handshake are sent when it ends. A socket that
    cannot be used (no connection within ACT_SOCKET_CONNECT_TIMEOUT_S, closed before the hello, or an
    answer that is not the protocol's) ends the stream with `refused` set, and the pool gives the
    replica ActStream instead. A replica that accepts the connection but does not answer the hello is
    stalled, not refusing (its kernel accepts for it): that stream ends as a stalled ActStream does.
    `put` never blocks either: a request the connection cannot take whole at once (the replica stopped
    reading) closes the stream, as a stalled replica's would be.
    """

    def __init__(
        self,
        address: tuple[str, int],
        on_answer: Callable[[_SocketStream, inference_pb2.ActStreamResponse], None],
        on_end: Callable[[_SocketStream, grpc.StatusCode], None],
        name: str,
    ) -> None:
        self.pending: deque[_Call] = deque()
        self.ended = False
        """As `_Stream.ended`."""
        self.refused = ""
        """Why the socket could not be used; "" while it can."""
        self._address = address
        self._lock = threading.Lock()
        self._unsent: list[bytes] | None = []
        """Requests put before the handshake ended; None once connected."""
        self._connection: socket.socket | None = None
        self._closed = False
        threading.Thread(target=self._run, args=(on_answer, on_end), name=name, daemon=True).start()

    def put(self, request: inference_pb2.ActStreamRequest) -> None:
        data = frame(request.SerializeToString())
        with self._lock:
            if self._closed:
                return  # its reader ends the stream, and the request fails with the others
            if self._unsent is not None:
                self._unsent.append(data)
                return
            # Under the lock (a write that never waits), so that the reader cannot close the socket under it.
            assert self._connection is not None
            sent = self._send_now(self._connection, data)
        if not sent:
            self.close()

    def close(self) -> None:
        """Closes the connection; its reader ends with CANCELLED."""
        with self._lock:
            self._closed = True
            connection = self._connection
        if connection is not None:
            shut(connection)

    def _send_now(self, connection: socket.socket, data: bytes) -> bool:
        """Writes `data` without waiting; False when the connection could not take all of it (the replica
        stopped reading), and a request cannot be sent in part."""
        try:
            sent = connection.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            return True  # the connection broke: its reader ends the stream
        if sent < len(data):
            log.warning(
                "inference replica at %s:%d stopped reading its act socket (%d of %d bytes of a request went); "
                "closing it",
                *self._address,
                sent,
                len(data),
            )
            return False
        return True

    def _handshake(self) -> socket.socket:
        """Connects and exchanges the hello. Raises _Unusable when the socket cannot be used, TimeoutError
        when the replica accepted but did not answer the hello in time, and ConnectionEnded or OSError
        when the connection ended during the hello."""
        try:
            connection = socket.create_connection(self._address, timeout=ACT_SOCKET_CONNECT_TIMEOUT_S)
        except OSError as error:
            # Refused, unreachable, or no answer to the connection itself. A stalled replica's kernel still
            # accepts connections, so this is not a stall.
            raise _Unusable(f"{type(error).__name__}: {error}") from error
        with self._lock:
            # From now on `close` interrupts the hello.
            self._connection = connection
            closed = self._closed
        if closed:
            raise ConnectionEnded
        configure(connection)
        connection.sendall(HELLO)
        hello = receive_exactly(connection, len(HELLO))
        if hello != HELLO:
            raise _Unusable(f"it answered the hello with {hello!r}, not {HELLO!r}")
        connection.settimeout(None)
        return connection

    def _run(
        self,
        on_answer: Callable[[_SocketStream, inference_pb2.ActStreamResponse], None],
        on_end: Callable[[_SocketStream, grpc.StatusCode], None],
    ) -> None:
        try:
            connection = self._handshake()
        except _Unusable as error:
            self.refused = str(error)
            code = grpc.StatusCode.UNAVAILABLE
        except TimeoutError:
            # Accepted but no hello back (a stalled replica): the stream ends as a stalled ActStream does.
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        except (ConnectionEnded, OSError):
            with self._lock:
                closed = self._closed
            # Closed by the pool while connecting (its first request's deadline passed), or by the replica
            # before its hello: it has no room for another stream, or it does not speak the protocol.
            code = grpc.StatusCode.CANCELLED if closed else grpc.StatusCode.UNAVAILABLE
            if not closed:
                self.refused = "it closed the connection instead of answering the hello"
        else:
            with self._lock:
                # Under the lock, so that no request put meanwhile overtakes these.
                sent = all(self._send_now(connection, data) for data in self._unsent or ())
                self._unsent = None
            if not sent:
                self.close()
            code = self._read(connection, on_answer)
        with self._lock:
            if self._connection is not None:
                self._connection.close()
        on_end(self, code)

    def _read(
        self,
        connection: socket.socket,
        on_answer: Callable[[_SocketStream, inference_pb2.ActStreamResponse], None],
    ) -> grpc.StatusCode:
        """Delivers the answers until the connection ends; how it ended, as ActStream's reader would say."""
        try:
            while True:
                length = receive_length(connection)
                if length > ACT_SOCKET_MAX_ANSWER_BYTES:
                    raise ValueError(f"an answer of {length} bytes is over the limit of {ACT_SOCKET_MAX_ANSWER_BYTES}")
                on_answer(self, inference_pb2.ActStreamResponse.FromString(receive_exactly(connection, length)))
        except (ConnectionEnded, OSError):
            with self._lock:
                return grpc.StatusCode.CANCELLED if self._closed else grpc.StatusCode.UNAVAILABLE
        except (ValueError, DecodeError) as error:
            self.refused = f"it broke the protocol: {error}"
            return grpc.StatusCode.INTERNAL


class _Caller:
    """A thread that makes one replica's unary calls, blocking, one after the other: its warm-up, and its
    requests when it refused ActStream.

    Why not `stub.Act.future` from the thread that decides (the clock's, for next_idle): the sync API
    then polls completions on a channel "spin" thread that exits whenever no call is in flight and is
    started again by the next call, and `future()` waits for that thread to start.
    bench/act_call_paths.py measured (zero-cost replica, 60 calls/s, 2 loaded cores): `future()` holds
    the calling thread 0.9-1.2 ms at the median, so the clock would pay it, and still 0.4-0.7 ms with
    the spin thread kept alive by a long-lived stream on the channel, while the reply comes no sooner
    than with this thread (p50 1.1-1.9 ms against 1.2-1.3 ms). Handing the prepared request to this
    thread holds the clock 0.1 ms; the thread then blocks in the call, which polls on the calling
    thread, and puts the reply into the mailbox itself.
    """

    def __init__(self, address: str, work: Callable[[_Call | _WarmUp], None]) -> None:
        self._work = work
        self._queue: list[_Call | _WarmUp] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"rtrl-act {address}", daemon=True)
        self._thread.start()

    def put(self, item: _Call | _WarmUp) -> None:
        with self._ready:
            self._queue.append(item)
            self._ready.notify()

    def close(self) -> list[_Call | _WarmUp]:
        """Stops taking calls; returns the ones that were queued and never sent."""
        with self._ready:
            self._closed = True
            left, self._queue = self._queue, []
            self._ready.notify()
        return left

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                item = self._queue.pop(0)
            self._work(item)


class ReplicaPool:
    """Sends Act to the replica the dispatcher names; thread-safe (the dispatcher sends, gRPC threads complete)."""

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
        enters rotation (see the module docstring); None puts replicas in rotation at once."""
        self._gateway_id = gateway_id
        # TLS, token and message size of every channel to a replica (by default from the RTRL_* environment).
        self._security = security if security is not None else SecuritySettings.from_env()
        self._action_count = action_count
        self._warm_up_request = (
            None
            if observation_shape is None
            else self.prepare(np.zeros(tuple(observation_shape), observation_dtype), 0)
        )
        self._now_s = now_s
        self._lock = threading.Lock()
        self._replicas: dict[str, _Replica] = {}
        self._closed = False
        self._closing = threading.Event()
        self._stream_watch: threading.Thread | None = None
        self.set_addresses(addresses)

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Replaces the set of replicas with `addresses`, all seen alive now."""
        now_s = self._now_s()
        self.set_members({address: now_s for address in addresses})

    def set_members(self, last_seen_s: Mapping[str, float]) -> None:
        """Replaces the set of replicas: address -> when it was last seen alive (monotonic seconds).

        Kept replicas keep their channel and statistics; one dropped after UNAVAILABLE comes back
        when it was seen alive after that failure.
        """
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
                    replica = self._connect(address)
                    self._warm_up(replica)
                elif replica.excluded_since_s is not None and seen_s > replica.excluded_since_s:
                    replica.excluded_since_s = None
                    (retried if replica.warm_up_unreachable else readmitted).append(address)
                    self._warm_up(replica)
                replicas[address] = replica
            self._replicas = replicas
        if added or removed:
            log.info(
                "inference replicas now %s (added %s, removed %s)",
                list(last_seen_s),
                added,
                [replica.address for replica in removed],
            )
        if readmitted:
            verb = (
                "back in rotation"
                if self._warm_up_request is None
                else "warming them up before they rejoin the rotation"
            )
            log.info("inference replicas %s are seen alive again; %s", readmitted, verb)
        if retried:
            log.debug("inference replicas %s are seen alive again; trying their warm-up call again", retried)
        # Closing cancels a removed replica's call in flight; it completes as a failure.
        for replica in removed:
            self._close_replica(replica)

    def _connect(self, address: str) -> _Replica:
        channel = create_channel(address, self._security, RECONNECT_BACKOFF_OPTIONS)
        replica = _Replica(address, channel, inference_pb2_grpc.InferenceServiceStub(channel))
        replica.caller = _Caller(address, lambda item: self._work(replica, item))
        return replica

    def _warm_up(self, replica: _Replica) -> None:
        """Queues `replica`'s warm-up call, if this pool warms replicas up; called with the lock held.

        A replica that (re)joins may be a new version, so it is offered ActStream again."""
        replica.unary = False
        if self._warm_up_request is None or replica.warming_up:
            return
        assert replica.caller is not None
        replica.warming_up = True
        replica.caller.put(_WarmUp())

    def _close_replica(self, replica: _Replica) -> None:
        assert replica.caller is not None
        with self._lock:
            stream, replica.stream = replica.stream, None
            unanswered = self._take_pending(stream)
        if stream is not None:
            stream.close()
        unanswered += [item for item in replica.caller.close() if isinstance(item, _Call)]
        for call in unanswered:
            self._complete(replica, call, None, grpc.StatusCode.CANCELLED)
        replica.channel.close()

    @staticmethod
    def _take_pending(stream: _Stream | _SocketStream | None) -> list[_Call]:
        """Empties `stream`'s unanswered requests (an answer that still comes is then ignored); lock held."""
        if stream is None:
            return []
        calls = list(stream.pending)
        stream.pending.clear()
        return calls

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return list(self._replicas)

    def __len__(self) -> int:
        return len(self._replicas)

    def views(self, now_s: float) -> list[ReplicaView]:
        """The replicas in rotation (warmed up, not dropped after UNAVAILABLE), in a stable order."""
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

    def prepare(self, observation: np.ndarray, frame_index: int) -> inference_pb2.ActRequest:
        """The Act request for an observation; built once, sent to as many replicas as the scheduler says."""
        return inference_pb2.ActRequest(
            observation=to_proto(observation),
            gateway_id=self._gateway_id,
            frame_index=frame_index,
            action_count=self._action_count,
        )

    def send(self, address: str, request: inference_pb2.ActRequest, deadline_s: float, on_done: OnCallDone) -> bool:
        """Sends `request` to `address`; False (nothing sent) when it is gone or the deadline has passed."""
        sent_s = self._now_s()
        timeout_s = deadline_s - sent_s
        if timeout_s <= 0:
            return False
        with self._lock:
            replica = None if self._closed else self._replicas.get(address)
            if replica is None or replica.caller is None:
                return False
            replica.in_flight += 1
            replica.requests += 1
            call = _Call(request, sent_s, deadline_s, on_done)
            if replica.unary:
                replica.caller.put(call)
                return True
            watch = None
            stream = replica.stream
            if stream is None:
                # Rare: streams open after the warm-up and after a stall, off this thread (`_ensure_stream`).
                stream = self._new_stream(replica)
                watch = self._attach(replica, stream)
            # Under the lock, so that the requests go out in the order of `pending`.
            self._enqueue(stream, call, sent_s)
        if watch is not None:
            watch.start()
        return True

    @staticmethod
    def _enqueue(stream: _Stream | _SocketStream, call: _Call, now_s: float) -> None:
        """Puts `call` on `stream` with the time its deadline leaves from `now_s`; lock held."""
        stream.pending.append(call)
        stream.put(inference_pb2.ActStreamRequest(request=call.request, timeout_ms=(call.deadline_s - now_s) * 1000.0))

    def _wants_stream(self, replica: _Replica) -> bool:
        """`replica` is in the pool, not out of rotation, asked by ActStream, and has no stream; lock held."""
        return (
            not self._closed
            and self._replicas.get(replica.address) is replica
            and replica.stream is None
            and not replica.unary
            and replica.excluded_since_s is None
        )

    def _ensure_stream(self, replica: _Replica) -> None:
        """Opens `replica`'s ActStream if it should have one and has none. Its threads start outside the
        lock: starting a thread can take milliseconds on a busy machine, and the deciding thread's `send`
        takes the lock."""
        with self._lock:
            if not self._wants_stream(replica):
                return
        stream = self._new_stream(replica)
        with self._lock:
            # A stream that already ended (an act socket refused at once) is not attached: its end was
            # handled while it was nobody's stream, and no request may wait on it.
            opened = self._wants_stream(replica) and not stream.ended
            watch = self._attach(replica, stream) if opened else None
        if not opened:
            stream.close()  # another thread opened one meanwhile, the replica left, or it ended
        if watch is not None:
            watch.start()

    def _new_stream(self, replica: _Replica) -> _Stream | _SocketStream:
        """An ActStream to `replica`: on its act socket when it offers one, else on gRPC."""
        if replica.act_socket is not None:
            return _SocketStream(
                replica.act_socket,
                lambda stream, answer: self._on_answer(replica, stream, answer),
                lambda stream, code: self._on_stream_end(replica, stream, code),
                name=f"rtrl-act-socket {replica.address}",
            )
        return _Stream(
            replica.stub,
            lambda stream, answer: self._on_answer(replica, stream, answer),
            lambda stream, code: self._on_stream_end(replica, stream, code),
            name=f"rtrl-act-stream {replica.address}",
        )

    def _attach(self, replica: _Replica, stream: _Stream | _SocketStream) -> threading.Thread | None:
        """Makes `stream` the replica's; lock held. Returns the deadline check's thread for the caller to
        start after the lock when this is the pool's first stream."""
        replica.stream = stream
        if self._stream_watch is not None:
            return None
        self._stream_watch = threading.Thread(target=self._watch_streams, name="rtrl-act-deadlines", daemon=True)
        return self._stream_watch

    def _on_answer(
        self, replica: _Replica, stream: _Stream | _SocketStream, answer: inference_pb2.ActStreamResponse
    ) -> None:
        """Runs on the stream's reader thread: the answer to the stream's oldest request."""
        with self._lock:
            if not stream.pending:
                return  # its request already failed (deadline passed, or the replica left)
            call = stream.pending.popleft()
        if answer.error_code:
            self._complete(replica, call, None, _STATUS_CODES.get(answer.error_code, grpc.StatusCode.UNKNOWN))
        else:
            self._complete(replica, call, answer.response, None)

    def _on_stream_end(self, replica: _Replica, stream: _Stream | _SocketStream, code: grpc.StatusCode) -> None:
        """Runs on the stream's reader thread when the stream ended: its unanswered requests fail with `code`,
        or, when the replica refused the stream, go again as unary calls (it answered none of them).

        A stream this pool did not close that ends unavailable or cancelled means the replica went away
        (it died, or it is shutting down): it leaves the rotation now, before a request is lost to it."""
        with self._lock:
            stream.ended = True
        if isinstance(stream, _SocketStream) and stream.refused:
            self._leave_act_socket(replica, stream)
            return
        with self._lock:
            ended_by_replica = replica.stream is stream
            if ended_by_replica:
                replica.stream = None
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    code = grpc.StatusCode.UNAVAILABLE
                    if self._exclude_if_unavailable(replica, code, self._now_s()):
                        log.info(
                            "inference replica %s ended its stream; out of rotation until it is seen alive",
                            replica.address,
                        )
            unanswered = self._take_pending(stream)
            refused = code in STREAM_REFUSALS
            newly_refused = refused and not replica.unary
            if refused:
                replica.unary = True
                assert replica.caller is not None
                for call in unanswered:
                    replica.caller.put(call)
                unanswered = []
        if newly_refused:
            log.info(
                "inference replica %s refused ActStream (%s); calling Act instead until it rejoins",
                replica.address,
                code.name,
            )
        for call in unanswered:
            self._complete(replica, call, None, code)

    def _leave_act_socket(self, replica: _Replica, stream: _SocketStream) -> None:
        """`replica`'s act socket could not be used: it gets ActStream on gRPC until it rejoins, and the
        requests left on the socket go again there (none went out, or none was answered properly)."""
        with self._lock:
            logged = replica.act_socket is not None
            replica.act_socket = None
            unanswered = self._take_pending(stream)
            if replica.stream is stream:
                replica.stream = None
        if logged:
            log.warning(
                "inference replica %s offers an act socket that cannot be used (%s); using ActStream instead",
                replica.address,
                stream.refused,
            )
        self._ensure_stream(replica)
        failed: list[_Call] = []
        with self._lock:
            actstream, now_s = replica.stream, self._now_s()
            for call in unanswered:
                if actstream is None or call.deadline_s <= now_s:
                    failed.append(call)
                    continue
                self._enqueue(actstream, call, now_s)
        for call in failed:
            self._complete(replica, call, None, grpc.StatusCode.DEADLINE_EXCEEDED)

    def _watch_streams(self) -> None:
        """Fails the requests of every stream whose oldest request is past its deadline, and cancels it."""
        while not self._closing.wait(STREAM_DEADLINE_CHECK_S):
            now_s = self._now_s()
            overdue: list[tuple[_Replica, _Stream | _SocketStream, list[_Call]]] = []
            with self._lock:
                if self._closed:
                    return  # the channels are being closed: no stream may open now
                for replica in self._replicas.values():
                    stream = replica.stream
                    if stream is not None and stream.pending and stream.pending[0].deadline_s <= now_s:
                        replica.stream = None
                        overdue.append((replica, stream, self._take_pending(stream)))
            for replica, stream, calls in overdue:
                stream.close()
                # Its replacement opens here, before the failures below make the dispatcher send again, so
                # that the deciding thread finds it open.
                self._ensure_stream(replica)
                # The ones behind the oldest waited for a stalled replica: they fail with it.
                for call in calls:
                    self._complete(replica, call, None, grpc.StatusCode.DEADLINE_EXCEEDED)

    def _work(self, replica: _Replica, item: _Call | _WarmUp) -> None:
        """Runs on the replica's caller thread."""
        if isinstance(item, _Call):
            self._call(replica, item)
        else:
            self._call_warm_up(replica)

    def _call_warm_up(self, replica: _Replica) -> None:
        assert self._warm_up_request is not None
        started_s = self._now_s()
        code: grpc.StatusCode | None = None
        details = ""
        try:
            replica.stub.Act(self._warm_up_request, timeout=WARM_UP_TIMEOUT_S)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
        except ValueError:  # the channel was closed under the call (the replica left the membership)
            code, details = grpc.StatusCode.CANCELLED, "the replica left"
        if code is None:
            self._find_act_socket(replica)
            # Opened before the replica enters the rotation, so that the first decision's request finds it
            # open (and no request opens a second one meanwhile).
            self._ensure_stream(replica)
        now_s = self._now_s()
        took_ms = (now_s - started_s) * 1000.0
        unreachable = code == grpc.StatusCode.UNAVAILABLE
        with self._lock:
            replica.warming_up = False
            first_unreachable = unreachable and not replica.warm_up_unreachable
            replica.warm_up_unreachable = unreachable
            self._exclude_if_unavailable(replica, code, now_s)
        if code is None:
            log.info("inference replica %s answered its warm-up call in %.0f ms; in rotation", replica.address, took_ms)
        elif unreachable:
            log.log(
                logging.INFO if first_unreachable else logging.DEBUG,
                "inference replica %s is unavailable (%s); out of rotation until it is seen alive and warmed up",
                replica.address,
                details,
            )
        elif code != grpc.StatusCode.CANCELLED:
            log.warning(
                "inference replica %s failed its warm-up call after %.0f ms (%s: %s); in rotation, judged by its calls",
                replica.address,
                took_ms,
                code.name,
                details,
            )

    def _find_act_socket(self, replica: _Replica) -> None:
        """Asks `replica` (GetStatus, on its caller thread, during its warm-up) whether it offers an act
        socket. A pool with TLS or a token uses none: the socket carries neither."""
        if self._security.tls or self._security.token:
            return
        try:
            status = replica.stub.GetStatus(
                inference_pb2.InferenceServiceGetStatusRequest(), timeout=ACT_SOCKET_CONNECT_TIMEOUT_S
            )
            address = (split_host_port(replica.address)[0], status.act_socket_port) if status.act_socket_port else None
        except (grpc.RpcError, ValueError, SettingsError) as error:
            # ValueError: the channel was closed under the call (the replica left the membership).
            log.debug("inference replica %s did not say whether it offers an act socket (%s)", replica.address, error)
            address = None
        with self._lock:
            replica.act_socket = address

    def _call(self, replica: _Replica, call: _Call) -> None:
        """Runs on the replica's caller thread: the blocking unary call and its outcome."""
        try:
            timeout_s = call.deadline_s - self._now_s()
            if timeout_s <= 0:
                raise _TooLate
            response: inference_pb2.ActResponse = replica.stub.Act(call.request, timeout=timeout_s)
        except (grpc.RpcError, ValueError, _TooLate) as error:
            # ValueError: the channel was closed under the call (the replica left the membership).
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.CANCELLED
            if isinstance(error, _TooLate):
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            self._complete(replica, call, None, code)
            return
        self._complete(replica, call, response, None)

    def _complete(
        self,
        replica: _Replica,
        call: _Call,
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
                replica.replies += 1
                # "Recently failed" is about the last call: one answered since a failure clears it. Each
                # replica's first call, which builds its network, can outlast its deadline; counted for a
                # second, it left every replica a second choice and a stalled one could not be hedged.
                replica.failed_at_s = -math.inf
                replica.latency_ms.add(round_trip_s * 1000.0)
                replica.checkpoint_version = response.checkpoint_version
                replica.batch_size.add(response.batch_size)
                replica.inference_ms.add(response.inference_ms)
            else:
                replica.failures += 1
                replica.failed_at_s = now_s
                excluded = self._exclude_if_unavailable(replica, code, now_s)
        if excluded:
            log.info("inference replica %s is unavailable; out of rotation until it is seen alive", replica.address)
        reply = None
        if response is not None:
            reply = ActionReply(response.action, response.checkpoint_version, response.behaviour_log_prob)
        call.on_done(CallOutcome(replica.address, reply, round_trip_s))

    @staticmethod
    def _exclude_if_unavailable(replica: _Replica, code: grpc.StatusCode | None, now_s: float) -> bool:
        """A call (or warm-up) that failed with UNAVAILABLE takes `replica` out of rotation until it is seen
        alive after `now_s`; True when that happened now. Called with the lock held."""
        if code != grpc.StatusCode.UNAVAILABLE or replica.excluded_since_s is not None:
            return False
        replica.excluded_since_s = now_s
        return True

    def stats(self) -> list[env_gateway_pb2.ReplicaStats]:
        with self._lock:
            transports = [(replica, _transport(replica)) for replica in self._replicas.values()]
        return [
            env_gateway_pb2.ReplicaStats(
                address=replica.address,
                requests=replica.requests,
                replies=replica.replies,
                failures=replica.failures,
                in_flight=replica.in_flight,
                latency_ms=replica.latency_ms.summary(),
                checkpoint_version=replica.checkpoint_version,
                batch_size=replica.batch_size.summary(),
                inference_ms=replica.inference_ms.summary(),
                excluded=replica.excluded_since_s is not None,
                warming_up=replica.warming_up,
                transport=transport,
            )
            for replica, transport in transports
        ]

    def round_trip_histograms(self) -> list[tuple[str, HistogramSnapshot]]:
        """Each replica's Act round-trip histogram (ms), for /metrics; read off the clock's thread."""
        with self._lock:
            replicas = list(self._replicas.values())
        return [(replica.address, replica.latency_ms.histogram()) for replica in replicas]

    def close(self) -> None:
        """Closes every channel (cancelling calls in flight); statistics stay readable."""
        with self._lock:
            self._closed = True
            replicas = list(self._replicas.values())
        self._closing.set()
        for replica in replicas:
            self._close_replica(replica)


def _transport(replica: _Replica) -> str:
    """How `replica` is asked now (ReplicaStats.transport); lock held."""
    if replica.unary:
        return "Act"
    if isinstance(replica.stream, _SocketStream):
        return "act socket"
    return "ActStream" if replica.stream is not None else ""


class _TooLate(Exception):
    """The call waited for its caller thread past its deadline, so it is not sent."""


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
        if not self._targets:
            return
        self._thread = threading.Thread(target=self._run, name="rtrl-resolver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.resolve_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
