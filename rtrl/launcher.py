"""`rtrl up`: the whole stack on one machine as separate processes, supervised until the end.

Starts Redis (the given URL, or an embedded redis-server on a free loopback port), the learner,
N inference replicas and M gateways (each its own game; they share the replicas, the stream and the
learner), each as `python -m rtrl.services.<name>` configured through the
same RTRL_* environment variables docker compose uses. Replicas get RTRL_REDIS_URL, so they register
in the replica registry there and the gateway finds them the way it finds replicas started by hand
or by `docker compose --scale`: no address list is passed. `--interaction sequential` runs the
act -> learn -> act baseline (RTRL_INTERACTION on the gateway, RTRL_LEARNER_MODE on the learner).
With `--dashboard` (the default) the dashboard's web page watches the stack; it is optional: one that
cannot start is reported and the stack runs on without it, and it is stopped first. `--record-every`
records a greedy episode of each newer checkpoint now and then (rtrl/recordings.py) into the run's
`recordings/`, which the dashboard links.
Each service gets, from lowest to highest precedence: the run file's [all] and its own section (`--config`),
the environment of `rtrl up`, what rtrl up derives from its options (RTRL_ENV from --env...), `--set`, and
what rtrl up must choose for each process (ports, ids, the run's files); docs/settings.md says the same.
A service that exits unexpectedly is restarted (rtrl/supervision.py says when, and when to give up);
so is the embedded Redis, on the same port, from its append-only file. Restarts are counted in the
status line and in the run's supervision.json, which `rtrl status` and the dashboard read.
It shows a live status line, and on `--duration` or Ctrl-C shuts down in the order that loses
nothing: the gateway first (no new transitions; its publisher flushes), then the replicas, then the
learner once it has consumed the stream (its final checkpoint is written on the way out), then Redis.
If `rtrl up` dies without doing so (SIGKILL), every process it started gets SIGTERM (rtrl/orphans.py).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtrl.config import (
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_HOST,
    DEFAULT_INFERENCE_PORT,
    DEFAULT_LEARNER_PORT,
    SettingsError,
)
from rtrl.cpus import format_cpu_list, split_cpus
from rtrl.grpc_util import health_status
from rtrl.local_redis import LocalRedis, free_port
from rtrl.orphans import dies_with_parent, parent_watch_env
from rtrl.recordings import RecordingEntry, RecordingScheduler
from rtrl.redis_client import redacted_url
from rtrl.security import SecuritySettings
from rtrl.settings import RunFile
from rtrl.status import StackClient, StackStatus, status_line
from rtrl.status_table import StackAddresses, write_addresses
from rtrl.supervision import DEFAULT_RESTART_POLICY, SUPERVISION_FILE, Supervisor, supervision_text
from rtrl.v1 import env_gateway_pb2, inference_pb2, learner_pb2

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 15.0
# How often `rtrl up` looks for a process that died or came back (the status line has its own interval).
SUPERVISE_INTERVAL_S = 0.1
READY_CHECK_TIMEOUT_S = 0.3
# The gRPC service each module serves: its health is asked by name, so that another server that holds
# the port (a clash of --*-port options) is never taken for the service.
HEALTH_SERVICES = {
    "rtrl.services.env_gateway": env_gateway_pb2.DESCRIPTOR.services_by_name["EnvGatewayService"].full_name,
    "rtrl.services.inference": inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    "rtrl.services.learner": learner_pb2.DESCRIPTOR.services_by_name["LearnerService"].full_name,
}


# The service (its run file section) of each module rtrl up starts.
SERVICE_OF_MODULE = {
    "rtrl.services.env_gateway": "gateway",
    "rtrl.services.inference": "inference",
    "rtrl.services.learner": "learner",
    "rtrl.services.dashboard": "dashboard",
}
# What rtrl up always sets itself, from its options or for each process it starts, with the [up] option to
# use instead (None: rtrl up chooses it per process). A run file's value for one of them would never apply, so
# it is refused. RTRL_SCHEDULER, RTRL_CPUS, RTRL_GATEWAY_ID and RTRL_DASHBOARD_RECORDINGS_DIR are set only
# with --scheduler, --learner-cpus, several gateways or --record-every: a run file's value applies otherwise.
SET_BY_UP: dict[str, str | None] = {
    "RTRL_ENV": "env",
    "RTRL_REDIS_URL": "redis_url",
    "RTRL_CHECKPOINT_DIR": "checkpoint_dir",
    "RTRL_GATEWAY_HOST": "host",
    "RTRL_LEARNER_HOST": "host",
    "RTRL_INFERENCE_HOST": "host",
    "RTRL_DASHBOARD_HOST": "host",
    "RTRL_GATEWAY_PORT": "gateway_port",
    "RTRL_LEARNER_PORT": "learner_port",
    "RTRL_LEARNER_ADDRESS": "learner_port",
    "RTRL_INFERENCE_PORT": "inference_base_port",
    "RTRL_DASHBOARD_PORT": "dashboard_port",
    "RTRL_DASHBOARD_GATEWAYS": "gateways",
    "RTRL_INTERACTION": "interaction",
    "RTRL_LEARNER_MODE": "interaction",
    "RTRL_GATEWAY_METRICS_PORT": "metrics_base_port",
    "RTRL_LEARNER_METRICS_PORT": "metrics_base_port",
    "RTRL_INFERENCE_METRICS_PORT": "metrics_base_port",
    "RTRL_LEARNER_TENSORBOARD_DIR": "run_dir",
    "RTRL_GATEWAY_FINAL_STATS_PATH": "run_dir",
    "RTRL_GATEWAY_EPISODE_LOG": "run_dir",
    "RTRL_DASHBOARD_SUPERVISION_FILE": "run_dir",
    "RTRL_REPLICA_ID": None,
    "RTRL_PARENT_PID": None,
}


def check_run_file(run_file: RunFile) -> None:
    """Raises SettingsError for a setting of the run file that rtrl up sets itself (SET_BY_UP)."""
    for section, env in run_file.env.items():
        for name in env:
            if name not in SET_BY_UP:
                continue
            key = name.removeprefix("RTRL_").lower()
            option = SET_BY_UP[name]
            instead = f"give {option} under [up] instead" if option else "leave it out"
            raise SettingsError(f"{run_file.path}: [{section}] {key} is set by rtrl up itself; {instead}.")


class LaunchError(RuntimeError):
    """The stack could not be started; the message says which part and why."""


@dataclass
class UpOptions:
    """What `rtrl up` runs; the CLI fills this from its flags."""

    env: str = "ale:Pong"
    inference_replicas: int = 2
    duration_s: float | None = None
    redis_url: str | None = None
    checkpoint_dir: Path | None = None
    run_dir: Path = Path("runs")
    host: str = DEFAULT_HOST
    gateway_port: int = DEFAULT_GATEWAY_PORT
    """Gateway 0 listens here; the others on free ports, printed at start and recorded in addresses.json."""
    gateways: int = 1
    gateway_env: dict[int, dict[str, str]] = field(default_factory=dict)
    """Environment variables for gateway i alone (DISPLAY=:2, RTRL_PROFILE=...), over everything else."""
    learner_port: int = DEFAULT_LEARNER_PORT
    inference_base_port: int = DEFAULT_INFERENCE_PORT
    summary_json: Path | None = None
    metrics_base_port: int = 0
    """Prometheus ports: 0 picks a free one per process, -1 turns /metrics off, N gives gateway j N + j, the
    learner the next one and replica i the ones after it (one gateway: N, N + 1, N + 2 + i)."""
    status_interval_s: float = 1.0
    dashboard: bool = True
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    interaction: str = "async"
    scheduler: str | None = None
    learner_cpus: str = ""
    """CPUs for the learner alone ("1", "2-3"); everything else runs on the others. Empty: no pinning."""
    record_every_s: float | None = None
    """Seconds between recordings of the newest checkpoint (one greedy episode each); None: none."""
    restart: str = DEFAULT_RESTART_POLICY
    """What to do when a service exits unexpectedly: "on-failure" restarts it, "never" stops the run."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """--set: settings for every service, over everything but what rtrl up chooses per process."""
    run_file: RunFile | None = None
    """--config: settings under the environment; its [up] is already in the options above."""


@dataclass
class Child:
    """One supervised service process, and what is needed to start it again."""

    name: str
    address: str
    """host:port of its gRPC server, or the URL of its page when `http`."""
    module: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes]
    http: bool = False
    """Ready when GET <address>healthz answers (the dashboard); else when gRPC health says SERVING."""
    required: bool = True
    """Whether the run needs it: one that cannot be kept running stops the run (all but the dashboard)."""
    ready: bool = False
    restart_at: float | None = None
    given_up: bool = False


def default_checkpoint_dir(env: str) -> Path:
    """One directory per game, so a run on another game never resumes a mismatched model."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in env)
    return Path("checkpoints") / safe


