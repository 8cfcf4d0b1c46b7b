"""`rtrl status`: every service of a running stack in one terminal table, refreshed each second, or as JSON.

Where the services are: `--gateway`, `--learner` and `--replica` flags, else the addresses file the
newest `rtrl up` wrote (`runs/latest/addresses.json`, `write_addresses`). Replicas are the union of
those given, those each gateway reports calling (GetStats), and, with `--redis-url`, the live members of
the replica registry, so replicas added by hand or by `--scale` show up too. Each service answers its
own status RPC (GetStats, GetStatus) under a short deadline; one that does not answer is a row saying
so, and when none answers the command says what to check instead of drawing an empty table.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from rtrl.grpc_util import create_channel
from rtrl.redis_client import connect_redis
from rtrl.registry import DEFAULT_REPLICA_REGISTRY, RegistryError, live_replicas
from rtrl.status import STATUS_TIMEOUT_S, message_json
from rtrl.supervision import read_supervision, supervision_text
from rtrl.v1 import (
    env_gateway_pb2,
    env_gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    learner_pb2,
    learner_pb2_grpc,
)

ADDRESSES_FILE = "addresses.json"
LATEST_LINK = "latest"


class StatusError(RuntimeError):
    """Nothing to ask, or nobody answered; the message says what to do."""


@dataclass
class StackAddresses:
    """Where the services of one stack listen: gRPC addresses, Prometheus URLs, the TensorBoard directory."""

    gateways: list[str] = field(default_factory=list)
    learner: str = ""
    replicas: list[str] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)
    """Service name (gateway, learner, inference-0, ...) -> its /metrics URL."""
    tensorboard_dir: str = ""
    dashboard: str = ""
    pid: int = 0
    """Process id of the `rtrl up` that wrote the file (0: unknown)."""
    supervision: str = ""
    """Its supervision.json: the restarts of its services (rtrl/supervision.py); empty: none kept."""

    @classmethod
    def read(cls, path: Path) -> StackAddresses:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise StatusError(f"cannot read the stack's addresses from {path} ({e}); pass --gateway/--learner") from e
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


def write_addresses(run_dir: Path, addresses: StackAddresses) -> Path:
    """Writes `run_dir/addresses.json` and points `run_dir/../latest` at run_dir (for `rtrl status`)."""
    path = run_dir / ADDRESSES_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(addresses), indent=1))
    temporary.replace(path)
    latest = run_dir.parent / LATEST_LINK
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(run_dir.name, target_is_directory=True)
    except OSError:
        pass  # a file system without symbolic links: `rtrl status --addresses PATH` still works
    return path


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StatusPoller:
    """Polls every service of a stack; channels stay open between polls.

    Channels carry the TLS and token of the RTRL_* environment (rtrl/security.py), as the services' own do.
    """

    def __init__(
        self,
        addresses: StackAddresses,
        redis_url: str = "",
        registry_key: str = DEFAULT_REPLICA_REGISTRY,
        open_channel: Callable[[str], grpc.Channel] = create_channel,
    ) -> None:
        self.addresses = addresses
        self._open_channel = open_channel
        self._channels: dict[str, grpc.Channel] = {}
        self._redis = connect_redis(redis_url, socket_timeout=1.0) if redis_url else None
        self._registry_key = registry_key

    def _channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = self._open_channel(address)
        return self._channels[address]

    def _call(self, address: str, ask: Callable[[grpc.Channel], Message]) -> tuple[Message | None, str]:
        try:
            return ask(self._channel(address)), ""
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return None, code.name if code is not None else "no answer"

    def poll(self) -> dict[str, Any]:
        """A JSON-ready snapshot: {"gateways": {address: {...}}, "replicas": ..., "learner": ...}."""
        snapshot: dict[str, Any] = {"unix_time": time.time(), "gateways": {}, "replicas": {}, "learner": {}}
        replicas: list[str] = list(self.addresses.replicas)
        for address in self.addresses.gateways:
            stats, error = self._call(
                address,
                lambda c: env_gateway_pb2_grpc.EnvGatewayServiceStub(c).GetStats(
                    env_gateway_pb2.GetStatsRequest(), timeout=STATUS_TIMEOUT_S
                ),
            )
            snapshot["gateways"][address] = {"stats": message_json(stats), "error": error}
            if isinstance(stats, env_gateway_pb2.GetStatsResponse):
                replicas += [r.address for r in stats.replicas]
        if self._redis is not None:
            try:
                replicas += live_replicas(self._redis, self._registry_key)
                snapshot["registry"] = {"error": ""}
            except RegistryError as e:
                snapshot["registry"] = {"error": str(e)}
        for address in sorted(set(replicas)):
            status, error = self._call(
                address,
                lambda c: inference_pb2_grpc.InferenceServiceStub(c).GetStatus(
                    inference_pb2.InferenceServiceGetStatusRequest(), timeout=STATUS_TIMEOUT_S
                ),
            )
            snapshot["replicas"][address] = {"status": message_json(status), "error": error}
        if self.addresses.learner:
            status, error = self._call(
                self.addresses.learner,
                lambda c: learner_pb2_grpc.LearnerServiceStub(c).GetStatus(
                    learner_pb2.LearnerServiceGetStatusRequest(), timeout=STATUS_TIMEOUT_S
                ),
            )
            snapshot["learner"][self.addresses.learner] = {"status": message_json(status), "error": error}
        if self.addresses.supervision:
            snapshot["supervision"] = read_supervision(Path(self.addresses.supervision))
        return snapshot

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        if self._redis is not None:
            self._redis.close()


def answered(snapshot: dict[str, Any]) -> int:
    """How many services answered."""
    return sum(
        1
        for group, key in (("gateways", "stats"), ("replicas", "status"), ("learner", "status"))
        for entry in snapshot[group].values()
        if entry[key] is not None
    )


def _number(value: Any, digits: int = 0) -> str:
    return f"{float(value):.{digits}f}" if value is not None else "-"


def render_table(snapshot: dict[str, Any]) -> str:
    """The snapshot as aligned text: one row per service."""
    rows: list[list[str]] = [["SERVICE", "ADDRESS", "STATE", "DETAILS"]]
    for address, entry in snapshot["gateways"].items():
        s = entry["stats"]
        if s is None:
            rows.append(["gateway", address, entry["error"] or "no answer", ""])
            continue
        overhead = s["decision_overhead_ms"]
        rows.append([
            f"gateway {s['gateway_id']}",
            address,
            "up",
            f"{_number(s['measured_frame_rate_hz'], 1)} fps, coverage {100 * s['coverage']:.2f}% of {s['decisions']}, "
            f"staleness p50 {_number(s['staleness_frames']['p50'])} fr, overhead p99 {_number(overhead['p99'], 2)} ms, "
            f"{s['replica_count']} replicas, episodes {s['episodes']} (last {s['last_episode_return']:+.0f}), "
            f"published {s['transitions_published']} dropped {s['transitions_dropped']}",
        ])  # fmt: skip
    for address, entry in snapshot["replicas"].items():
        r = entry["status"]
        if r is None:
            rows.append(["inference", address, entry["error"] or "no answer", ""])
            continue
        rows.append([
            f"inference {r['replica_id']}",
            address,
            "up",
            f"checkpoint v{r['checkpoint_version']}, {_number(r['requests_per_second'], 1)} answers/s, "
            f"latency p50 {_number(r['latency_ms']['p50'], 2)} p99 {_number(r['latency_ms']['p99'], 2)} ms, "
            f"batch mean {_number(r['batch_size']['mean'], 2)}, in flight {r['in_flight']}, "
            f"streams {r['open_streams']}/{r['max_open_streams']}, "
            f"refused {r['requests_refused_deadline']}, {'registered' if r['registered'] else 'not registered'}",
        ])  # fmt: skip
    for address, entry in snapshot["learner"].items():
        lr = entry["status"]
        if lr is None:
            rows.append(["learner", address, entry["error"] or "no answer", ""])
            continue
        lag = lr["policy_lag"]
        rows.append([
            f"learner {lr['algorithm']}",
            address,
            "up",
            f"checkpoint v{lr['checkpoint_version']}, {_number(lr['updates_per_s'], 1)} upd/s ({lr['updates']} total), "
            f"loss {float(lr['loss']):.4g}, consumed {lr['transitions_consumed']}, stream {lr['stream_length']} "
            f"(lag {lr['stream_lag']}), policy lag mean {_number(lag['version_lag_mean'], 1)} versions",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)), row[3]]) for row in rows
    ]
    registry = snapshot.get("registry")
    if registry and registry["error"]:
        lines.append(f"replica registry: {registry['error']}")
    restarts = supervision_text(snapshot.get("supervision"))
    if restarts:
        lines.append(restarts)
    return "\n".join(line.rstrip() for line in lines)


def resolve_addresses(
    gateways: Sequence[str], learner: str, replicas: Sequence[str], addresses_file: Path | None, run_dir: Path
) -> StackAddresses:
    """The flags when given, else the addresses file (by default that of the newest `rtrl up` in run_dir)."""
    if gateways or learner or replicas:
        return StackAddresses(gateways=list(gateways), learner=learner, replicas=list(replicas))
    path = addresses_file or run_dir / LATEST_LINK / ADDRESSES_FILE
    if not path.exists():
        raise StatusError(
            f"no running stack is recorded in {path}; start one with `rtrl up`, or say where the services "
            "are with --gateway HOST:PORT, --learner HOST:PORT and --replica HOST:PORT"
        )
    addresses = StackAddresses.read(path)
    if not _pid_alive(addresses.pid):
        raise StatusError(
            f"the `rtrl up` that wrote {path} (pid {addresses.pid}) is no longer running; start the stack with "
            "`rtrl up`, or pass the addresses of services started another way with --gateway/--learner/--replica"
        )
    return addresses


def run(poller: StatusPoller, once: bool, as_json: bool, interval_s: float = 1.0, out: Any = None) -> int:
    """Prints the table (or JSON) once or every `interval_s` until Ctrl-C. Exit code 1 when nobody answers."""
    out = out or sys.stdout
    live = not once and not as_json and out.isatty()
    try:
        while True:
            snapshot = poller.poll()
            if answered(snapshot) == 0:
                asked = [*snapshot["gateways"], *snapshot["replicas"], *snapshot["learner"]]
                print(
                    f"rtrl status: no service answered ({', '.join(asked) or 'no address to ask'}); check that the "
                    "stack runs (`rtrl up`) and that the addresses are right",
                    file=sys.stderr,
                )
                return 1
            if as_json:
                print(json.dumps(snapshot), file=out, flush=True)
            else:
                table = render_table(snapshot)
                if live:
                    width = shutil.get_terminal_size().columns
                    table = "\n".join(line[:width] for line in table.splitlines())
                    # Home and clear, then the table: one redraw per second without scrolling.
                    out.write(
                        "\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + "rtrl status (Ctrl-C stops)\n" + table + "\n"
                    )
                    out.flush()
                else:
                    print(table, file=out, flush=True)
            if once:
                return 0
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0
    finally:
        poller.close()
