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
from rtrl.services.env_gateway.transports.base import OnAnswer, OnEnd, Transport
from rtrl.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

# How long a warmed-up replica may take to name its act socket (GetStatus) and a socket to connect, before
# the replica gets ActStream; and an accepted socket to answer the hello, before it counts as stalled.
CONNECT_TIMEOUT_S = 1.0
# The largest answer an act socket may send; answers are a few hundred bytes.
MAX_ANSWER_BYTES = 1 << 20


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
    handshake are sent when it ends. A socket that
    cannot be used (no connection within CONNECT_TIMEOUT_S, closed before the hello, or an
    answer that is not the protocol's) ends the stream with `refused` set, and the pool gives the
    replica ActStream instead. A replica that accepts the connection but does not answer the hello is
    stalled, not refusing (its kernel accepts for it): that stream ends as a stalled ActStream does.
    `put` never blocks either: a request the connection cannot take whole at once (the replica stopped
    reading) closes the stream, as a stalled replica's would be.
    """

    name = "act socket"

    def __init__(
        self, address: tuple[str, int], token: str, on_answer: OnAnswer, on_end: OnEnd, thread_name: str
    ) -> None:
        super().__init__()
        self._address = address
        self._token = token
        self._lock = threading.Lock()
        self._unsent: list[bytes] | None = []
        """Requests put before the handshake ended; None once connected."""
        self._connection: socket.socket | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(on_answer, on_end), name=thread_name, daemon=True)

    def start(self) -> None:
        """Connects on the transport's own thread, then reads the answers there."""
        self._thread.start()

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
        connection.sendall(client_hello(self._token))
        hello = receive_exactly(connection, len(HELLO))
        if hello != HELLO:
            raise _Unusable(f"it answered the hello with {hello!r}, not {HELLO!r}")
        connection.settimeout(None)
        return connection

    def _run(self, on_answer: OnAnswer, on_end: OnEnd) -> None:
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
            # before its hello: it has no room for another stream, it does not speak the protocol, or it
            # does not accept this gateway's token (ActStream's calls then say UNAUTHENTICATED).
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

    def _read(self, connection: socket.socket, on_answer: OnAnswer) -> grpc.StatusCode:
        """Delivers the answers until the connection ends; how it ended, as ActStream's reader would say."""
        try:
            while True:
                length = receive_length(connection)
                if length > MAX_ANSWER_BYTES:
                    raise ValueError(f"an answer of {length} bytes is over the limit of {MAX_ANSWER_BYTES}")
                on_answer(self, inference_pb2.ActStreamResponse.FromString(receive_exactly(connection, length)))
        except (ConnectionEnded, OSError):
            with self._lock:
                return grpc.StatusCode.CANCELLED if self._closed else grpc.StatusCode.UNAVAILABLE
        except (ValueError, DecodeError) as error:
            self.refused = f"it broke the protocol: {error}"
            return grpc.StatusCode.INTERNAL