class Stack:
    """The processes of one `rtrl up` run."""

    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.run_dir = options.run_dir / time.strftime("%Y%m%d-%H%M%S")
        self.log_dir = self.run_dir / "logs"
        self.checkpoint_dir = options.checkpoint_dir or default_checkpoint_dir(options.env)
        # One JSON line per finished episode of every gateway: the run's learning curve
        # (rtrl/services/env_gateway/episodes.py).
        self.episode_log = self.run_dir / "episodes.jsonl"
        o = options
        self.gateway_names = gateway_names(o.gateways)
        # Ports chosen here are not bound until their process starts: each choice avoids the ports given
        # and the ones chosen before it, or a service would find its port taken by another of the run.
        self.taken_ports = {o.gateway_port, o.learner_port, o.dashboard_port}
        self.taken_ports.update(o.inference_base_port + i for i in range(o.inference_replicas))
        self.gateway_ports = [
            o.gateway_port,
            *(free_port_besides(self.taken_ports, o.host) for _ in range(o.gateways - 1)),
        ]
        self.gateway_addresses = [f"{o.host}:{port}" for port in self.gateway_ports]
        self.learner_address = f"{o.host}:{o.learner_port}"
        self.replica_addresses = [f"{o.host}:{o.inference_base_port + i}" for i in range(o.inference_replicas)]
        self.redis: LocalRedis | None = None
        self.redis_url = options.redis_url or ""
        if options.run_file is not None:
            check_run_file(options.run_file)
        # The launcher's own clients (health checks, the status line) use what the services are given, so
        # TLS and the token set with --set or in the run file's [all] reach them too. Raises SettingsError for
        # unusable values.
        self.security = SecuritySettings.from_env({**self.file_env("all"), **os.environ, **options.extra_env})
        self.metrics_ports = metrics_ports(options, self.taken_ports)
        self.tensorboard_dir = self.run_dir / "tensorboard"
        self.learner: Child | None = None
        self.replicas: list[Child] = []
        self.gateways: list[Child] = []
        self.dashboard: Child | None = None
        self.dashboard_url = f"http://{o.host}:{o.dashboard_port}/"
        self.recordings_dir = self.run_dir / "recordings"
        self.recordings: RecordingScheduler | None = None
        self.supervisor = Supervisor(options.restart)
        self.supervision_path = self.run_dir / SUPERVISION_FILE

    # -- starting ----------------------------------------------------------------------------------

    def child_env(self, service: str, env: dict[str, str]) -> dict[str, str]:
        """The whole environment of a child: the run file's settings for `service` under this process's
        environment, under `env` (what rtrl up sets: its options, --set, per-process values)."""
        return {**self.file_env(service), **os.environ, **env}

    def file_env(self, service: str) -> dict[str, str]:
        """What the run file gives `service` ("all": what it gives every service)."""
        run_file = self.options.run_file
        if run_file is None:
            return {}
        return run_file.service_env(service) if service != "all" else dict(run_file.env.get("all", {}))

    def common_env(self) -> dict[str, str]:
        o = self.options
        scheduler = {"RTRL_SCHEDULER": o.scheduler} if o.scheduler else {}
        return {
            # Every service reaches this Redis; replicas also register in it, which is how the gateway finds them.
            "RTRL_REDIS_URL": self.redis_url,
            "RTRL_CHECKPOINT_DIR": str(self.checkpoint_dir.resolve()),
            "RTRL_ENV": o.env,
            "RTRL_GATEWAY_HOST": o.host,
            "RTRL_GATEWAY_PORT": str(o.gateway_port),
            "RTRL_LEARNER_HOST": o.host,
            "RTRL_LEARNER_PORT": str(o.learner_port),
            "RTRL_LEARNER_ADDRESS": self.learner_address,
            "RTRL_INFERENCE_HOST": o.host,
            "RTRL_INTERACTION": o.interaction,
            "RTRL_LEARNER_MODE": o.interaction,
            **scheduler,
            **o.extra_env,
        }

    def _spawn(
        self, name: str, module: str, address: str, env: dict[str, str], http: bool = False, required: bool = True
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        self.supervisor.record(name)
        env = self.child_env(SERVICE_OF_MODULE[module], env)
        return Child(name, address, module, env, log_path, _popen(module, env, log_path), http, required)

    def _respawn(self, child: Child) -> None:
        with open(child.log_path, "ab") as log_file:
            log_file.write(f"\n--- restarted by rtrl up at {time.strftime('%H:%M:%S')} ---\n".encode())
        child.process = _popen(child.module, child.env, child.log_path)
        child.ready = False
        child.restart_at = None
        self.supervisor.restarted(child.name)

    def _check_ports(self) -> None:
        """Two services given the same port would make one fail at start: say which, before starting any."""
        o = self.options
        owners: dict[int, str] = {}
        ports = [
            *(("--gateway-port" if i == 0 else f"gateway {i}", p) for i, p in enumerate(self.gateway_ports)),
            ("--learner-port", o.learner_port),
            *((f"--inference-base-port (replica {i})", o.inference_base_port + i) for i in range(o.inference_replicas)),
            *((("--dashboard-port", o.dashboard_port),) if o.dashboard else ()),
        ]
        for owner, port in ports:
            if port in owners:
                raise LaunchError(f"{owner} and {owners[port]} are both port {port}; give each service its own port")
            owners[port] = owner

    def _partition_cpus(self) -> tuple[dict[str, str], dict[str, str]]:
        """With --learner-cpus: RTRL_CPUS for the learner and for everything else. This process moves to
        the others first, so Redis, started here, runs there too."""
        o = self.options
        if not o.learner_cpus:
            return {}, {}
        if not hasattr(os, "sched_setaffinity"):
            raise LaunchError("--learner-cpus is not supported on this platform; leave it out.")
        try:
            learner, others = split_cpus(o.learner_cpus)
        except SettingsError as e:
            raise LaunchError(str(e)) from None
        os.sched_setaffinity(0, others)
        return {"RTRL_CPUS": format_cpu_list(learner)}, {"RTRL_CPUS": format_cpu_list(others)}

    def start(self) -> None:
        o = self.options
        if o.inference_replicas < 1:
            raise LaunchError("--inference-replicas must be at least 1: the gateway needs a replica to act")
        if o.gateways < 1:
            raise LaunchError("--gateways must be at least 1: a run needs a game")
        unknown = sorted(i for i in o.gateway_env if not 0 <= i < o.gateways)
        if unknown:
            raise LaunchError(f"--gateway-set names gateway {unknown[0]}, but gateways are 0..{o.gateways - 1}")
        self._check_ports()
        learner_cpus, other_cpus = self._partition_cpus()
        if not self.redis_url:
            # A fresh password per run: other users of this machine cannot write into the stream.
            self.redis = LocalRedis(
                port=free_port_besides(self.taken_ports), password=secrets.token_urlsafe(24), dies_with_parent=True
            ).start()
            self.redis_url = self.redis.url
        env = self.common_env()
        learner_env = {
            "RTRL_LEARNER_METRICS_PORT": str(self.metrics_ports["learner"]),
            "RTRL_LEARNER_TENSORBOARD_DIR": str(self.tensorboard_dir.resolve()),
            **env,
            **learner_cpus,
        }
        env = {**env, **other_cpus}  # everything but the learner, recordings included
        self.learner = self._spawn("learner", "rtrl.services.learner", self.learner_address, learner_env)
        for i, address in enumerate(self.replica_addresses):
            replica_env = {
                "RTRL_INFERENCE_METRICS_PORT": str(self.metrics_ports[f"inference-{i}"]),
                **env,
                "RTRL_INFERENCE_PORT": address.rsplit(":", 1)[1],
                "RTRL_REPLICA_ID": f"replica-{i}",
            }
            self.replicas.append(self._spawn(f"inference-{i}", "rtrl.services.inference", address, replica_env))
        self._wait_serving([self.learner, *self.replicas])
        for i, (name, address) in enumerate(zip(self.gateway_names, self.gateway_addresses, strict=True)):
            # Distinct ids: the learner keeps each gateway's transitions apart (successors, decision pairing).
            gateway_id = {"RTRL_GATEWAY_ID": name} if o.gateways > 1 else {}
            gateway_env = {
                "RTRL_GATEWAY_METRICS_PORT": str(self.metrics_ports[name]),
                **env,
                **gateway_id,
                "RTRL_GATEWAY_PORT": str(self.gateway_ports[i]),
                "RTRL_GATEWAY_FINAL_STATS_PATH": str(self.final_stats_path(name).resolve()),
                "RTRL_GATEWAY_EPISODE_LOG": str(self.episode_log.resolve()),
                **o.gateway_env.get(i, {}),
            }
            self.gateways.append(self._spawn(name, "rtrl.services.env_gateway", address, gateway_env))
        self._wait_serving(self.gateways)
        if self.redis is not None:
            self.supervisor.ready("redis")
        if o.dashboard:
            dashboard_env = {
                **env,
                "RTRL_DASHBOARD_HOST": o.host,
                "RTRL_DASHBOARD_PORT": str(o.dashboard_port),
                "RTRL_DASHBOARD_GATEWAYS": ",".join(self.gateway_addresses),
            }
            if o.record_every_s is not None:
                dashboard_env["RTRL_DASHBOARD_RECORDINGS_DIR"] = str(self.recordings_dir.resolve())
            dashboard_env["RTRL_DASHBOARD_SUPERVISION_FILE"] = str(self.supervision_path.resolve())
            self.dashboard = self._spawn(
                "dashboard", "rtrl.services.dashboard", self.dashboard_url, dashboard_env, http=True, required=False
            )
            try:
                self._wait_serving([self.dashboard])
            except LaunchError as e:
                # The page is for watching; the stack runs (and is stopped by its own rules) without it.
                print(f"rtrl up: the dashboard did not start, running without it (--dashboard-port): {e}")
                _terminate([self.dashboard])
                self.supervisor.forget(self.dashboard.name)
                self.dashboard = None
        if o.record_every_s is not None:
            self.recordings = RecordingScheduler(
                env=o.env,
                checkpoint_dir=self.checkpoint_dir.resolve(),
                directory=self.recordings_dir.resolve(),
                log_dir=self.log_dir,
                interval_s=o.record_every_s,
                # `rtrl play` reads the gateway's settings: the run file's [gateway] too.
                child_env={**self.child_env("gateway", env), "PYTHONUNBUFFERED": "1"},
                on_recorded=_announce_recording,
            )
            self.recordings.start()

    def addresses(self) -> StackAddresses:
        """Where everything listens, as `rtrl status` and the summary JSON record it."""
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return StackAddresses(
            gateways=list(self.gateway_addresses),
            learner=self.learner_address,
            replicas=list(self.replica_addresses),
            metrics={name: f"http://{host}:{port}/metrics" for name, port in self.metrics_ports.items() if port >= 0},
            tensorboard_dir=str(self.tensorboard_dir),
            dashboard=self.dashboard_url if self.dashboard is not None else "",
            pid=os.getpid(),
            supervision=str(self.supervision_path.resolve()),
        )

    def _wait_serving(self, children: list[Child]) -> None:
        """Waits until each child is ready (gRPC health SERVING, or its page answers); LaunchError with its log
        when one exits first or the start takes longer than STARTUP_TIMEOUT_S."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pending = list(children)
        while pending:
            for child in list(pending):
                code = child.process.poll()
                if code is not None:
                    raise LaunchError(
                        f"{child.name} exited with code {code} during start; its log {child.log_path} says:\n"
                        + tail(child.log_path)
                    )
                if self._answers(child, timeout_s=0.5):
                    pending.remove(child)
                    child.ready = True
                    self.supervisor.ready(child.name)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise LaunchError(
                    f"{names} did not become healthy within {STARTUP_TIMEOUT_S:.0f} s; see {self.log_dir}"
                )
            time.sleep(0.1)

    def children(self) -> list[Child]:
        return [c for c in (*self.gateways, *self.replicas, self.learner, self.dashboard) if c is not None]

    def final_stats_path(self, gateway_name: str) -> Path:
        """Where a gateway writes its final GetStats when it stops, after its publisher flushed."""
        return self.run_dir / f"{gateway_name}-final-stats.json"

    def final_gateway_stats(self) -> dict[str, Any]:
        """address -> the final GetStats each gateway wrote (those that wrote one)."""
        return {
            address: json.loads(self.final_stats_path(name).read_text())
            for name, address in zip(self.gateway_names, self.gateway_addresses, strict=True)
            if self.final_stats_path(name).exists()
        }

    # -- supervising -------------------------------------------------------------------------------

    def supervise(self) -> bool:
        """Restarts what died and notes what came back, as the restart policy says; False when the run must
        stop (a required service given up on, printed with its log). Called every SUPERVISE_INTERVAL_S."""
        before = self.supervisor.changes
        keep_running = self._supervise_redis() and all(
            self._supervise(child) for child in self.children() if not child.given_up
        )
        if self.supervisor.changes != before:
            self.supervisor.write(self.supervision_path)
        return keep_running

    def _supervise(self, child: Child) -> bool:
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                self._respawn(child)
            return True
        code = child.process.poll()
        if code is None:
            if not child.ready and self._answers(child):
                child.ready = True
                self.supervisor.ready(child.name)
                down = self.supervisor.records[child.name].last_down_s or 0.0
                _say(f"{child.name} is back, {down:.1f} s after it exited")
            return True
        decision = self.supervisor.exited(child.name, code, child.ready)
        child.ready = False
        _say(f"{child.name} exited with code {code}; end of {child.log_path}:\n{tail(child.log_path)}")
        if decision.give_up:
            child.given_up = True
            if child.required:
                _say(f"stopping the run: {child.name} is not restarted ({decision.reason})")
                return False
            _say(f"{child.name} is not restarted ({decision.reason}); the run goes on without it")
            return True
        child.restart_at = now + decision.delay_s
        _say(f"restarting {child.name}" + (f" in {decision.delay_s:g} s" if decision.delay_s else ""))
        return True

    def _supervise_redis(self) -> bool:
        """The embedded Redis, restarted at once on the same port: its append-only file brings the stream,
        the consumer group and its pending entries back; the services reconnect by themselves."""
        if self.redis is None or self.redis.process is None or self.redis.process.poll() is None:
            return True
        code = self.redis.process.returncode
        decision = self.supervisor.exited("redis", code, was_ready=True)
        _say(f"the embedded redis-server exited with code {code}")
        if decision.give_up:
            _say(f"stopping the run: redis is not restarted ({decision.reason})")
            return False
        try:
            self.redis.start()
        except RuntimeError as e:
            _say(f"stopping the run: redis could not be restarted on port {self.redis.port}: {e}")
            return False
        self.supervisor.restarted("redis")
        self.supervisor.ready("redis")
        _say(f"redis is back on port {self.redis.port}")
        return True

    def _answers(self, child: Child, timeout_s: float = READY_CHECK_TIMEOUT_S) -> bool:
        if child.http:
            return _page_answers(child.address, timeout_s)
        service = HEALTH_SERVICES[child.module]
        return health_status(child.address, timeout_s, self.security, service) == "SERVING"

    # -- stopping ----------------------------------------------------------------------------------

    def stop(self, client: StackClient | None) -> StackStatus | None:
        """Stops everything in an order that loses nothing; returns the last status read before the learner stopped."""
        final: StackStatus | None = None
        if self.recordings is not None:
            self.recordings.stop()
        if self.dashboard is not None:
            _terminate([self.dashboard])
        _terminate(self.gateways)
        if self.learner is not None and client is not None and self.learner.process.poll() is None:
            final = self._drain(client)
        _terminate(self.replicas)
        if self.learner is not None:
            _terminate([self.learner])
        if self.redis is not None:
            self.redis.stop()
        return final

    def _drain(self, client: StackClient) -> StackStatus:
        """Waits (bounded) until the learner has consumed and acknowledged everything in the stream."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            status = client.poll()
            lr = status.learner
            if lr is not None and lr.stream_pending == 0 and lr.stream_lag == 0:
                return status
            if time.monotonic() > deadline:
                log.warning("learner did not drain the stream within %.0f s", DRAIN_TIMEOUT_S)
                return status
            time.sleep(0.2)


def gateway_names(count: int) -> list[str]:
    """The gateways' service names (and, with several, their RTRL_GATEWAY_ID): "gateway", or "gateway-0" ..."""
    return ["gateway"] if count == 1 else [f"gateway-{i}" for i in range(count)]


def free_port_besides(taken: set[int], host: str = "127.0.0.1") -> int:
    """A free port that is not in `taken` (ports chosen for processes not started yet), added to it."""
    while (port := free_port(host)) in taken:
        pass
    taken.add(port)
    return port


def metrics_ports(options: UpOptions, taken: set[int] | None = None) -> dict[str, int]:
    """The /metrics port of each process: distinct free ports besides `taken`, fixed ones from a base, or -1
    (off) for all."""
    names = [
        *gateway_names(options.gateways),
        "learner",
        *(f"inference-{i}" for i in range(options.inference_replicas)),
    ]
    base = options.metrics_base_port
    if base < 0:
        return dict.fromkeys(names, -1)
    if base == 0:
        # Chosen here rather than by each process (port 0) so that they can be printed and recorded before
        # anyone scrapes; `free_port` may race with another program, which then fails that service's start.
        taken = set() if taken is None else taken
        return {name: free_port_besides(taken) for name in names}
    fixed = {name: base + offset for offset, name in enumerate(names)}
    if taken is not None:
        taken.update(fixed.values())
    return fixed


def _popen(module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env={**env, "PYTHONUNBUFFERED": "1", **parent_watch_env()},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Own process group: Ctrl-C reaches only `rtrl up`, which then stops children in order.
            start_new_session=True,
            # And SIGTERM when `rtrl up` dies, however it dies: no orphan keeps a port.
            **dies_with_parent(),
        )


def _page_answers(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=timeout_s):
            return True
    except OSError:
        return False


def _say(text: str) -> None:
    # On lines of their own: the interactive status line is redrawn after them.
    print(("\n" if sys.stdout.isatty() else "") + text, flush=True)


def _terminate(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", child.name, STOP_TIMEOUT_S)
            child.process.kill()
            child.process.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def up(options: UpOptions) -> int:
    """Runs the stack until `duration_s` passes, Ctrl-C, or a service dies. Returns the exit code."""
    try:
        stack = Stack(options)
    except SettingsError as e:
        print(f"rtrl up: {e}", file=sys.stderr)
        return 2
    stop_requested = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop_requested.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    client: StackClient | None = None
    last: StackStatus | None = None
    exit_code = 1
    try:
        print(
            f"rtrl up: {options.env}, {options.inference_replicas} inference replicas, {options.interaction} "
            f"interaction; logs in {stack.log_dir}"
        )
        stack.start()
        _announce_observability(stack)
        print(
            f"redis {redacted_url(stack.redis_url)} ({'embedded' if stack.redis else 'external'}); "
            f"gateway{'s' if options.gateways > 1 else ''} {', '.join(stack.gateway_addresses)}, "
            f"learner {stack.learner_address}, inference {', '.join(stack.replica_addresses)}; "
            f"checkpoints in {stack.checkpoint_dir}",
            flush=True,
        )
        if stack.dashboard is not None:
            print(f"dashboard: {stack.dashboard_url}", flush=True)
        if stack.recordings is not None:
            print(
                f"recordings: a greedy episode of each newer checkpoint every {options.record_every_s:g} s in "
                f"{stack.recordings_dir} (index.jsonl)",
                flush=True,
            )
        client = StackClient(stack.gateway_addresses, stack.learner_address, stack.replica_addresses, stack.security)
        exit_code, last = _watch(stack, client, stop_requested)
    except LaunchError as e:
        print(f"rtrl up: {e}", file=sys.stderr)
    finally:
        print("stopping: gateway, then replicas, then learner (final checkpoint)...", flush=True)
        last = stack.stop(client) or last
        if client is not None:
            client.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = last.to_json() if last is not None else {"gateways": {}, "learner": None, "replicas": {}}
    summary["addresses"] = asdict(stack.addresses())
    final = stack.final_gateway_stats()
    summary["gateways"].update(final)
    summary["gateway"] = combined_gateway_stats(list(summary["gateways"].values()))
    print(summary_line(summary))
    if options.summary_json is not None:
        options.summary_json.write_text(json.dumps(summary, indent=1))
    return exit_code


def _announce_recording(entry: RecordingEntry) -> None:
    _say(
        f"recorded checkpoint v{entry.checkpoint_version}: greedy return {entry.episode_return:g} in "
        f"{entry.frames} frames, {entry.path}"
    )


def _announce_observability(stack: Stack) -> None:
    """Records the addresses for `rtrl status` and says where metrics and TensorBoard files are."""
    addresses = stack.addresses()
    path = write_addresses(stack.run_dir, addresses)
    metrics = ", ".join(f"{name} {url}" for name, url in addresses.metrics.items()) or "off"
    print(
        f"metrics: {metrics}; TensorBoard: tensorboard --logdir {stack.tensorboard_dir}; "
        f"addresses in {path} (`rtrl status` reads them)",
        flush=True,
    )


def _watch(stack: Stack, client: StackClient, stop_requested: threading.Event) -> tuple[int, StackStatus | None]:
    """Supervises the services and shows the status line until the duration ends or a stop is requested
    (0), or a service cannot be kept running (1).

    The status is polled on a thread of its own: a poll waits up to a second per service that does not
    answer (while Redis restarts, the learner's does not), and restarting a service must never wait
    for that."""
    interactive = sys.stdout.isatty()
    started = time.monotonic()
    latest: StackStatus | None = None
    polls = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal latest, polls
        while not done.is_set():
            latest = client.poll()
            polls += 1
            done.wait(stack.options.status_interval_s)

    poller = threading.Thread(target=poll, name="status-poll", daemon=True)
    poller.start()
    shown = 0
    last_print = 0.0
    stack.supervisor.write(stack.supervision_path)
    exit_code = 0
    try:
        while not stop_requested.wait(SUPERVISE_INTERVAL_S):
            if not stack.supervise():
                exit_code = 1
                break
            now = time.monotonic()
            if stack.options.duration_s is not None and now - started >= stack.options.duration_s:
                break
            if polls == shown or latest is None:
                continue
            shown = polls
            line = " | ".join(filter(None, [status_line(latest), supervision_text(stack.supervisor.to_json())]))
            if interactive:
                width = shutil.get_terminal_size().columns - 1
                print("\r" + line[:width].ljust(width), end="", flush=True)
            elif now - last_print >= 5.0:
                print(line, flush=True)
                last_print = now
    finally:
        done.set()
        poller.join()  # after at most the poll in flight: the client is the caller's again
    if interactive:
        print()
    return exit_code, latest


# Final GetStats counters that add up across gateways (the JSON of int64 fields is a string).
_GATEWAY_TOTALS = ("frames", "decisions", "decisions_fresh", "episodes", "transitions_published", "transitions_dropped")


def combined_gateway_stats(stats: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The one gateway's final stats, or with several their totals (and coverage over all decisions)."""
    answered = [s for s in stats if s is not None]
    if len(answered) <= 1:
        return answered[0] if answered else None
    combined: dict[str, Any] = {name: sum(int(s.get(name, 0)) for s in answered) for name in _GATEWAY_TOTALS}
    decisions = combined["decisions"]
    combined["coverage"] = combined["decisions_fresh"] / decisions if decisions else 1.0
    combined["gateways"] = len(answered)
    return combined


def summary_line(summary: dict[str, Any]) -> str:
    g, lr = summary.get("gateway"), summary.get("learner")
    parts = []
    if g:
        parts.append(
            f"final: {g['frames']} frames, {g['decisions']} decisions, coverage {100 * g['coverage']:.2f}%, "
            f"transitions published {g['transitions_published']} dropped {g['transitions_dropped']}"
        )
    if lr:
        parts.append(
            f"learner consumed {lr['transitions_consumed']}, {lr['updates']} updates, "
            f"checkpoint v{lr['checkpoint_version']}"
        )
    return "; ".join(parts) or "final: no service answered"
