"""The act socket transport: ActStream's messages on a plain TCP connection the replica offers
(the protocol: rtrl/act_socket.py; the replica's side: rtrl/services/inference/act_socket.py).

On gRPC's sync API each message passes through several threads on both sides, and each hand-over
wakes a thread; here the deciding thread writes the request and one thread on each side reads, which
halves the gateway's own overhead per decision (docs/transports.md). A replica names its act socket in
GetStatus (`offered_by`). The hello carries the same token as gRPC's calls; the socket has no TLS, so
a pool with TLS never asks (SECURITY.md).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import grpc
from google.protobuf.message import DecodeError

from rtrl.act_socket import (
    HELLO,
    ConnectionEnded,
    client_hello,
    configure,
    frame,
    receive_exactly,
    receive_length,
    shut,
)
from rtrl.config import SettingsError
from rtrl.services.env_gateway.settings import split_host_port
from rtrl.services.env_gateway.transports.act_stream import ActStream
from rtrl.services.env_gateway.transports.base import Endpoint, OnAnswer, OnEnd, Transport
from rtrl.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

# How long a warmed-up replica may take to name its act socket (GetStatus) and a socket to connect, before
# the replica gets ActStream; and an accepted socket to answer the hello, before it counts as stalled.
CONNECT_TIMEOUT_S = 1.0
# The largest answer an act socket may send; answers are a few hundred bytes.
MAX_ANSWER_BYTES = 1 << 20
# The least timeout a request handed to ActStream carries (the replica refuses 0).
MIN_TIMEOUT_MS = 0.001


def offered_by(stub: inference_pb2_grpc.InferenceServiceStub, replica_address: str) -> tuple[str, int] | None:
    """Where the replica at `replica_address` offers its act socket (its GetStatus says), or None when it
    offers none or does not say in time."""
    try:
        status = stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=CONNECT_TIMEOUT_S)
        if not status.act_socket_port:
            return None
        return split_host_port(replica_address)[0], status.act_socket_port
    except (grpc.RpcError, ValueError, SettingsError) as error:
        # ValueError: the channel was closed under the call (the replica left the membership).
        log.debug("inference replica %s did not say whether it offers an act socket (%s)", replica_address, error)
        return None


class _Unusable(Exception):
    """An act socket that cannot be used: not listening, unreachable, or not speaking the protocol."""


class ActSocket(Transport):
    """One replica's act socket: `put` writes a request from the deciding thread itself, and a thread of
    its own connects, then reads the answers, which come in the order of the requests.

    Connecting happens on the transport's thread, so `put` never waits: the requests put before the
    handshake are sent when it ends. A socket that cannot be used (no connection within
    CONNECT_TIMEOUT_S, or closed before the hello, or a hello that is not the protocol's) hands those
    requests to an ActStream on the replica's channel and goes on as that stream; and the endpoint
    forgets the socket, so the replica's next transports are ActStream until its next warm-up. An
    answer that breaks the protocol ends the stream, failing its requests, and the endpoint forgets the
    socket too. A replica that accepts the connection but does not answer the hello is stalled, not
    refusing (its kernel accepts for it): that stream ends as a stalled ActStream does. `put` never
    blocks either: a request the connection cannot take whole at once (the replica stopped reading)
    closes the stream, as a stalled replica's would be.
    """

    name = "act socket"

    def __init__(self, endpoint: Endpoint, on_answer: OnAnswer, on_end: OnEnd) -> None:
        super().__init__()
        assert endpoint.act_socket is not None
        self._endpoint = endpoint
        self._address = endpoint.act_socket
        self._lock = threading.Lock()
        self._unsent: list[tuple[inference_pb2.ActStreamRequest, bytes, float]] | None = []
        """Requests put before the handshake ended, framed, with when; None once connected."""
        self._connection: socket.socket | None = None
        self._stream: ActStream | None = None
        """What it became when the socket could not be used."""
        self._closed = False
        name = f"rtrl-act-socket {endpoint.address}"
        self._thread = threading.Thread(target=self._run, args=(on_answer, on_end), name=name, daemon=True)

    def start(self) -> None:
        """Connects on the transport's own thread, then reads the answers there."""
        self._thread.start()

    def put(self, request: inference_pb2.ActStreamRequest) -> None:
        data = frame(request.SerializeToString())
        with self._lock:
            if self._closed:
                return  # its reader ends the stream, and the request fails with the others
            if self._stream is not None:
                self._stream.put(request)
                return
            if self._unsent is not None:
                self._unsent.append((request, data, time.monotonic()))
                return
            # Under the lock (a write that never waits), so that the reader cannot close the socket under it.
            assert self._connection is not None
            sent = self._send_now(self._connection, data)
        if not sent:
            self.close()

    def close(self) -> None:
        """Closes the connection (or the stream it became); its reader ends with CANCELLED."""
        with self._lock:
            self._closed = True
            connection, stream = self._connection, self._stream
        if connection is not None:
            shut(connection)
        if stream is not None:
            stream.close()

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
            connection = socket.create_connection(self._address, timeout=CONNECT_TIMEOUT_S)
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
        connection.sendall(client_hello(self._endpoint.token))
        hello = receive_exactly(connection, len(HELLO))
        if hello != HELLO:
            raise _Unusable(f"it answered the hello with {hello!r}, not {HELLO!r}")
        connection.settimeout(None)
        return connection

    def _run(self, on_answer: OnAnswer, on_end: OnEnd) -> None:
        unusable, code = "", grpc.StatusCode.UNAVAILABLE
        try:
            connection = self._handshake()
        except _Unusable as error:
            unusable = str(error)
        except TimeoutError:
            # Accepted but no hello back (a stalled replica): the stream ends as a stalled ActStream does.
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        except (ConnectionEnded, OSError):
            # Closed by the pool while connecting (its first request's deadline passed), or by the replica
            # before its hello: it has no room for another stream, it does not speak the protocol, or it
            # does not accept this gateway's token (ActStream's calls then say UNAUTHENTICATED).
            unusable = "it closed the connection instead of answering the hello"
        else:
            with self._lock:
                # Under the lock, so that no request put meanwhile overtakes these.
                sent = all(self._send_now(connection, data) for _, data, _ in self._unsent or ())
                self._unsent = None
            if not sent:
                self.close()
            code = self._read(connection, on_answer)
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            closed = self._closed
        if unusable and not closed:
            self._become_act_stream(unusable, on_answer, on_end)
        else:
            on_end(self, grpc.StatusCode.CANCELLED if closed else code)

    def _become_act_stream(self, why: str, on_answer: OnAnswer, on_end: OnEnd) -> None:
        """The socket cannot be used: its requests go on an ActStream, which carries this transport's
        requests and answers from now on."""
        self._forget_socket(why)
        stream = ActStream(
            self._endpoint, lambda _, answer: on_answer(self, answer), lambda _, code: on_end(self, code)
        )
        with self._lock:
            now_s = time.monotonic()
            for request, _, put_s in self._unsent or ():
                # One already past its deadline still goes, refused by the replica at once, so that the
                # answers stay in the order of the requests.
                request.timeout_ms = max(request.timeout_ms - (now_s - put_s) * 1000.0, MIN_TIMEOUT_MS)
                stream.put(request)
            self._unsent = None
            self._stream = stream
            self.name = stream.name
            if self._closed:
                stream.close()  # closed since `_run` looked: the stream ends at once, with CANCELLED
        stream.start()

    def _forget_socket(self, why: str) -> None:
        """The replica's next transports are ActStream (until its next warm-up); said once."""
        if self._endpoint.act_socket is not None:
            self._endpoint.act_socket = None
            log.warning(
                "inference replica %s offers an act socket that cannot be used (%s); using ActStream instead",
                self._endpoint.address,
                why,
            )

    def _read(self, connection: socket.socket, on_answer: OnAnswer) -> grpc.StatusCode:
        """Delivers the answers until the connection ends; how it ended, as ActStream's reader would say."""
        try:
            while True:
                length = receive_length(connection)
                if length > MAX_ANSWER_BYTES:
                    raise ValueError(f"an answer of {length} bytes is over the limit of {MAX_ANSWER_BYTES}")
                on_answer(self, inference_pb2.ActStreamResponse.FromString(receive_exactly(connection, length)))
        except (ConnectionEnded, OSError):
            return grpc.StatusCode.UNAVAILABLE
        except (ValueError, DecodeError) as error:
            # Its requests fail: whether the replica acted on them cannot be known.
            self._forget_socket(f"it broke the protocol: {error}")
            return grpc.StatusCode.INTERNAL
