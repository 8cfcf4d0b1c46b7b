"""Live membership of inference replicas, kept in Redis: replicas heartbeat into it, gateways read it.

Why a registry rather than DNS: a gateway must use a replica started later within 2 s and stop using
a dead one within a deadline, the same way under `rtrl up`, by hand and under `docker compose --scale`.
Plain DNS round-robin only shows new containers to clients that re-resolve, and never shows replicas
started by hand on other ports; every part of rtrl already reaches Redis, so the replicas announce
themselves there.

The contract (what `register` writes and `live_replicas` reads):
- key: one sorted set, RTRL_REPLICA_REGISTRY (default "rtrl:replicas"); several gateways can share it.
- member: the address a gateway dials, "host:port" ("[v6]:port" for IPv6), as the replica advertises it.
- score: the replica's last heartbeat in milliseconds of the Redis server's clock (TIME), so that
  replicas and gateways on different hosts need not agree on the time.
- heartbeat: every HEARTBEAT_INTERVAL_S (0.5 s) a replica ZADDs itself; on graceful shutdown it ZREMs.
- expiry: readers ignore members older than DEFAULT_MAX_AGE_MS (2 s, four missed heartbeats), which is
  how a SIGKILLed replica disappears; heartbeats also delete members older than PRUNE_AFTER_MS so the
  set does not grow with the addresses of replicas that died long ago.
A gateway should additionally stop using a replica as soon as a call to it fails with UNAVAILABLE.

Errors: a Redis failure is raised as RegistryError (from the redis error). The `Heartbeat` thread
never raises: it logs the first failure, keeps retrying every interval, and logs the recovery.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading

import redis

from rtrl.redis_client import connect_redis

log = logging.getLogger(__name__)

DEFAULT_REPLICA_REGISTRY = "rtrl:replicas"
HEARTBEAT_INTERVAL_S = 0.5
DEFAULT_MAX_AGE_MS = 2000
PRUNE_AFTER_MS = 60_000
# A heartbeat must not hang on a Redis that stopped answering: it would then miss the next ones, and
# shutdown would wait for it. Short socket timeouts turn that into a failed beat that is retried.
REDIS_TIMEOUT_S = 0.5
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class RegistryError(RuntimeError):
    """The registry in Redis could not be read or written; the message says where and why."""


def redis_time_ms(client: redis.Redis) -> int:
    """The Redis server's clock in milliseconds: the one clock every writer and reader shares."""
    seconds, microseconds = client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def register(client: redis.Redis, address: str, key: str = DEFAULT_REPLICA_REGISTRY) -> int:
    """Records a heartbeat of the replica at `address` (ZADD key now_ms address); returns now_ms."""
    try:
        now_ms = redis_time_ms(client)
        pipeline = client.pipeline(transaction=False)
        pipeline.zadd(key, {address: now_ms})
        pipeline.zremrangebyscore(key, "-inf", now_ms - PRUNE_AFTER_MS)
        pipeline.execute()
    except redis.RedisError as e:
        raise RegistryError(f"cannot register replica {address} in Redis key {key!r}: {e}") from e
    return now_ms


def unregister(client: redis.Redis, address: str, key: str = DEFAULT_REPLICA_REGISTRY) -> None:
    """Removes the replica at `address` (ZREM), so that readers stop listing it at once."""
    try:
        client.zrem(key, address)
    except redis.RedisError as e:
        raise RegistryError(f"cannot unregister replica {address} from Redis key {key!r}: {e}") from e


def live_replicas(
    client: redis.Redis, key: str = DEFAULT_REPLICA_REGISTRY, max_age_ms: int = DEFAULT_MAX_AGE_MS
) -> list[str]:
    """Addresses of the replicas whose last heartbeat is at most `max_age_ms` old, sorted."""
    try:
        now_ms = redis_time_ms(client)
        members = client.zrangebyscore(key, now_ms - max_age_ms, "+inf")
    except redis.RedisError as e:
        raise RegistryError(f"cannot read the replica registry in Redis key {key!r}: {e}") from e
    return sorted(member.decode() if isinstance(member, bytes) else str(member) for member in members)


def advertised_address(host: str, port: int, override: str = "") -> str:
    """The address to register for a server bound to host:port.

    `override` (RTRL_INFERENCE_ADVERTISE_ADDRESS) wins. A wildcard host (0.0.0.0, ::) is not dialable,
    so it is replaced by this host's address as its own name resolves, which in a compose container
    is the container's IP on the compose network.
    """
    if override:
        return override
    if host in WILDCARD_HOSTS:
        name = socket.gethostname()
        try:
            host = socket.gethostbyname(name)
        except OSError:
            # The name does not resolve here; other hosts on the network may still resolve it.
            host = name
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass  # a host name, not a literal address
    return f"{host}:{port}"


class Heartbeat:
    """Registers `address` every `interval_s` on its own thread until `stop()`, which unregisters it."""

    def __init__(
        self,
        redis_url: str,
        address: str,
        key: str = DEFAULT_REPLICA_REGISTRY,
        interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self.address = address
        self.key = key
        self.interval_s = interval_s
        self.client = connect_redis(redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        self.beats = 0
        """Heartbeats that reached Redis."""
        self.failures = 0
        """Heartbeats that did not."""
        self.registered = False
        """True while the last heartbeat reached Redis."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {address}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> bool:
        """One heartbeat; True when it reached Redis. Logs only changes, so a Redis outage logs once."""
        try:
            register(self.client, self.address, self.key)
        except RegistryError as e:
            self.failures += 1
            if self.registered or self.failures == 1:
                log.warning("%s; serving on and retrying every %.1f s", e, self.interval_s)
            self.registered = False
            return False
        if not self.registered:
            log.info("registered as %s in Redis key %r", self.address, self.key)
        self.beats += 1
        self.registered = True
        return True

    def _run(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(self.interval_s):
                return

    def stop(self, unregister_address: bool = True) -> None:
        """Stops beating and, unless told otherwise, removes the address so readers drop it at once.

        A heartbeat that was never started registered nothing, so it has nothing to remove."""
        self._stop.set()
        started = self._thread.ident is not None
        if started:
            self._thread.join()
        if unregister_address and started:
            try:
                unregister(self.client, self.address, self.key)
            except RegistryError as e:
                # Readers drop it anyway once its last heartbeat is DEFAULT_MAX_AGE_MS old.
                log.warning("%s; readers will drop it when its heartbeat ages out", e)
            else:
                log.info("unregistered %s from Redis key %r", self.address, self.key)
        self.registered = False
        self.client.close()
