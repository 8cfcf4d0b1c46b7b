"""The replica's act socket: ActStream's messages on a plain TCP connection (protocol: rtrl/act_socket.py).

One thread accepts connections and one thread per connection reads its requests and answers each in
turn with the same answer ActStream gives (`InferenceServicer.answer`), so its calls batch with every
other call. Each connection counts as an open stream (`OpenStreams`): it takes one of the same places
and ends the same way when the replica stops, an idle one at once, one computing an answer after
sending it. A connection that does not open with the protocol's hello is closed and logged; an
undecodable request gets an INVALID_ARGUMENT answer and the connection goes on; a frame over the size
limit gets one and the connection is closed.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import threading
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from rtrl.act_socket import (
    HELLO,
    MAX_TOKEN_BYTES,
    ConnectionEnded,
    configure,
    frame,
    receive_exactly,
    receive_length,
    shut,
)
from rtrl.services.inference.streams import OpenStreams, StreamRefused
from rtrl.v1 import inference_pb2

log = logging.getLogger(__name__)

# How long a new connection may take to send the hello before it is closed.
HELLO_TIMEOUT_S = 5.0
# After refusing a frame over the limit, how long (and how much) the replica reads on before it closes,
# so that the bytes left unread do not reset the connection before the client has read the refusal.
DRAIN_S = 1.0
DRAIN_BYTES = 1 << 20

Answer = Callable[[inference_pb2.ActStreamRequest], inference_pb2.ActStreamResponse]


def refusal(message: str) -> bytes:
    """An INVALID_ARGUMENT answer, as a frame ready to send."""
    answer = inference_pb2.ActStreamResponse(
        error_code=grpc.StatusCode.INVALID_ARGUMENT.value[0], error_message=message
    )
    return frame(answer.SerializeToString())


class ActSocketServer:
    """Listens on `host:port` (0 picks a free port; `port` then says which) and answers with `answer`."""

    def __init__(
        self,
        answer: Answer,
        streams: OpenStreams,
        host: str,
        port: int,
        max_frame_bytes: int,
        on_invalid: Callable[[], None],
        token: str = "",
    ) -> None:
        """`token`: the one a client's hello must carry, as gRPC's calls must (rtrl/security.py); "" accepts any."""
        self._answer = answer
        self._token = token.encode()
        self._streams = streams
        self._max_frame_bytes = max_frame_bytes
        self._on_invalid = on_invalid
        try:
            family, _, _, _, address = socket.getaddrinfo(
                host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            self._listener = socket.create_server(address, family=family)
        except OSError as error:
            raise OSError(
                f"cannot listen for the act socket on {host}:{port} ({error.strerror or error}); set "
                "RTRL_INFERENCE_ACT_SOCKET_PORT to a free port, 0 for any free one, or -1 for no act socket"
            ) from error
        self.host: str = self._listener.getsockname()[0]
        self.port: int = self._listener.getsockname()[1]
        self._accepting = threading.Thread(target=self._accept, name="rtrl-act-socket", daemon=True)

    def start(self) -> None:
        self._accepting.start()

    def stop(self) -> None:
        """Takes no new connection; the open ones end with `OpenStreams.stop`, which the server calls."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self._accepting.is_alive():
            self._accepting.join(timeout=5.0)

    def _accept(self) -> None:
        while True:
            try:
                connection, peer = self._listener.accept()
            except OSError:
                return  # closed by `stop`
            threading.Thread(
                target=self._serve, args=(connection, peer), name=f"rtrl-act-socket {peer}", daemon=True
            ).start()

    def _serve(self, connection: socket.socket, peer: tuple) -> None:
        with connection:
            configure(connection)
            connection.settimeout(HELLO_TIMEOUT_S)
            try:
                hello = receive_exactly(connection, len(HELLO))
                if hello != HELLO:
                    self._refuse(peer, f"opened with {hello!r}, not the rtrl act socket's hello {HELLO!r}")
                    return
                length = receive_length(connection)
                if length > MAX_TOKEN_BYTES:
                    self._refuse(peer, f"sent a token of {length} bytes, over the limit of {MAX_TOKEN_BYTES}")
                    return
                token = receive_exactly(connection, length)
            except (ConnectionEnded, OSError):
                return  # gone, or silent for HELLO_TIMEOUT_S
            if self._token and not hmac.compare_digest(token, self._token):
                self._refuse(peer, "sent a wrong or missing token (RTRL_AUTH_TOKEN)")
                return
            connection.settimeout(None)
            try:
                with self._streams.open(connection, lambda: shut(connection)):
                    connection.sendall(HELLO)
                    self._answer_requests(connection)
            except StreamRefused as refused:
                log.info("act socket: refused %s (%s)", peer[0], refused.message)
            except (ConnectionEnded, OSError):
                pass  # the gateway closed it, or `OpenStreams.stop` ended it while idle

    def _refuse(self, peer: tuple, why: str) -> None:
        """Counts and logs a connection closed before the hello's answer."""
        self._on_invalid()
        log.warning("act socket: %s %s; connection closed", peer[0], why)

    def _answer_requests(self, connection: socket.socket) -> None:
        while True:
            length = receive_length(connection)
            self._streams.busy(connection)
            if length > self._max_frame_bytes:
                self._on_invalid()
                connection.sendall(
                    refusal(
                        f"a frame of {length} bytes is over this replica's limit of {self._max_frame_bytes} "
                        "bytes (RTRL_GRPC_MAX_MESSAGE_BYTES); send smaller observations or raise the limit; "
                        "the connection is closed"
                    )
                )
                _drain(connection)
                return
            body = receive_exactly(connection, length)
            try:
                request = inference_pb2.ActStreamRequest.FromString(body)
            except DecodeError:
                self._on_invalid()
                connection.sendall(
                    refusal(
                        f"the frame of {length} bytes is not a serialized rtrl.v1.ActStreamRequest; send "
                        "ActStreamRequest messages, each prefixed with its length (rtrl/act_socket.py)"
                    )
                )
            else:
                connection.sendall(frame(self._answer(request).SerializeToString()))
            if not self._streams.idle(connection):
                return


def _drain(connection: socket.socket) -> None:
    """Ends the replica's side and discards what the client still sends, for DRAIN_S or DRAIN_BYTES at
    most: closing with unread bytes would reset the connection, and the client could lose the answer
    sent just before."""
    connection.shutdown(socket.SHUT_WR)
    connection.settimeout(DRAIN_S)
    drained = 0
    with contextlib.suppress(OSError):
        while drained < DRAIN_BYTES and (chunk := connection.recv(65536)):
            drained += len(chunk)
