"""Tests of rtrl.registry against a real Redis: heartbeats, expiry by age, unregistering, outages."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from rtrl.local_redis import LocalRedis, free_port
from rtrl.registry import (
    PRUNE_AFTER_MS,
    Heartbeat,
    RegistryError,
    advertised_address,
    live_replicas,
    redis_time_ms,
    register,
    unregister,
)

WAIT_BOUND_S = 10.0


@pytest.fixture(scope="module")
def local_redis() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


@pytest.fixture
def client(local_redis: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(local_redis.url)
    yield client
    client.close()


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    # One key per test, so tests sharing the module's Redis never see each other's replicas.
    return f"test:{request.node.name}"


def test_registered_replicas_are_listed_and_unregistered_ones_are_not(client: redis.Redis, key: str) -> None:
    register(client, "10.0.0.2:50061", key)
    register(client, "10.0.0.1:50061", key)

    assert live_replicas(client, key) == ["10.0.0.1:50061", "10.0.0.2:50061"]
    unregister(client, "10.0.0.2:50061", key)
    assert live_replicas(client, key) == ["10.0.0.1:50061"]


def test_heartbeat_score_is_the_redis_clock_in_milliseconds(client: redis.Redis, key: str) -> None:
    before = redis_time_ms(client)
    score = register(client, "10.0.0.1:50061", key)

    assert before <= score <= redis_time_ms(client)
    assert client.zscore(key, "10.0.0.1:50061") == score


def test_replica_whose_last_heartbeat_is_too_old_is_not_listed(client: redis.Redis, key: str) -> None:
    now_ms = redis_time_ms(client)
    client.zadd(key, {"10.0.0.9:50061": now_ms - 5000, "10.0.0.1:50061": now_ms - 500})

    assert live_replicas(client, key, max_age_ms=2000) == ["10.0.0.1:50061"]
    assert live_replicas(client, key, max_age_ms=10_000) == ["10.0.0.1:50061", "10.0.0.9:50061"]


def test_heartbeats_delete_replicas_that_died_long_ago(client: redis.Redis, key: str) -> None:
    client.zadd(key, {"10.0.0.9:50061": redis_time_ms(client) - PRUNE_AFTER_MS - 1000})

    register(client, "10.0.0.1:50061", key)

    assert client.zscore(key, "10.0.0.9:50061") is None


def test_heartbeat_thread_registers_refreshes_and_unregisters_on_stop(
    local_redis: LocalRedis, client: redis.Redis, key: str
) -> None:
    heartbeat = Heartbeat(local_redis.url, "10.0.0.1:50061", key, interval_s=0.05)
    heartbeat.start()
    give_up_at = time.monotonic() + WAIT_BOUND_S
    while heartbeat.beats < 3 and time.monotonic() < give_up_at:
        time.sleep(0.01)

    assert heartbeat.beats >= 3
    assert heartbeat.registered
    assert live_replicas(client, key) == ["10.0.0.1:50061"]
    heartbeat.stop()
    assert live_replicas(client, key) == []
    assert not heartbeat.registered


def test_heartbeat_without_redis_keeps_retrying_and_logs_the_outage_once(caplog: pytest.LogCaptureFixture) -> None:
    heartbeat = Heartbeat(f"redis://127.0.0.1:{free_port()}/0", "10.0.0.1:50061", "test:outage")

    with caplog.at_level(logging.WARNING, logger="rtrl.registry"):
        results = [heartbeat.beat() for _ in range(3)]
        heartbeat.stop()

    assert results == [False, False, False]
    assert heartbeat.failures == 3
    outage_warnings = [record for record in caplog.records if "cannot register" in record.getMessage()]
    assert len(outage_warnings) == 1
    assert "retrying" in outage_warnings[0].getMessage()


def test_reading_an_unreachable_registry_is_a_registry_error() -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)

    with pytest.raises(RegistryError, match="cannot read the replica registry"):
        live_replicas(client, "test:unreachable")
    client.close()


def test_advertised_address_replaces_a_wildcard_host_with_this_hosts_address() -> None:
    own_address = socket.gethostbyname(socket.gethostname())

    assert advertised_address("0.0.0.0", 50061) == f"{own_address}:50061"
    assert advertised_address("::", 50061) == f"{own_address}:50061"
    assert advertised_address("127.0.0.1", 50061) == "127.0.0.1:50061"
    assert advertised_address("::1", 50061) == "[::1]:50061"
    assert advertised_address("0.0.0.0", 50061, "inference-2:50061") == "inference-2:50061"
