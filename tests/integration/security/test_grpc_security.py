"""gRPC security against a real inference replica on port 0: the shared token, TLS, mutual TLS, the
message size limit, and the real grpcurl binary with certificates and the token.

What a refused client observes, and why:
- no token or a wrong one: UNAUTHENTICATED from the server's interceptor, with a sentence saying what
  to send; the call reaches the server, so the server can say why.
- no client certificate, or one from a CA the server does not trust, when mutual TLS is on: the TLS
  handshake fails before any HTTP/2 stream exists, so no server status can come back; gRPC reports a
  connection that could not be made as UNAVAILABLE. The same for a plaintext client against a TLS
  server and for a client that does not trust the server's CA.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from security_pki import TOKEN, Pki, grpcurl, tls_env

from rtrl.grpc_util import create_channel, create_server, health_status
from rtrl.security import SecuritySettings
from rtrl.services.inference.server import InferenceServer
from rtrl.tensors import to_proto
from rtrl.v1 import inference_pb2, inference_pb2_grpc

# The make_replica fixture (conftest.py): a started replica with the security settings of an RTRL_* mapping.
MakeReplica = Callable[[Mapping[str, str]], InferenceServer]
CALL_TIMEOUT_S = 30.0
# A refused handshake fails fast; the bound only keeps a broken test from hanging.
REFUSED_TIMEOUT_S = 20.0
OBS = np.array([0.1, -0.4, 0.7], dtype=np.float32)


def address(server) -> str:
    return f"127.0.0.1:{server.port}"


def get_status(channel: grpc.Channel, timeout_s: float = CALL_TIMEOUT_S):
    return inference_pb2_grpc.InferenceServiceStub(channel).GetStatus(
        inference_pb2.InferenceServiceGetStatusRequest(), timeout=timeout_s
    )


def act(channel: grpc.Channel, observation: np.ndarray = OBS):
    request = inference_pb2.ActRequest(
        observation=to_proto(observation), gateway_id="security-test", frame_index=0, action_count=4
    )
    return inference_pb2_grpc.InferenceServiceStub(channel).Act(request, timeout=CALL_TIMEOUT_S)


def refused_code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()


# -- the token ---------------------------------------------------------------------------------------


def test_a_client_without_the_token_is_refused_and_one_with_it_is_served(make_replica: MakeReplica) -> None:
    server = make_replica({"RTRL_AUTH_TOKEN": TOKEN})
    with grpc.insecure_channel(address(server)) as bare:
        with pytest.raises(grpc.RpcError) as raised:
            get_status(bare)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <token>" in raised.value.details()
        assert "RTRL_AUTH_TOKEN" in raised.value.details()
        # Act (the request is never parsed when refused) is refused the same way.
        assert refused_code(lambda: act(bare)) == grpc.StatusCode.UNAUTHENTICATED
    with create_channel(address(server), SecuritySettings(token=TOKEN)) as client:
        assert get_status(client).replica_id == "secured-replica"
        assert 0 <= act(client).action < 4


def test_a_wrong_token_is_refused_with_unauthenticated(make_replica: MakeReplica) -> None:
    server = make_replica({"RTRL_AUTH_TOKEN": TOKEN})
    with (
        create_channel(address(server), SecuritySettings(token=TOKEN + "x")) as client,
        pytest.raises(grpc.RpcError) as raised,
    ):
        get_status(client)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "wrong token" in raised.value.details()
    # The same token sent as raw metadata without the Bearer scheme is wrong too.
    with grpc.insecure_channel(address(server)) as bare:
        stub = inference_pb2_grpc.InferenceServiceStub(bare)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetStatus(
                inference_pb2.InferenceServiceGetStatusRequest(),
                timeout=CALL_TIMEOUT_S,
                metadata=[("authorization", TOKEN)],
            )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_is_exempt_from_the_token_and_reflection_is_not(make_replica: MakeReplica) -> None:
    server = make_replica({"RTRL_AUTH_TOKEN": TOKEN})
    with grpc.insecure_channel(address(server)) as bare:
        health = health_pb2_grpc.HealthStub(bare).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # Reflection is a bidirectional stream: the refusal must reach that kind of call too.
        with pytest.raises(grpc.RpcError) as raised:
            ProtoReflectionDescriptorDatabase(bare).get_services()
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with create_channel(address(server), SecuritySettings(token=TOKEN)) as client:
        assert "rtrl.v1.InferenceService" in ProtoReflectionDescriptorDatabase(client).get_services()


# -- TLS and mutual TLS ------------------------------------------------------------------------------


def test_tls_client_is_served_and_plaintext_or_untrusting_clients_cannot_connect(
    make_replica: MakeReplica, pki: Pki
) -> None:
    server = make_replica(tls_env(pki))
    client_security = SecuritySettings.from_env({"RTRL_TLS_CA_FILE": str(pki.ca)})
    with create_channel(address(server), client_security) as client:
        status = get_status(client)
        assert status.replica_id == "secured-replica"
        # The act socket has no TLS, so a replica with TLS offers none (SECURITY.md).
        assert status.act_socket_port == 0 and server.act_socket is None
    # Plaintext HTTP/2 against a TLS port: the server never sees a valid request.
    with grpc.insecure_channel(address(server)) as plaintext:
        assert refused_code(lambda: get_status(plaintext, REFUSED_TIMEOUT_S)) == grpc.StatusCode.UNAVAILABLE
    # A client that trusts only another CA rejects the server's certificate.
    untrusting = SecuritySettings.from_env({"RTRL_TLS_CA_FILE": str(pki.rogue_ca)})
    with create_channel(address(server), untrusting) as client:
        assert refused_code(lambda: get_status(client, REFUSED_TIMEOUT_S)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_valid_certificate(make_replica: MakeReplica, pki: Pki) -> None:
    server = make_replica(tls_env(pki, mutual=True))
    # Trusts the server but presents no certificate: the server ends the handshake.
    no_cert = SecuritySettings.from_env({"RTRL_TLS_CA_FILE": str(pki.ca)})
    with create_channel(address(server), no_cert) as client:
        assert refused_code(lambda: get_status(client, REFUSED_TIMEOUT_S)) == grpc.StatusCode.UNAVAILABLE
    # A well-formed certificate signed by a CA the server does not trust.
    rogue = SecuritySettings.from_env(
        {
            "RTRL_TLS_CA_FILE": str(pki.ca),
            "RTRL_TLS_CLIENT_AUTH": "true",
            "RTRL_TLS_CLIENT_CERT_FILE": str(pki.rogue_client.cert),
            "RTRL_TLS_CLIENT_KEY_FILE": str(pki.rogue_client.key),
        }
    )
    with create_channel(address(server), rogue) as client:
        assert refused_code(lambda: get_status(client, REFUSED_TIMEOUT_S)) == grpc.StatusCode.UNAVAILABLE
    # The operator's client certificate from the trusted CA is served.
    operator = SecuritySettings.from_env(
        {
            "RTRL_TLS_CA_FILE": str(pki.ca),
            "RTRL_TLS_CLIENT_AUTH": "true",
            "RTRL_TLS_CLIENT_CERT_FILE": str(pki.client.cert),
            "RTRL_TLS_CLIENT_KEY_FILE": str(pki.client.key),
        }
    )
    with create_channel(address(server), operator) as client:
        assert get_status(client).replica_id == "secured-replica"
    # A service's own settings (its certificate doubles as client certificate) are served as well.
    with create_channel(address(server), SecuritySettings.from_env(tls_env(pki, mutual=True))) as client:
        assert 0 <= act(client).action < 4


def test_mutual_tls_with_token_needs_both(make_replica: MakeReplica, pki: Pki) -> None:
    server = make_replica(tls_env(pki, mutual=True, token=TOKEN))
    certificate_only = SecuritySettings.from_env(tls_env(pki, mutual=True))
    with create_channel(address(server), certificate_only) as client:
        assert refused_code(lambda: get_status(client)) == grpc.StatusCode.UNAUTHENTICATED
    both = SecuritySettings.from_env(tls_env(pki, mutual=True, token=TOKEN))
    with create_channel(address(server), both) as client:
        assert get_status(client).replica_id == "secured-replica"
    # `rtrl health` and the launcher's start-up checks go through the same helper.
    assert health_status(address(server), timeout_s=CALL_TIMEOUT_S, security=both) == "SERVING"
    assert health_status(address(server), timeout_s=REFUSED_TIMEOUT_S) == "UNREACHABLE"


def test_tls_server_name_override_lets_clients_dial_an_address_the_certificate_does_not_name(
    make_replica: MakeReplica, pki: Pki
) -> None:
    # Registry addresses are IPs while a deployment's certificate names a host ("rtrl" here): clients
    # then expect RTRL_TLS_SERVER_NAME in the certificate instead of the address's host.
    server = make_replica(tls_env(pki))
    wrong_name = SecuritySettings.from_env({"RTRL_TLS_CA_FILE": str(pki.ca), "RTRL_TLS_SERVER_NAME": "elsewhere"})
    with create_channel(address(server), wrong_name) as client:
        assert refused_code(lambda: get_status(client, REFUSED_TIMEOUT_S)) == grpc.StatusCode.UNAVAILABLE
    right_name = SecuritySettings.from_env({"RTRL_TLS_CA_FILE": str(pki.ca), "RTRL_TLS_SERVER_NAME": "rtrl"})
    with create_channel(address(server), right_name) as client:
        assert get_status(client).replica_id == "secured-replica"


# -- message size ------------------------------------------------------------------------------------


def test_a_request_above_the_message_limit_is_resource_exhausted(make_replica: MakeReplica) -> None:
    server = make_replica({"RTRL_GRPC_MAX_MESSAGE_BYTES": "8192"})
    big = np.zeros(4096, dtype=np.float32)  # 16 KiB of observation, twice the limit
    # A client with a large limit of its own, so that the server's limit is what refuses it.
    with grpc.insecure_channel(address(server), options=[("grpc.max_send_message_length", 1 << 24)]) as client:
        with pytest.raises(grpc.RpcError) as raised:
            act(client, big)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The replica is unharmed: a normal request right after is answered.
        assert 0 <= act(client).action < 4


# -- the real grpcurl binary -------------------------------------------------------------------------


def test_grpcurl_with_client_certificate_and_token_lists_and_calls(make_replica: MakeReplica, pki: Pki) -> None:
    server = make_replica(tls_env(pki, mutual=True, token=TOKEN))
    tls = ["-cacert", str(pki.ca), "-cert", str(pki.client.cert), "-key", str(pki.client.key)]
    header = ["-H", f"authorization: Bearer {TOKEN}"]

    listed = grpcurl(*tls, *header, address(server), "list")
    assert listed.returncode == 0, listed.stderr
    assert "rtrl.v1.InferenceService" in listed.stdout.split()

    called = grpcurl(*tls, *header, address(server), "rtrl.v1.InferenceService/GetStatus")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["replica_id"] == "secured-replica", called.stdout

    no_token = grpcurl(*tls, address(server), "list")
    assert no_token.returncode != 0
    assert "Unauthenticated" in no_token.stderr, no_token.stderr

    # Refused handshakes are retried until -max-time; 3 s is plenty to see them fail.
    no_cert = grpcurl("-cacert", str(pki.ca), *header, address(server), "list", max_time_s=3)
    assert no_cert.returncode != 0, no_cert.stdout

    plaintext = grpcurl("-plaintext", *header, address(server), "list", max_time_s=3)
    assert plaintext.returncode != 0, plaintext.stdout


# -- `rtrl health` -------------------------------------------------------------------------------------


def rtrl_health(target: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("RTRL_")}
    return subprocess.run(
        [sys.executable, "-m", "rtrl.cli", "health", target, "--timeout", "5"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rtrl_health_reads_the_tls_settings_from_the_environment(make_replica: MakeReplica, pki: Pki) -> None:
    server = make_replica(tls_env(pki, mutual=True, token=TOKEN))
    # The probe a container runs: the service's own variables (the token is not needed for health).
    probe = rtrl_health(address(server), tls_env(pki, mutual=True))
    assert (probe.returncode, probe.stdout.strip()) == (0, "SERVING"), probe.stderr
    plaintext = rtrl_health(address(server), {})
    assert (plaintext.returncode, plaintext.stdout.strip()) == (1, "UNREACHABLE")
    broken = rtrl_health(address(server), {**tls_env(pki, mutual=True), "RTRL_TLS_CA_FILE": "/nonexistent/ca.pem"})
    assert broken.returncode == 2
    assert "RTRL_TLS_CA_FILE='/nonexistent/ca.pem' cannot be read" in broken.stderr


def test_refused_calls_are_logged_without_flooding_the_log(
    make_replica: MakeReplica, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_replica({"RTRL_AUTH_TOKEN": TOKEN})
    with grpc.insecure_channel(address(server)) as bare, caplog.at_level(logging.WARNING, logger="rtrl.security"):
        for _ in range(12):
            assert refused_code(lambda: get_status(bare)) == grpc.StatusCode.UNAUTHENTICATED
    refusals = [record.getMessage() for record in caplog.records if "refused a call" in record.getMessage()]
    assert refusals == [
        "refused a call to /rtrl.v1.InferenceService/GetStatus that carried no token (1 refused so far)",
        "refused a call to /rtrl.v1.InferenceService/GetStatus that carried no token (10 refused so far)",
    ]


def test_every_call_shape_is_refused_without_the_token_and_served_with_it() -> None:
    # The replica's RPCs are all unary; the gateway's StreamFrames streams its answer and reflection
    # streams both ways. A generic service with the four shapes checks the refusal of each.
    def unary_unary(request: bytes, _context: grpc.ServicerContext) -> bytes:
        return request

    def unary_stream(request: bytes, _context: grpc.ServicerContext):
        yield request
        yield request

    def stream_unary(requests, _context: grpc.ServicerContext) -> bytes:
        return b"".join(requests)

    def stream_stream(requests, _context: grpc.ServicerContext):
        yield from requests

    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
    }
    server, port = create_server("127.0.0.1", 0, max_workers=4, security=SecuritySettings(token=TOKEN))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Shapes", handlers)])
    server.start()
    try:
        target = f"127.0.0.1:{port}"

        def calls(channel: grpc.Channel) -> dict[str, Callable[[], object]]:
            return {
                "UnaryUnary": lambda: channel.unary_unary("/test.Shapes/UnaryUnary")(b"a", timeout=CALL_TIMEOUT_S),
                "UnaryStream": lambda: list(
                    channel.unary_stream("/test.Shapes/UnaryStream")(b"a", timeout=CALL_TIMEOUT_S)
                ),
                "StreamUnary": lambda: channel.stream_unary("/test.Shapes/StreamUnary")(
                    iter([b"a", b"b"]), timeout=CALL_TIMEOUT_S
                ),
                "StreamStream": lambda: list(
                    channel.stream_stream("/test.Shapes/StreamStream")(iter([b"a", b"b"]), timeout=CALL_TIMEOUT_S)
                ),
            }

        with grpc.insecure_channel(target) as bare:
            for name, call in calls(bare).items():
                assert refused_code(call) == grpc.StatusCode.UNAUTHENTICATED, name
        with create_channel(target, SecuritySettings(token=TOKEN)) as client:
            answers = {name: call() for name, call in calls(client).items()}
        assert answers == {
            "UnaryUnary": b"a",
            "UnaryStream": [b"a", b"a"],
            "StreamUnary": b"ab",
            "StreamStream": [b"a", b"b"],
        }
    finally:
        server.stop(0).wait()
