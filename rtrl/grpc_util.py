"""gRPC plumbing every server and client shares: the server factory, the channel factory, health and
reflection, and error mapping.

Every server is made by `create_server` and every channel by `create_channel`, so TLS, mutual TLS, the
shared token and the message size limit (rtrl/security.py, read from RTRL_* variables) apply to all
of them the same way.

Errors raised by the core modules are mapped to status codes in one place (`abort_for`) so that every
service answers bad input with INVALID_ARGUMENT, an unready service with UNAVAILABLE and an answer
that would come too late with DEADLINE_EXCEEDED, each with a sentence saying what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rtrl.security import DEFAULT_MAX_MESSAGE_BYTES, SecuritySettings, TokenClientInterceptor

log = logging.getLogger(__name__)

# The default limit (RTRL_GRPC_MAX_MESSAGE_BYTES changes it); bigger messages fail with RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_BYTES


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


def status_code_for(error: BaseException) -> grpc.StatusCode | None:
    """The status code that matches `error`, or None for an error this module does not map."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return None


def abort_for(context: grpc.ServicerContext, error: BaseException) -> None:
    """Ends the call with the status code that matches `error` (re-raises errors it does not know)."""
    code = status_code_for(error)
    if code is not None:
        context.abort(code, str(error))
    raise error


def create_server(
    host: str,
    port: int,
    max_workers: int = 8,
    options: Iterable[tuple[str, Any]] = (),
    security: SecuritySettings | None = None,
) -> tuple[grpc.Server, int]:
    """Creates a server bound to host:port (port 0 picks a free one) and returns it with its port.

    `security` (by default read from the RTRL_* environment) decides TLS, mutual TLS, the token
    interceptor and the message size limit."""
    security = security if security is not None else SecuritySettings.from_env()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=security.server_interceptors(),
        options=[*security.message_size_options(), ("grpc.so_reuseport", 0), *options],
    )
    credentials = security.server_credentials()
    address = f"{host}:{port}"
    try:
        bound = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
    except RuntimeError as error:
        # grpcio raises RuntimeError (not a 0 port) for some failures, e.g. a host that does not resolve.
        raise OSError(f"cannot listen on {address} ({error}); choose a free port and a local address") from error
    if bound == 0:
        raise OSError(f"cannot listen on {address}; choose a free port or stop what is using it")
    security.warn_if_exposed(host)
    log.info("gRPC server on %s:%d: %s", host, bound, security.describe())
    return server, bound


def create_channel(
    address: str, security: SecuritySettings | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to `address` with the TLS, token and message size limit of `security` (by default read
    from the RTRL_* environment). Every client in rtrl opens its channels here."""
    security = security if security is not None else SecuritySettings.from_env()
    all_options = [*security.channel_options(), *options]
    credentials = security.channel_credentials()
    if credentials is None:
        channel = grpc.insecure_channel(address, options=all_options)
    else:
        channel = grpc.secure_channel(address, credentials, options=all_options)
    if security.token:
        channel = grpc.intercept_channel(channel, TokenClientInterceptor(security.token))
    return channel


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


def health_status(
    address: str, timeout_s: float = 1.0, security: SecuritySettings | None = None, service: str = ""
) -> str:
    """The health of the server at `address` (of its `service`, such as "rtrl.v1.LearnerService", when given;
    another server on that port then answers NOT_FOUND): SERVING, NOT_SERVING, NOT_FOUND or UNREACHABLE."""
    with create_channel(address, security) as channel:
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND:
                return "NOT_FOUND"
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class _Undecodable:
    """Stands in for a request whose bytes are not the expected message."""

    def __init__(self, error: str) -> None:
        self.error = error


class _RefusingMalformedRequests:
    """What the generated `add_*Servicer_to_server` functions see instead of the server: each method's
    request decoding becomes tolerant, and the method answers INVALID_ARGUMENT for bytes that are not its
    message. gRPC would otherwise answer INTERNAL ("Exception deserializing request!") before any servicer
    code runs, which tells a client nothing about what to fix."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server
        self._registered = False
        self._generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # Replaced by the tolerant handlers registered below; kept in case a generator stops registering.
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        tolerant = {name: _tolerant(f"{service_name}/{name}", h) for name, h in method_handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, tolerant),))
        self._server.add_registered_method_handlers(service_name, tolerant)
        self._registered = True

    def finish(self) -> None:
        if not self._registered and self._generic:
            self._server.add_generic_rpc_handlers(tuple(self._generic))


def _tolerant(method: str, handler: Any) -> Any:
    if handler.request_deserializer is None:
        return handler
    decode = handler.request_deserializer

    def tolerant_decode(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as error:  # protobuf's DecodeError, or whatever a custom decoder raises
            return _Undecodable(str(error))

    def refuse_if_undecodable(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request to {method} is not a valid message ({request.error}); "
                "build it from protos/rtrl/v1 (server reflection lists them)",
            )
        return request

    def refusing(behavior: Any) -> Any:
        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            return behavior(refuse_if_undecodable(request, context), context)

        return serve

    def refusing_in_stream(behavior: Any) -> Any:
        # A request stream ends with INVALID_ARGUMENT at its first message that does not decode.
        def serve(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behavior((refuse_if_undecodable(request, context) for request in requests), context)

        return serve

    return handler._replace(
        request_deserializer=tolerant_decode,
        unary_unary=refusing(handler.unary_unary) if handler.unary_unary else None,
        unary_stream=refusing(handler.unary_stream) if handler.unary_stream else None,
        stream_unary=refusing_in_stream(handler.stream_unary) if handler.stream_unary else None,
        stream_stream=refusing_in_stream(handler.stream_stream) if handler.stream_stream else None,
    )


def add_servicer(add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.Server) -> None:
    """Registers `servicer` with a generated `add_*Servicer_to_server`, refusing malformed request bytes
    with INVALID_ARGUMENT instead of gRPC's INTERNAL."""
    proxy = _RefusingMalformedRequests(server)
    add_to_server(servicer, proxy)
    proxy.finish()
