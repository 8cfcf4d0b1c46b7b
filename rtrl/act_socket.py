"""The act socket's wire format: ActStream's messages, length-prefixed, on a plain TCP connection.

A gateway asks a replica for actions once per decision, 60 times a second, and waits for each answer.
On gRPC's sync API each such message passes through several threads on both sides (the stream's
writer, the server's poller and worker, the channel's poller, the reader), and each hand-over wakes a
thread: paced as the gateway sends them, a message and its answer took 0.78 ms at the median and
1.33 ms at p99 with a learner training beside them, against 0.28 / 0.74 ms for the same messages on a
plain socket, written by the deciding thread and read by one thread on each side
(docs/staggering-benchmark.md, "the act socket"). So a replica also answers on an act socket,
and the gateway uses it when the replica offers one; everything else (Act, GetStatus, health,
reflection) stays on gRPC, and so do TLS and token authentication: a replica with either offers no
act socket, and the gateway then uses ActStream.

The protocol, version 1:
1. The client connects and sends `HELLO` (8 bytes: "rtrlact" and the version byte 1); the server
   answers with the same 8 bytes, or closes the connection (not this protocol or version, no hello
   within 5 s, or no room for another connection).
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

HELLO = b"rtrlact\x01"
"""What both sides send first: the protocol's name and its version."""
LENGTH = struct.Struct("!I")
"""The prefix of every frame: the length of the message that follows."""


class ConnectionEnded(Exception):
    """The peer closed the connection (at a frame boundary or inside one)."""


def frame(message: bytes) -> bytes:
    """`message` prefixed with its length, ready to send."""
    return LENGTH.pack(len(message)) + message


def receive_exactly(connection: socket.socket, size: int) -> bytes:
    """The next `size` bytes; raises ConnectionEnded when the peer closes before they all came."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = connection.recv_into(view[received:])
        if count == 0:
            raise ConnectionEnded
        received += count
    return bytes(buffer)


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
