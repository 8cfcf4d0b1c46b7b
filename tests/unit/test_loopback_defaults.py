"""Every server rtrl starts listens on loopback unless told otherwise: the gRPC services, the replicas'
act sockets and the Prometheus endpoints (which bind the service's host), the dashboard's web page and
the embedded Redis.
A deployment opens them on purpose (compose sets RTRL_*_HOST=0.0.0.0 inside its network)."""

from __future__ import annotations

import ipaddress

from rtrl.config import METRICS_DISABLED
from rtrl.local_redis import LocalRedis
from rtrl.redis_client import connect_redis
from rtrl.services.dashboard.settings import DashboardSettings
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.services.inference.server import InferenceServer
from rtrl.services.inference.settings import InferenceSettings
from rtrl.services.learner.settings import LearnerSettings


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def test_grpc_services_and_the_dashboard_bind_loopback_by_default() -> None:
    for settings in (
        GatewaySettings.from_env({}),
        InferenceSettings.from_env({}),
        LearnerSettings.from_env({}),
        DashboardSettings.from_env({}),
    ):
        assert is_loopback(settings.host), f"{type(settings).__name__} binds {settings.host} by default"


def test_a_replicas_act_socket_binds_its_host_so_loopback_by_default() -> None:
    server = InferenceServer(InferenceSettings.from_env({"RTRL_INFERENCE_PORT": "0"}))
    try:
        assert server.act_socket is not None and is_loopback(server.act_socket.host)
    finally:
        server.stop(grace=None)


def test_metrics_endpoints_are_off_by_default_and_would_bind_the_service_host() -> None:
    for settings in (GatewaySettings.from_env({}), InferenceSettings.from_env({}), LearnerSettings.from_env({})):
        assert settings.metrics_port == METRICS_DISABLED, f"{type(settings).__name__} serves /metrics by default"


def test_defaults_are_plaintext_without_token_so_exposing_a_port_is_a_decision() -> None:
    for settings in (GatewaySettings.from_env({}), InferenceSettings.from_env({}), LearnerSettings.from_env({})):
        assert not settings.security.tls and not settings.security.token


def test_embedded_redis_binds_loopback_in_protected_mode() -> None:
    with LocalRedis(password="embedded-redis-password") as server:
        client = connect_redis(server.url)
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("protected-mode")["protected-mode"] == "yes"
        client.close()
