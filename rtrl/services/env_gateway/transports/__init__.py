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

The two transports (`open_transport` gives a replica its act socket when it offers one, else ActStream):
- `ActStream` (act_stream.py): gRPC's ActStream on the replica's channel, with its TLS and token. Every
  replica serves it, so it is the default and the secure one.
- `ActSocket` (act_socket.py): the same messages on a plain TCP connection the replica offers
  (rtrl/act_socket.py), written by the deciding thread and read by one thread on each side. It halves
  the gateway's own overhead per decision (docs/transports.md). Its hello carries the pool's token;
  it has no TLS (SECURITY.md), so a pool with TLS never uses it. One that cannot be used hands its
  requests to an ActStream and goes on as that stream: the pool sees only its name change.
"""

from __future__ import annotations

from rtrl.services.env_gateway.transports.act_socket import ActSocket
from rtrl.services.env_gateway.transports.act_stream import ActStream
from rtrl.services.env_gateway.transports.base import Call, Endpoint, OnAnswer, OnEnd, OpenTransport, Transport

__all__ = ["Call", "Endpoint", "OnAnswer", "OnEnd", "OpenTransport", "Transport", "open_transport"]


def open_transport(endpoint: Endpoint, on_answer: OnAnswer, on_end: OnEnd) -> Transport:
    """The replica's act socket when it offers one, else ActStream on its channel."""
    if endpoint.act_socket is not None:
        return ActSocket(endpoint, on_answer, on_end)
    return ActStream(endpoint, on_answer, on_end)
