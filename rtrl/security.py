"""Transport security every rtrl service shares: gRPC over TLS (optionally mutual), a shared token, and
the largest gRPC message accepted. All of it is read here from the same RTRL_* variables by every
service and every client the project makes (SECURITY.md explains what each one protects):

- RTRL_TLS_CERT_FILE, RTRL_TLS_KEY_FILE: the PEM certificate chain and private key a server presents.
  Setting them turns TLS on for every server and client of the process.
- RTRL_TLS_CA_FILE: the PEM CA bundle clients verify servers against (the system roots when unset)
  and, with mutual TLS, the one servers verify client certificates against.
- RTRL_TLS_CLIENT_AUTH=true: mutual TLS; servers refuse clients without a certificate signed by the CA,
  and the services' own clients present RTRL_TLS_CLIENT_CERT_FILE / RTRL_TLS_CLIENT_KEY_FILE (by default
  the server's certificate and key, which then need the clientAuth extended key usage as well).
- RTRL_TLS_SERVER_NAME: the name clients expect in server certificates, for addresses that are IPs
  (replicas register their IP in the registry) while the certificate names a host.
- RTRL_AUTH_TOKEN (or RTRL_AUTH_TOKEN_FILE): a shared secret every call must carry as
  `authorization: Bearer <token>`; servers refuse others with UNAUTHENTICATED. grpc.health.v1.Health
  is exempt so that orchestrator probes work without the secret; reflection is not.
- RTRL_GRPC_MAX_MESSAGE_BYTES: the largest message a server or client accepts or sends; bigger ones
  fail with RESOURCE_EXHAUSTED before reaching any servicer.

Files are read once at start: a missing or unreadable one fails with a sentence naming the variable.
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from rtrl.config import PREFIX, Setting, SettingsError, SettingsTable

log = logging.getLogger(__name__)

# Large enough for a stack of full-resolution RGB frames (1920x1080x3 is 6.2 MB); anything larger is
# refused by gRPC with RESOURCE_EXHAUSTED before it reaches a servicer.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Below this not even GetSpec's answer fits; a smaller limit is a typo.
MIN_MAX_MESSAGE_BYTES = 4096
# A shorter shared secret can be guessed; 32 random bytes in base64 are 43 characters.
MIN_TOKEN_CHARS = 16
AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "Bearer "
# Health is exempt from the token so that orchestrator probes (compose, Kubernetes) need no secret; it
# reveals only SERVING or NOT_SERVING. Reflection is not exempt: it lists every method.
TOKEN_EXEMPT_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
_TOKEN_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

# Every service and every client rtrl makes reads these (docs/settings.md lists them as shared).
SETTINGS = SettingsTable(
    Setting("TLS_CERT_FILE", str, "", "PEM certificate chain servers present; with TLS_KEY_FILE it turns TLS on."),
    Setting("TLS_KEY_FILE", str, "", "PEM private key of TLS_CERT_FILE."),
    Setting("TLS_CA_FILE", str, "", "PEM CA bundle clients verify servers (and mutual TLS clients) against."),
    Setting("TLS_CLIENT_AUTH", bool, False, "Mutual TLS: servers require a client certificate signed by TLS_CA_FILE."),
    Setting("TLS_CLIENT_CERT_FILE", str, "", "PEM certificate clients present with mutual TLS; default TLS_CERT_FILE."),
    Setting("TLS_CLIENT_KEY_FILE", str, "", "PEM key of TLS_CLIENT_CERT_FILE; default TLS_KEY_FILE."),
    Setting("TLS_SERVER_NAME", str, "", "Name clients expect in server certificates; empty: the address's host."),
    Setting(
        "AUTH_TOKEN", str, "", f"Shared secret every call carries as a Bearer token, {MIN_TOKEN_CHARS}+ characters."
    ),
    Setting("AUTH_TOKEN_FILE", str, "", "A file holding AUTH_TOKEN instead (set only one of the two)."),
    Setting(
        "GRPC_MAX_MESSAGE_BYTES",
        int,
        DEFAULT_MAX_MESSAGE_BYTES,
        "Largest gRPC message sent or received.",
        minimum=MIN_MAX_MESSAGE_BYTES,
    ),
)


def _read_file(env: Mapping[str, str], name: str) -> bytes | None:
    path = SETTINGS.read(env, name)
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SettingsError(
            f"{PREFIX}{name}={path!r} cannot be read ({error.strerror or error}); set it to a readable PEM file."
        ) from None
    if not data.strip():
        raise SettingsError(f"{PREFIX}{name}={path!r} is empty; set it to a PEM file.")
    return data


def _read_token(env: Mapping[str, str]) -> str:
    token = SETTINGS.read(env, "AUTH_TOKEN")
    token_file = SETTINGS.read(env, "AUTH_TOKEN_FILE")
    if token and token_file:
        raise SettingsError(f"{PREFIX}AUTH_TOKEN and {PREFIX}AUTH_TOKEN_FILE are both set; set only one of them.")
    name = "AUTH_TOKEN"
    if token_file:
        name = "AUTH_TOKEN_FILE"
        try:
            token = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise SettingsError(
                f"{PREFIX}AUTH_TOKEN_FILE={token_file!r} cannot be read ({error}); set it to a readable text file."
            ) from None
    if not token:
        if token_file:
            raise SettingsError(f"{PREFIX}AUTH_TOKEN_FILE={token_file!r} is empty; write the token into it.")
        return ""
    # gRPC metadata values must be printable ASCII; a space would split the Bearer header.
    if not all(33 <= ord(c) <= 126 for c in token):
        raise SettingsError(
            f"{PREFIX}{name} holds spaces or characters other than printable ASCII; use a token such as {_TOKEN_HINT}."
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise SettingsError(
            f"{PREFIX}{name} is {len(token)} characters long; use at least {MIN_TOKEN_CHARS}, e.g. {_TOKEN_HINT}."
        )
    return token


@dataclass(frozen=True)
class SecuritySettings:
    """TLS material, the shared token and the message size limit; the defaults are plaintext, no token."""

    cert_chain: bytes | None = field(default=None, repr=False)
    """PEM certificate chain servers present (RTRL_TLS_CERT_FILE); None: no TLS."""
    private_key: bytes | None = field(default=None, repr=False)
    """PEM private key of `cert_chain` (RTRL_TLS_KEY_FILE)."""
    ca_certs: bytes | None = field(default=None, repr=False)
    """PEM CA bundle (RTRL_TLS_CA_FILE) for verifying servers and, with `client_auth`, clients."""
    client_auth: bool = False
    """Mutual TLS (RTRL_TLS_CLIENT_AUTH): servers require a client certificate signed by `ca_certs`."""
    client_cert_chain: bytes | None = field(default=None, repr=False)
    """PEM certificate the process's clients present with mutual TLS (RTRL_TLS_CLIENT_CERT_FILE)."""
    client_private_key: bytes | None = field(default=None, repr=False)
    """PEM key of `client_cert_chain` (RTRL_TLS_CLIENT_KEY_FILE)."""
    server_name: str = ""
    """Name clients expect in server certificates (RTRL_TLS_SERVER_NAME); empty: the address's host."""
    token: str = field(default="", repr=False)
    """Shared secret every call must carry (RTRL_AUTH_TOKEN); empty: no token."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message sent or received (RTRL_GRPC_MAX_MESSAGE_BYTES)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SecuritySettings:
        """Reads the settings and the files they name; raises SettingsError saying what to set."""
        cert_chain = _read_file(env, "TLS_CERT_FILE")
        private_key = _read_file(env, "TLS_KEY_FILE")
        if (cert_chain is None) != (private_key is None):
            given, missing = ("CERT_FILE", "KEY_FILE") if cert_chain is not None else ("KEY_FILE", "CERT_FILE")
            raise SettingsError(
                f"{PREFIX}TLS_{given} is set but {PREFIX}TLS_{missing} is not; TLS needs both the certificate "
                "and its private key."
            )
        ca_certs = _read_file(env, "TLS_CA_FILE")
        client_auth = SETTINGS.read(env, "TLS_CLIENT_AUTH")
        client_cert_chain = _read_file(env, "TLS_CLIENT_CERT_FILE")
        client_private_key = _read_file(env, "TLS_CLIENT_KEY_FILE")
        if (client_cert_chain is None) != (client_private_key is None):
            raise SettingsError(
                f"{PREFIX}TLS_CLIENT_CERT_FILE and {PREFIX}TLS_CLIENT_KEY_FILE go together; set both or neither."
            )
        if client_auth:
            if ca_certs is None:
                raise SettingsError(
                    f"{PREFIX}TLS_CLIENT_AUTH=true needs {PREFIX}TLS_CA_FILE: the CA that signs client certificates."
                )
            if client_cert_chain is None and cert_chain is None:
                raise SettingsError(
                    f"{PREFIX}TLS_CLIENT_AUTH=true needs a certificate to present: set {PREFIX}TLS_CERT_FILE and "
                    f"{PREFIX}TLS_KEY_FILE (or {PREFIX}TLS_CLIENT_CERT_FILE and {PREFIX}TLS_CLIENT_KEY_FILE)."
                )
        elif client_cert_chain is not None:
            raise SettingsError(
                f"{PREFIX}TLS_CLIENT_CERT_FILE is set but {PREFIX}TLS_CLIENT_AUTH is not true; set "
                f"{PREFIX}TLS_CLIENT_AUTH=true for mutual TLS or unset the client certificate."
            )
        tls_wanted = cert_chain is not None or ca_certs is not None
        server_name = SETTINGS.read(env, "TLS_SERVER_NAME")
        if server_name and not tls_wanted:
            raise SettingsError(
                f"{PREFIX}TLS_SERVER_NAME is set but TLS is off; set {PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE "
                "(or unset it)."
            )
        return cls(
            cert_chain=cert_chain,
            private_key=private_key,
            ca_certs=ca_certs,
            client_auth=client_auth,
            client_cert_chain=client_cert_chain or (cert_chain if client_auth else None),
            client_private_key=client_private_key or (private_key if client_auth else None),
            server_name=server_name,
            token=_read_token(env),
            max_message_bytes=SETTINGS.read(env, "GRPC_MAX_MESSAGE_BYTES"),
        )

    @property
    def tls(self) -> bool:
        """Whether channels use TLS: a server certificate or a CA is configured."""
        return self.cert_chain is not None or self.ca_certs is not None

    def describe(self) -> str:
        """How a server is protected, for its start-up log line (never the secrets themselves)."""
        transport = "mutual TLS" if self.client_auth else "TLS"
        if self.cert_chain is None:
            transport = "plaintext"
        token = "token required" if self.token else "no token"
        return f"{transport}, {token}, messages up to {self.max_message_bytes} bytes"

    def message_size_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]

    # -- servers -----------------------------------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for a server, or None for plaintext."""
        if self.cert_chain is None or self.private_key is None:
            if self.client_auth:
                raise SettingsError(
                    f"{PREFIX}TLS_CLIENT_AUTH=true on a server needs {PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE."
                )
            return None
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.ca_certs if self.client_auth else None,
            require_client_auth=self.client_auth,
        )

    def server_interceptors(self) -> list[grpc.ServerInterceptor]:
        return [TokenInterceptor(self.token)] if self.token else []

    # -- clients -----------------------------------------------------------------------------------

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for a client, or None for plaintext."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_certs,
            private_key=self.client_private_key if self.client_auth else None,
            certificate_chain=self.client_cert_chain if self.client_auth else None,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        options = self.message_size_options()
        if self.tls and self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options

    def warn_if_exposed(self, host: str) -> None:
        """Logs a warning when a server listens beyond loopback without TLS (the token would travel in clear)."""
        if self.cert_chain is not None or _is_loopback(host):
            return
        if self.token:
            log.warning(
                "serving on %s without TLS: the token travels in clear; set %sTLS_CERT_FILE and %sTLS_KEY_FILE",
                host,
                PREFIX,
                PREFIX,
            )
        else:
            log.warning(
                "serving on %s without TLS or token: anyone who reaches this port may call it (SECURITY.md)", host
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- the token on the server -----------------------------------------------------------------------


def _deny_handler(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as `handler` that ends the call with UNAUTHENTICATED."""

    def deny(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def deny_stream(_request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises; this only makes the function a generator

    request_streaming = handler is not None and handler.request_streaming
    response_streaming = handler is not None and handler.response_streaming
    # No deserializer: the request of a refused call is never parsed.
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` with UNAUTHENTICATED (health is exempt)."""

    def __init__(self, token: str) -> None:
        self._expected = (BEARER_PREFIX + token).encode()
        self.refused = 0
        """Calls refused for a missing or wrong token."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(TOKEN_EXEMPT_METHOD_PREFIXES):
            return continuation(handler_call_details)
        sent = [value for key, value in handler_call_details.invocation_metadata or () if key == AUTHORIZATION_KEY]
        if len(sent) == 1:
            value = sent[0].encode() if isinstance(sent[0], str) else bytes(sent[0])
            # Constant time: the comparison must not reveal how much of a guess was right.
            if hmac.compare_digest(value, self._expected):
                return continuation(handler_call_details)
        self.refused += 1
        reason = "carried no token" if not sent else "carried a wrong token"
        # Visible without letting a flood of refused calls flood the log: the 1st, 10th, 100th, ...
        if str(self.refused).rstrip("0") == "1":
            log.warning("refused a call to %s that %s (%d refused so far)", method, reason, self.refused)
        message = (
            f"{method} {reason}; send the metadata 'authorization: Bearer <token>' with the token the services "
            f"share ({PREFIX}AUTH_TOKEN)."
        )
        return _deny_handler(continuation(handler_call_details), message)


# -- the token on the client -----------------------------------------------------------------------


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call (on plaintext channels too, unlike call credentials)."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION_KEY, BEARER_PREFIX + token)

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [item for item in (details.metadata or ()) if item[0] != AUTHORIZATION_KEY]
        return _CallDetails(
            details.method,
            details.timeout,
            [*metadata, self._header],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(client_call_details), request_iterator)
