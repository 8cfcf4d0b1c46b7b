"""The registry watcher against a real Redis: it reports heartbeats in our clock and survives an outage."""

from __future__ import annotations

import time

import redis

from rtrl.local_redis import LocalRedis, free_port
from rtrl.registry import register
from rtrl.services.env_gateway.membership import RegistryWatcher


def test_watcher_reports_live_replicas_with_their_heartbeat_time(local_redis: LocalRedis) -> None:
    key = "test:watcher:live"
    client = redis.Redis.from_url(local_redis.url)
    reports: list[dict[str, float]] = []
    watcher = RegistryWatcher(local_redis.url, key, reports.append)
    try:
        register(client, "10.0.0.7:50061", key)
        before_s = time.monotonic()
        seen = watcher.poll_once()
        assert seen is not None and list(seen) == ["10.0.0.7:50061"]
        # The heartbeat was written just now (Redis clock), so in our clock it is about now too.
        assert abs(seen["10.0.0.7:50061"] - before_s) < 0.5
        assert reports == [seen]
    finally:
        watcher.stop()
        client.close()


def test_unreachable_redis_reports_nothing_so_the_last_known_replicas_stay() -> None:
    reports: list[dict[str, float]] = []
    watcher = RegistryWatcher(f"redis://127.0.0.1:{free_port()}/0", "test:watcher:down", reports.append)
    try:
        assert watcher.poll_once() is None
        assert watcher.poll_once() is None
        assert (reports, watcher.failures, watcher.reachable) == ([], 2, False)
    finally:
        watcher.stop()


def test_a_registry_key_that_vanished_keeps_the_known_replicas_for_one_heartbeat_lifetime(
    local_redis: LocalRedis,
) -> None:
    """A Redis restarted without persistence forgets the registry until the replicas' next heartbeats;
    the gateway must not drop a healthy pool meanwhile, but must not keep it forever either."""
    key = "test:watcher:vanished"
    client = redis.Redis.from_url(local_redis.url)
    clock = [100.0]
    reports: list[dict[str, float]] = []
    watcher = RegistryWatcher(local_redis.url, key, reports.append, max_age_ms=2000, now_s=lambda: clock[0])
    try:
        register(client, "10.0.0.8:50061", key)
        assert watcher.poll_once() is not None
        client.delete(key)
        assert watcher.poll_once() is None
        clock[0] += 1.9
        assert watcher.poll_once() is None
        clock[0] += 0.2
        assert watcher.poll_once() == {}
        assert [list(report) for report in reports] == [["10.0.0.8:50061"], []]
        # Heartbeats coming back end the absence.
        register(client, "10.0.0.8:50061", key)
        assert list(watcher.poll_once() or {}) == ["10.0.0.8:50061"]
    finally:
        watcher.stop()
        client.close()
