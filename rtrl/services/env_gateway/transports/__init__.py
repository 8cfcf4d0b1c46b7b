"""How the gateway's Act requests reach one inference replica: the transport seam.

A transport carries one replica's requests in order and brings their answers back in the same order:
- the pool builds it (no thread, no call yet), makes it the replica's under the pool's lock, and then
  calls `start()` outside the lock: so a replica never has two, and the answers and the end of a
  transport always come after it became the replica's;
- `put(request)` sends an `ActStreamRequest` (the request and the milliseconds left before its
  deadline) without waiting, from whichever thread decides, before `start()` too (it is sent then);
- the transport's own thread calls `on_answer(transport, answer)` with each `ActStreamResponse`, and
  `on_end(transport, code)` once, with how it ended as a gRPC status: UNAVAILABLE when the replica went
  away, CANCELLED after `close()`, DEADLINE_EXCEEDED when the replica accepted but never spoke;
- `close()` ends it, before `start()` too.
The pool (replicas.py) keeps each transport's unanswered requests in `pending`, under the pool's lock,
and decides what becomes of them when the transport ends.

The two transports:
- `ActStream` (act_stream.py): gRPC's ActStream on the replica's channel, with its TLS and token. Every
  replica serves it, so it is the default and the secure one.
- `ActSocket` (act_socket.py): the same messages on a plain TCP connection the replica offers
  (rtrl/act_socket.py), written by the deciding thread and read by one thread on each side. It halves
  the gateway's own overhead per decision (docs/transports.md). Its hello carries the pool's token;
  it has no TLS (SECURITY.md), so a pool with TLS never uses it. One that cannot be used sets
  `refused`, and the pool moves its requests to ActStream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from rtrl.v1 import inference_pb2, inference_pb2_grpc

if TYPE_CHECKING:
    from rtrl.services.env_gateway.dispatcher import OnCallDone


@dataclass(frozen=True)
class Call:
    """One request on its way: what was sent, when, until when its answer counts, and whom to tell."""

    request: inference_pb2.ActRequest
    sent_s: float
    deadline_s: float
    on_done: OnCallDone


@dataclass(frozen=True)
class Endpoint:
    """What a transport needs to reach one replica."""

    address: str
    stub: inference_pb2_grpc.InferenceServiceStub
    """On the replica's channel, with the pool's TLS and token."""
    act_socket: tuple[str, int] | None
    """Where its act socket is, when it offers one the pool may use."""
    token: str
    """The pool's token (rtrl/security.py), "" without one."""


class Transport:
    """One replica's ordered channel for Act requests (see the module docstring)."""

    name = ""
    """How ReplicaStats.transport names it."""

    def __init__(self) -> None:
        self.pending: deque[Call] = deque()
        """The requests sent and not answered, oldest first; guarded by the pool's lock."""
        self.refused = ""
        """Why it cannot be used at all ("" while it can): the pool then gives the replica ActStream."""

    def start(self) -> None:
        raise NotImplementedError

    def put(self, request: inference_pb2.ActStreamRequest) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


OnAnswer = Callable[[Transport, inference_pb2.ActStreamResponse], None]
OnEnd = Callable[[Transport, grpc.StatusCode], None]
