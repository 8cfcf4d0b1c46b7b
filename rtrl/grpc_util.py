"""gRPC plumbing every server shares: health and reflection, error mapping, and the server factory.

Errors raised by the core modules are mapped to status codes in one place (`abort_for`) so that every
service answers bad input with INVALID_ARGUMENT, an unready service with UNAVAILABLE and an answer
that would come too late with DEADLINE_EXCEEDED, each with a sentence saying what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

# Large enough for a stack of full-resolution RGB frames; anything larger is refused by gRPC with
# RESOURCE_EXHAUSTED before it reaches a servicer.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class InvalidArgument(ValueError):
    """The request cannot be served as sent; the message says what to fix."""


class Unavailable(RuntimeError):
    """The service cannot answer yet (or any more); the caller may retry elsewhere."""


class DeadlineTooShort(RuntimeError):
    """The answer could not be ready before the caller's deadline, so the work was refused."""


_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineTooShort, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def abort_for(context: grpc.ServicerContext, error: BaseException) -> None:
    """Ends the call with the status code that matches `error` (re-raises errors it does not know)."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            context.abort(code, str(error))
    raise error


def create_server(
    host: str,
    port: int,
    max_workers: int = 8,
    options: Iterable[tuple[str, int]] = (),
) -> tuple[grpc.Server, int]:
    """Creates a server bound to host:port (port 0 picks a free one) and returns it with its port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            *options,
        ],
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}; choose a free port or stop what is using it")
    return server, bound


def add_health_and_reflection(server: grpc.Server, service_full_names: Iterable[str]) -> health.HealthServicer:
    """Adds grpc.health.v1.Health (every service NOT_SERVING until `set_serving`) and reflection."""
    names = list(service_full_names)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in [*names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    return health_servicer


def set_serving(health_servicer: health.HealthServicer, service_full_names: Iterable[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in [*service_full_names, ""]:
        health_servicer.set(name, status)


def health_status(address: str, timeout_s: float = 1.0) -> str:
    """The overall health of the server at `address`: SERVING, NOT_SERVING or UNREACHABLE."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
