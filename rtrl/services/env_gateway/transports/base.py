"""What every transport is (the seam itself: see the package's docstring), apart from the transports."""

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


@dataclass(eq=False)
class Endpoint:
    """What a transport needs to reach one replica; the pool keeps one per replica."""

    address: str
    stub: inference_pb2_grpc.InferenceServiceStub
    """On the replica's channel, with the pool's TLS and token."""
    token: str
    """The pool's token (rtrl/security.py), "" without one."""
    act_socket: tuple[str, int] | None = None
    """Where its act socket is, when it offers one the pool may use: set by the pool's warm-up, forgotten by
    an act socket that cannot be used (its replica's next transports are ActStream until it warms up again)."""


class Transport:
    """One replica's ordered channel for Act requests (see the module docstring)."""

    name = ""
    """How ReplicaStats.transport names it."""

    def __init__(self) -> None:
        self.pending: deque[Call] = deque()
        """The requests sent and not answered, oldest first; guarded by the pool's lock."""

    def send(self, call: Call, now_s: float) -> None:
        """Puts `call` with the milliseconds its deadline leaves from `now_s`; under the pool's lock, so that the
        requests go out in the order of `pending`."""
        self.pending.append(call)
        self.put(inference_pb2.ActStreamRequest(request=call.request, timeout_ms=(call.deadline_s - now_s) * 1000.0))

    def take_pending(self) -> list[Call]:
        """Empties `pending` (an answer that still comes is then ignored); under the pool's lock."""
        calls = list(self.pending)
        self.pending.clear()
        return calls

    def start(self) -> None:
        raise NotImplementedError

    def put(self, request: inference_pb2.ActStreamRequest) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


OnAnswer = Callable[[Transport, inference_pb2.ActStreamResponse], None]
OnEnd = Callable[[Transport, grpc.StatusCode], None]
OpenTransport = Callable[[Endpoint, OnAnswer, OnEnd], Transport]
"""Builds a replica's transport (not started): `open_transport`, or a benchmark's (bench/aio_transport.py)."""
