"""The act socket's wire format: ActStream's messages, length-prefixed, on a plain TCP connection.

A gateway asks a replica for actions once per decision, 60 times a second, and waits for each answer.
On gRPC's sync API each such message passes through several threads on both sides, and each hand-over
wakes a thread; on this socket the deciding thread writes the request and one thread on each side
reads, which halves the gateway's own overhead per decision (docs/transports.md). So a replica also
answers on an act socket, and the gateway uses it when the replica offers one; everything else (Act,
GetStatus, health, reflection) stays on gRPC. The socket checks the same token as gRPC, in its hello;
it has no TLS (SECURITY.md says why), so a replica with TLS on offers none, and its gateways use
ActStream.

The protocol, version 2:
1. The client connects and sends `HELLO` (8 bytes: "rtrlact" and the version byte 2), then the token
   as a frame (below; empty without one). The server answers with the same 8 bytes, or closes the
   connection: not this protocol or version, a token it does not accept (a server without a token
   accepts any), no hello within 5 s, or no room for another connection.
2. The client sends frames, each one `rtrl.v1.ActStreamRequest` serialized and prefixed with its length
   (4 bytes, unsigned, big-endian); the server answers each with one `rtrl.v1.ActStreamResponse` frame,
   in the order of the requests, exactly as on ActStream: a refused request gets an answer with its
   `error_code` and `error_message`, and the connection goes on. So does a frame that is not an
   `ActStreamRequest` (an INVALID_ARGUMENT answer).
3. A frame longer than the server's limit (RTRL_GRPC_MAX_MESSAGE_BYTES, as for gRPC) gets an
   INVALID_ARGUMENT answer and the connection is closed, since the bytes that follow cannot be read.
4. Either side may close the connection at any time; the server closes its connections when it stops.
"""

from __future__ import annotations

import contextlib
import socket
import struct

HELLO = b"rtrlact\x02"
"""What both sides send first: the protocol's name and its version."""
MAX_TOKEN_BYTES = 1024
"""The longest token frame a server reads in a client's hello."""
LENGTH = struct.Struct("!I")
"""The prefix of every frame: the length of the message that follows."""


class ConnectionEnded(Exception):
    """The peer closed the connection (at a frame boundary or inside one)."""


def frame(message: bytes) -> bytes:
    """`message` prefixed with its length, ready to send."""
    return LENGTH.pack(len(message)) + message


def client_hello(token: str) -> bytes:
    """What a client sends first: `HELLO`, then its token as a frame (empty without one)."""
    return HELLO + frame(token.encode())


def receive_exactly(connection: socket.socket, size: int) -> bytearray:
    """The next `size` bytes (not copied again: a request is tens of kilobytes); raises ConnectionEnded
    when the peer closes before they all came."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = connection.recv_into(view[received:])
        if count == 0:
            raise ConnectionEnded
        received += count
    return buffer


def receive_length(connection: socket.socket) -> int:
    """The length prefix of the next frame; raises ConnectionEnded when the peer closed."""
    (length,) = LENGTH.unpack(receive_exactly(connection, LENGTH.size))
    return int(length)


def configure(connection: socket.socket) -> None:
    """Small frames go out at once (no Nagle delay): each is a whole request or answer."""
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def shut(connection: socket.socket) -> None:
    """Ends both directions of `connection` (the peer and this side's reader see it end); no error when
    it is already closed."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
