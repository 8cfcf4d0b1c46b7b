"""The dashboard's settings, read once from RTRL_* environment variables into a frozen object.

It shares RTRL_LEARNER_ADDRESS, RTRL_INFERENCE_ADDRESSES, RTRL_REDIS_URL and RTRL_REPLICA_REGISTRY
with the gateway, so one environment configures both; its own variables start with RTRL_DASHBOARD_.
`SETTINGS` declares every variable (docs/settings.md lists them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from rtrl.config import (
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_HOST,
    DEFAULT_LEARNER_PORT,
    PREFIX,
    Setting,
    SettingsError,
    SettingsTable,
)
from rtrl.redis_client import checked_redis_url
from rtrl.registry import DEFAULT_REPLICA_REGISTRY
from rtrl.security import SecuritySettings
from rtrl.settings import check_environment

DEFAULT_GATEWAYS = (f"{DEFAULT_HOST}:{DEFAULT_GATEWAY_PORT}",)
DEFAULT_LEARNER_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_LEARNER_PORT}"
# 5 Hz is the slowest rate at which the charts still look live; every poll is a few small gRPC calls.
DEFAULT_REFRESH_HZ = 5.0
MAX_REFRESH_HZ = 30.0
# Every 4th frame of a 60 fps game is 15 frames per second in the browser: smooth enough to follow
# the game, and a quarter of the frame traffic (the clock pays one queue append per delivered frame).
DEFAULT_FRAME_EVERY = 4
DEFAULT_HISTORY_S = 300.0

SETTINGS = SettingsTable(
    Setting("DASHBOARD_HOST", str, DEFAULT_HOST, "Address the HTTP server binds."),
    Setting("DASHBOARD_PORT", int, DEFAULT_DASHBOARD_PORT, "HTTP port; 0 picks a free one.", minimum=0),
    Setting("DASHBOARD_GATEWAYS", tuple, DEFAULT_GATEWAYS, "host:port of every gateway to show, comma-separated."),
    Setting("LEARNER_ADDRESS", str, DEFAULT_LEARNER_ADDRESS, "host:port of the learner."),
    Setting(
        "INFERENCE_ADDRESSES",
        tuple,
        (),
        "Replicas to show besides those in the registry and those the gateways call, comma-separated.",
    ),
    Setting("REDIS_URL", str, "", "Redis holding the replica registry; empty: replicas come from the gateways."),
    Setting("REPLICA_REGISTRY", str, DEFAULT_REPLICA_REGISTRY, "Redis key of the replica registry."),
    Setting(
        "DASHBOARD_REFRESH_HZ",
        float,
        DEFAULT_REFRESH_HZ,
        f"Polls of the services and chart updates per second, 1 to {MAX_REFRESH_HZ:.0f}.",
        minimum=1.0,
    ),
    Setting(
        "DASHBOARD_FRAME_EVERY", int, DEFAULT_FRAME_EVERY, "The game view shows one frame out of this many.", minimum=1
    ),
    Setting("DASHBOARD_HISTORY_S", float, DEFAULT_HISTORY_S, "Seconds of chart history kept and shown.", minimum=10.0),
    Setting(
        "DASHBOARD_RECORDINGS_DIR",
        str,
        "",
        "Directory of recorded episodes; the page links the newest and the server serves it (rtrl up --record-every "
        "sets it).",
    ),
    Setting(
        "DASHBOARD_SUPERVISION_FILE", str, "", "supervision.json of the rtrl up that runs the stack: restarts shown."
    ),
)


@dataclass(frozen=True)
class DashboardSettings:
    """Everything the dashboard service is configured with."""

    host: str = DEFAULT_HOST
    """Address the HTTP server binds; loopback unless told otherwise (RTRL_DASHBOARD_HOST)."""
    port: int = DEFAULT_DASHBOARD_PORT
    """HTTP port; 0 picks a free one (RTRL_DASHBOARD_PORT)."""
    gateways: tuple[str, ...] = DEFAULT_GATEWAYS
    """host:port of every gateway to show, comma-separated (RTRL_DASHBOARD_GATEWAYS)."""
    learner_address: str = DEFAULT_LEARNER_ADDRESS
    """host:port of the learner (RTRL_LEARNER_ADDRESS)."""
    inference_addresses: tuple[str, ...] = ()
    """Replicas to show besides those in the registry and those the gateways call (RTRL_INFERENCE_ADDRESSES)."""
    redis_url: str = ""
    """Redis holding the replica registry; empty: no registry, replicas come from the gateways and the
    static list (RTRL_REDIS_URL)."""
    replica_registry: str = DEFAULT_REPLICA_REGISTRY
    """Redis key of the replica registry (RTRL_REPLICA_REGISTRY)."""
    refresh_hz: float = DEFAULT_REFRESH_HZ
    """Polls of every gateway and the learner per second, and chart updates pushed to each browser
    (RTRL_DASHBOARD_REFRESH_HZ, 1 to 30)."""
    frame_every: int = DEFAULT_FRAME_EVERY
    """The game view shows one frame out of this many (RTRL_DASHBOARD_FRAME_EVERY)."""
    history_s: float = DEFAULT_HISTORY_S
    """Seconds of chart history kept and shown (RTRL_DASHBOARD_HISTORY_S)."""
    recordings_dir: str = ""
    """Directory of recorded episodes (`rtrl up --record-every` sets the run's recordings/); the page links the
    newest, served read-only at /recordings/latest; empty: none (RTRL_DASHBOARD_RECORDINGS_DIR)."""
    supervision_file: str = ""
    """The supervision.json of the `rtrl up` that runs the stack (it sets this): the page shows which services
    were restarted, how often and how long they were down; empty: nothing is shown
    (RTRL_DASHBOARD_SUPERVISION_FILE)."""
    security: SecuritySettings = field(default_factory=SecuritySettings)
    """TLS, token and message size limit of the channels to gateways, replicas and learner (RTRL_TLS_*,
    RTRL_AUTH_TOKEN, RTRL_GRPC_MAX_MESSAGE_BYTES; rtrl/security.py). The web page itself has none: it
    binds loopback by default (SECURITY.md)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> DashboardSettings:
        """Reads the settings; raises SettingsError with a sentence naming the variable to fix."""
        check_environment(env, hyperparameters=False)
        read = partial(SETTINGS.read, env)
        port = read("DASHBOARD_PORT")
        if port > 65535:
            raise SettingsError(f"{PREFIX}DASHBOARD_PORT={port} is not a TCP port; set it to 0..65535.")
        gateways = read("DASHBOARD_GATEWAYS")
        if not gateways:
            raise SettingsError(
                f"{PREFIX}DASHBOARD_GATEWAYS is empty; set it to the gateways' host:port, e.g. 127.0.0.1:50051."
            )
        for address in gateways:
            check_address(address, "DASHBOARD_GATEWAYS")
        learner_address = check_address(read("LEARNER_ADDRESS"), "LEARNER_ADDRESS")
        inference_addresses = read("INFERENCE_ADDRESSES")
        for address in inference_addresses:
            check_address(address, "INFERENCE_ADDRESSES")
        redis_url = checked_redis_url(read("REDIS_URL"))
        refresh_hz = read("DASHBOARD_REFRESH_HZ")
        if refresh_hz > MAX_REFRESH_HZ:
            raise SettingsError(
                f"{PREFIX}DASHBOARD_REFRESH_HZ={refresh_hz} polls the services too often; set it to at most "
                f"{MAX_REFRESH_HZ:.0f}."
            )
        return cls(
            host=read("DASHBOARD_HOST"),
            port=port,
            gateways=gateways,
            learner_address=learner_address,
            inference_addresses=inference_addresses,
            redis_url=redis_url,
            replica_registry=read("REPLICA_REGISTRY"),
            refresh_hz=refresh_hz,
            frame_every=read("DASHBOARD_FRAME_EVERY"),
            history_s=read("DASHBOARD_HISTORY_S"),
            recordings_dir=read("DASHBOARD_RECORDINGS_DIR"),
            supervision_file=read("DASHBOARD_SUPERVISION_FILE"),
            security=SecuritySettings.from_env(env),
        )


def check_address(address: str, variable: str) -> str:
    """Returns "host:port" unchanged, or raises SettingsError naming RTRL_<variable>."""
    host, sep, port = address.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(
            f"{PREFIX}{variable} entry {address!r} is not host:port; set it like 127.0.0.1:50051 "
            "(several: separated by commas)."
        )
    return address
