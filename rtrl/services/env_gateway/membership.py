"""Which inference replicas exist: the Redis registry and RTRL_INFERENCE_ADDRESSES, merged for the pool.

Two sources feed one `Membership`:
- the registry (rtrl/registry.py): replicas heartbeat into a Redis sorted set; `RegistryWatcher` reads
  it every `POLL_INTERVAL_S` on its own thread (never the clock's), so a replica started by hand, by
  `rtrl up` or by `docker compose up --scale` is used within about a second, and one that stops
  heartbeating disappears once its last heartbeat is 2 s old. When Redis cannot be read the watcher
  keeps the last set it read, logs the outage once and the recovery once; when the registry key is
  gone altogether (a Redis restarted without persistence) it keeps that set for one heartbeat lifetime.
- the static list (`AddressResolver`): host:port targets re-resolved every second, which may
  be empty.

`Membership` keeps, per address, when each source last saw it alive (the heartbeat time for the
registry, the resolution time for the static list) and hands the union to `on_members`
(`ReplicaPool.set_members`), which uses those times to bring back a replica it dropped after an
UNAVAILABLE call only once it has been seen alive since. No grpc here.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import redis

from rtrl.redis_client import connect_redis
from rtrl.registry import DEFAULT_MAX_AGE_MS, REDIS_TIMEOUT_S, RegistryError, live_replicas, redis_time_ms
from rtrl.services.env_gateway.settings import split_host_port

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5
RESOLVE_INTERVAL_S = 1.0
STATIC_SOURCE = "static"
REGISTRY_SOURCE = "registry"

OnMembers = Callable[[dict[str, float]], None]
"""Receives address -> when it was last seen alive (time.monotonic seconds)."""


class Membership:
    """The union of every source's addresses, each with the latest time any source saw it alive."""

    def __init__(self, on_members: OnMembers) -> None:
        self._on_members = on_members
        self._lock = threading.Lock()
        self._sources: dict[str, dict[str, float]] = {}

    def update(self, source: str, last_seen_s: Mapping[str, float]) -> None:
        """Replaces what `source` knows and hands the merged set over."""
        with self._lock:
            self._sources[source] = dict(last_seen_s)
            merged: dict[str, float] = {}
            for addresses in self._sources.values():
                for address, seen_s in addresses.items():
                    merged[address] = max(seen_s, merged.get(address, seen_s))
            # Handed over under the lock so that two sources updating at once cannot reorder the sets.
            self._on_members(merged)

    def static_addresses(self, now_s: Callable[[], float] = time.monotonic) -> Callable[[list[str]], None]:
        """A callback for AddressResolver: every address it resolves is seen alive now."""

        def on_addresses(addresses: list[str]) -> None:
            seen_s = now_s()
            self.update(STATIC_SOURCE, {address: seen_s for address in addresses})

        return on_addresses


class RegistryWatcher:
    """Polls the replica registry in Redis every `interval_s` and reports the live replicas."""

    def __init__(
        self,
        redis_url: str,
        key: str,
        on_replicas: Callable[[dict[str, float]], None],
        *,
        interval_s: float = POLL_INTERVAL_S,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        now_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self._on_replicas = on_replicas
        self._interval_s = interval_s
        self._max_age_ms = max_age_ms
        self._now_s = now_s
        # Short timeouts: a Redis that stopped answering must not stall the poll for long.
        self._client = connect_redis(redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self.failures = 0
        self.reachable: bool | None = None
        """Whether the last poll reached Redis (None before the first)."""
        self._missing_since_s: float | None = None
        """When the registry key was first seen missing in the current absence."""

    def poll_once(self) -> dict[str, float] | None:
        """Reads the registry once and reports it; None (and nothing reported) when Redis failed or the
        registry key vanished less than a heartbeat lifetime ago."""
        try:
            addresses = live_replicas(self._client, self.key, self._max_age_ms)
            before_s = self._now_s()
            redis_now_ms = redis_time_ms(self._client)
            heartbeats_ms = self._client.zmscore(self.key, addresses) if addresses else []
            # No key at all is what a restarted Redis without persistence looks like until the replicas'
            # next heartbeats (it is also what the last replica leaving looks like): keep the replicas
            # known so far for one heartbeat lifetime instead of dropping a healthy pool at once.
            registry_missing = not addresses and not self._client.exists(self.key)
        except (RegistryError, redis.RedisError) as error:
            self.failures += 1
            if self.reachable is not False:
                log.warning(
                    "cannot read the replica registry %r (%s); keeping the replicas known so far and retrying",
                    self.key,
                    error,
                )
            self.reachable = False
            return None
        if self.reachable is False:
            log.info("the replica registry %r is readable again", self.key)
        self.reachable = True
        self.polls += 1
        if registry_missing:
            if self._missing_since_s is None:
                self._missing_since_s = before_s
            if before_s - self._missing_since_s < self._max_age_ms / 1000.0:
                return None
        else:
            self._missing_since_s = None
        # Heartbeats carry the Redis server's clock; translate them to ours through the time just read.
        now_s = before_s
        last_seen_s = {
            address: now_s - max(redis_now_ms - float(score), 0.0) / 1000.0
            for address, score in zip(addresses, heartbeats_ms, strict=True)
            # A member may have been removed between the two reads; it is gone.
            if score is not None
        }
        self._on_replicas(last_seen_s)
        return last_seen_s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rtrl-registry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._client.close()


def resolve(target: str, getaddrinfo: Callable[..., Sequence[tuple]] = socket.getaddrinfo) -> list[str]:
    """Every address `target` (host:port) resolves to, IPv4 first-class: a name that resolves to IPv4
    addresses uses only those, because "localhost" also yielding ::1 would count one server twice."""
    host, port = split_host_port(target)
    infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    v4 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET})
    if v4:
        return [f"{ip}:{port}" for ip in v4]
    v6 = sorted({info[4][0] for info in infos if info[0] == socket.AF_INET6})
    return [f"[{ip}]:{port}" for ip in v6]


class AddressResolver:
    """Resolves the configured targets every `interval_s` and hands the union to `on_addresses`."""

    def __init__(
        self,
        targets: Sequence[str],
        on_addresses: Callable[[list[str]], None],
        interval_s: float = RESOLVE_INTERVAL_S,
        getaddrinfo: Callable[..., Sequence[tuple]] = socket.getaddrinfo,
    ) -> None:
        self._targets = list(targets)
        self._on_addresses = on_addresses
        self._interval_s = interval_s
        self._getaddrinfo = getaddrinfo
        self._known: dict[str, list[str]] = {}
        self._failing: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def resolve_once(self) -> list[str]:
        """Resolves every target and hands the addresses over; returns them."""
        for target in self._targets:
            try:
                self._known[target] = resolve(target, self._getaddrinfo)
                if target in self._failing:
                    self._failing.discard(target)
                    log.info("inference target %s resolves again", target)
            except OSError as error:
                # Keep the last known addresses: a DNS hiccup should not drop live replicas.
                if target not in self._failing:
                    self._failing.add(target)
                    log.warning("cannot resolve inference target %s (%s); keeping its last addresses", target, error)
        addresses = list(dict.fromkeys(a for target in self._targets for a in self._known.get(target, [])))
        self._on_addresses(addresses)
        return addresses

    def start(self) -> None:
        if not self._targets:
            return
        self._thread = threading.Thread(target=self._run, name="rtrl-resolver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.resolve_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
