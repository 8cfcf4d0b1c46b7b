"""Staggered asynchronous inference, measured: coverage and staleness against inference time, replicas,
scheduler, and the sequential act -> learn -> act baseline, with the learner training on this machine.

    python bench/staggering.py                          # the whole table (about 40 minutes)
    python bench/staggering.py --t-infer 2 --replicas 2 3 --schedulers max_time --no-models --no-sequential
    python bench/staggering.py --t-infer --no-models --no-sequential --learner-cpus 1   # zero-cost rows, pinned too

Everything is real except the game clock's opponent: real ALE Pong at 60 fps stepped by the gateway
(in this process, deciding every frame: RTRL_DECISION_INTERVAL_FRAMES=1), real inference replicas
(`bench/replica.py --occupy-ms`, the production server whose forward pass occupies it for t_infer: a
sleep after the real pass, so a replica waiting costs no CPU, like an accelerator), then
real model sizes (ImpalaCNN, RTRL_MODEL_WIDTH 1/7/29, on this CPU), a real Redis and a real learner
(`python -m rtrl.services.learner`, DQN) consuming every row's transitions and training without pause.
The sequential rows pause that learner and run a second one in RTRL_LEARNER_MODE=sequential with
the gateway in RTRL_INTERACTION=sequential.

Each row: a fresh gateway on the first N replicas of a pool (static RTRL_INFERENCE_ADDRESSES, so N
is exact), `--warmup-s` to let the scheduler measure T, then `--measure-s` measured. Columns:
- coverage: decisions (frames) with a fresh action / all decisions, over the measured window;
- staleness mean and p99: frames from the observation an applied action was computed from to the
  frame it was applied;
- wasted: replies superseded by a newer one before being applied, per 100 decisions;
- late: replies that arrived too late to be applied, per 100 decisions;
- overhead p50/p99: ms from an observation frame being produced to its reply being in the mailbox
  (includes t_infer);
- T: the round trip the scheduler spaces calls by (max_time, mean_time).
The zero-cost rows, in a table of their own, show what the gateway itself adds on each way of asking
(`--ways`: the act socket, ActStream, and ActStream from one grpc.aio loop with or without uvloop),
against zero-cost stubs and the real server with a zero-cost policy (`--zero-cost-replicas`), with the
overhead's max and the CPU time per decision of the gateway and of the replicas (docs/transports.md).
Then, per t_infer and scheduler, the smallest N reaching 99% coverage next to ceil(t_infer/t_frame),
and the sequential rows next to the paper's t_frame / (t_infer + t_learn). Rows share this run's
conditions; compare them with each other, not with another day's numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.aio_transport import AioLoop  # noqa: E402
from rtrl.act_socket import HELLO, client_hello, configure, frame, receive_exactly, receive_length  # noqa: E402
from rtrl.config import SettingsError  # noqa: E402
from rtrl.cpus import format_cpu_list, split_cpus, usable_cpus  # noqa: E402
from rtrl.grpc_util import create_channel, health_status  # noqa: E402
from rtrl.local_redis import LocalRedis, free_port  # noqa: E402
from rtrl.metrics import Window  # noqa: E402
from rtrl.services.env_gateway.scheduler import SCHEDULER_NAMES  # noqa: E402
from rtrl.services.env_gateway.server import Gateway  # noqa: E402
from rtrl.services.env_gateway.settings import DEFAULT_JITTER_RESERVE_FRAMES, GatewaySettings  # noqa: E402
from rtrl.tensors import to_proto  # noqa: E402
from rtrl.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402

FRAME_RATE_HZ = 60.0
FRAME_MS = 1000.0 / FRAME_RATE_HZ
T_INFER_FRAMES = (0.5, 1.0, 2.0, 4.0, 8.0)
MODEL_WIDTHS = (1, 7, 29)
# A forward pass slower than this on this machine is not benchmarked (it would need dozens of replicas,
# each holding a core that the machine does not have).
MAX_MODEL_FORWARD_MS = 600.0
STREAM = "bench:transitions"
ACT_SOCKET, ACT_STREAM, AIO, AIO_UVLOOP = "act socket", "ActStream", "grpc.aio", "grpc.aio+uvloop"
WAYS = (ACT_SOCKET, ACT_STREAM, AIO, AIO_UVLOOP)
"""How the gateway asks the zero-cost replicas: its two transports, and ActStream from one grpc.aio loop
(bench/aio_transport.py) on asyncio's loop or on uvloop's."""
STUB, REAL = "stub", "real"
"""Zero-cost replicas: a bare servicer answering at once, or the real inference server with a zero-cost
policy (bench/replica.py --zero-cost: batcher, servicer, streams and act socket, no network)."""
REPLICA_PIDS: dict[str, int] = {}
"""Each replica's process, by address: the zero-cost rows count their CPU time."""
SEQUENTIAL_STREAM = "bench:sequential"


@dataclass
class Row:
    kind: str
    """"occupy", "model", "zero-cost" or "sequential"."""
    label: str
    t_infer_frames: float
    replicas: int
    scheduler: str
    decisions: int
    coverage: float
    staleness_mean: float
    staleness_p99: float
    wasted_per_100: float
    late_per_100: float
    overhead_p50_ms: float
    overhead_p99_ms: float
    period_ms: float
    frames_late: int
    load: float = math.nan
    """The machine's 1-minute load average at the end of the row (2 cores: above 2 means queueing)."""
    reserve: int = 0
    """RTRL_JITTER_RESERVE_FRAMES of the row's gateway."""
    t_learn_ms: float = 0.0
    round_trip_ms: float = 0.0
    predicted_coverage: float = 0.0
    """Sequential rows: the paper's t_frame / (t_infer + t_learn), with the measured round trip as t_infer."""
    overhead_max_ms: float = math.nan
    gateway_cpu_ms: float = math.nan
    """Zero-cost rows: CPU time of this process (the gateway, its game included) per decision."""
    replica_cpu_ms: float = math.nan
    """Zero-cost rows: CPU time of the row's replica processes per decision."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- a zero-cost replica ------------------------------------------------------------------------------


class ZeroCostInference(inference_pb2_grpc.InferenceServiceServicer):
    """Answers at once: the policy costs nothing, so what is measured is the gateway and the way it asks
    (the act socket, or ActStream when `act_socket_port` is 0)."""

    act_socket_port = 0

    def Act(self, request: inference_pb2.ActRequest, context: grpc.ServicerContext) -> inference_pb2.ActResponse:
        return inference_pb2.ActResponse(action=0, checkpoint_version=0, frame_index=request.frame_index, batch_size=1)

    def answer(self, message: inference_pb2.ActStreamRequest) -> inference_pb2.ActStreamResponse:
        response = inference_pb2.ActResponse(action=0, frame_index=message.request.frame_index, batch_size=1)
        return inference_pb2.ActStreamResponse(response=response)

    def ActStream(
        self, requests: Iterator[inference_pb2.ActStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.ActStreamResponse]:
        for message in requests:
            yield self.answer(message)

    def GetStatus(
        self, request: inference_pb2.InferenceServiceGetStatusRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferenceServiceGetStatusResponse:
        return inference_pb2.InferenceServiceGetStatusResponse(act_socket_port=self.act_socket_port)


def serve_zero_cost(act_socket: bool) -> None:
    from rtrl import grpc_util
    from rtrl.services.inference.act_socket import ActSocketServer
    from rtrl.services.inference.streams import OpenStreams

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = ZeroCostInference()
    streams = OpenStreams(limit=4)
    if act_socket:
        sockets = ActSocketServer(servicer.answer, streams, "127.0.0.1", 0, 1 << 22, lambda: None)
        sockets.start()
        servicer.act_socket_port = sockets.port
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health = grpc_util.add_health_and_reflection(server, ["rtrl.v1.InferenceService"])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    grpc_util.set_serving(health, ["rtrl.v1.InferenceService"], True)
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    streams.stop()
    server.stop(0).wait()


# -- processes ------------------------------------------------------------------------------------------


class Processes:
    """Subprocesses of this run, each logging to a file, all stopped at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        return process, log_path

    def stop(self, processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        self.stop(self.started)


def wait_for_port(log_path: Path, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> int:
    give_up_at = time.monotonic() + timeout_s
    while time.monotonic() < give_up_at:
        if process.poll() is not None:
            raise RuntimeError(f"{log_path.name} exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        match = re.search(r"listening on [\d.]+:(\d+)", log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"{log_path.name} did not start within {timeout_s:.0f} s")


def wait_serving(addresses: list[str], timeout_s: float = 180.0) -> None:
    give_up_at = time.monotonic() + timeout_s
    pending = list(addresses)
    while pending:
        pending = [a for a in pending if health_status(a, timeout_s=1.0) != "SERVING"]
        if pending and time.monotonic() > give_up_at:
            raise RuntimeError(f"replicas {pending} did not become healthy")
        time.sleep(0.2)


@contextmanager
def replica_pool(
    procs: Processes,
    count: int,
    env: dict[str, str],
    name: str,
    zero_cost: str = "",
    kind: str = STUB,
    occupy_ms: float | None = None,
) -> Iterator[list[str]]:
    """Starts `count` replicas: real ones with `env`, or zero-cost ones (`kind`: stubs, or the real server
    with a zero-cost policy) offering an act socket when `zero_cost` is ACT_SOCKET; yields their addresses.
    With `occupy_ms` the real ones are benchmark replicas (bench/replica.py) whose every forward pass holds
    them at least that long."""
    started = []
    addresses = []
    for i in range(count):
        replica_env = {
            "RTRL_INFERENCE_HOST": "127.0.0.1",
            "RTRL_INFERENCE_PORT": "0",
            "RTRL_INFERENCE_DEVICE": "cpu",
            "RTRL_TORCH_THREADS": "1",
            # One gateway uses the pool and never has two calls at one replica, so a call never finds
            # company to batch with: waiting for it (1 ms by default) would only add to every round trip.
            "RTRL_INFERENCE_MAX_WAIT_MS": "0",
            **env,
        }
        command = ["-m", "rtrl.services.inference"]
        if zero_cost and kind == STUB:
            command = [__file__, "--serve-zero-cost", *([] if zero_cost == ACT_SOCKET else ["--no-act-socket"])]
            replica_env = {}
        elif zero_cost:
            replica_env["RTRL_CHECKPOINT_DIR"] = str(procs.workdir / f"{name}-checkpoints")
            replica_env["RTRL_INFERENCE_ACT_SOCKET_PORT"] = "0" if zero_cost == ACT_SOCKET else "-1"
            command = ["bench/replica.py", "--zero-cost"]
        elif occupy_ms is not None:
            command = ["bench/replica.py", "--occupy-ms", f"{occupy_ms:.3f}"]
        process, log_path = procs.spawn(f"{name}-{i}", command, replica_env)
        started.append(process)
        addresses.append(f"127.0.0.1:{wait_for_port(log_path, process)}")
        REPLICA_PIDS[addresses[-1]] = process.pid
    try:
        wait_serving(addresses)
        yield addresses
    finally:
        procs.stop(started)


# -- one row --------------------------------------------------------------------------------------------


def run_gateway(
    redis_url: str,
    addresses: list[str],
    scheduler: str,
    staleness_frames: int,
    warmup_s: float,
    measure_s: float,
    gateway_id: str,
    interaction: str = "async",
    learner_address: str = "",
    stream: str = STREAM,
    jitter_reserve: int = DEFAULT_JITTER_RESERVE_FRAMES,
    way: str = "",
) -> dict:
    """One gateway row; `way` AIO or AIO_UVLOOP asks the replicas from a grpc.aio loop."""
    env = {
        "RTRL_JITTER_RESERVE_FRAMES": str(jitter_reserve),
        "RTRL_ENV": "ale:Pong",
        "RTRL_GATEWAY_ID": gateway_id,
        "RTRL_DECISION_INTERVAL_FRAMES": "1",
        "RTRL_LEAD_FRAMES": "1",
        "RTRL_MAX_STALENESS_FRAMES": str(staleness_frames),
        "RTRL_SCHEDULER": scheduler,
        "RTRL_INTERACTION": interaction,
        "RTRL_INFERENCE_ADDRESSES": ",".join(addresses),
        # Nobody registers in this key: the static list above is exactly the N replicas of the row.
        "RTRL_REPLICA_REGISTRY": "bench:no-registry",
        "RTRL_REDIS_URL": redis_url,
        "RTRL_STREAM": stream,
        "RTRL_STREAM_MAXLEN": "20000",
        **({"RTRL_LEARNER_ADDRESS": learner_address} if learner_address else {}),
    }
    gateway = Gateway(GatewaySettings.from_env(env))
    aio = AioLoop(use_uvloop=way == AIO_UVLOOP) if way in (AIO, AIO_UVLOOP) else None
    if aio is not None:
        gateway.replicas.open_transport = aio.open
    try:
        gateway.start()
        time.sleep(warmup_s)
        before = gateway.stats()
        cpu_before = time.process_time(), sum(process_cpu_s(REPLICA_PIDS[a]) for a in addresses if a in REPLICA_PIDS)
        # Distributions restart with the measured window (the warm-up taught the scheduler T).
        gateway.clock.staleness_frames = Window(1 << 16)
        gateway.mailbox.decision_overhead_ms = Window(1 << 16)
        time.sleep(measure_s)
        after = gateway.stats()
        cpu_after = time.process_time(), sum(process_cpu_s(REPLICA_PIDS[a]) for a in addresses if a in REPLICA_PIDS)
        staleness = gateway.clock.staleness_frames.values()
        overhead = gateway.mailbox.decision_overhead_ms.values()
        transports = sorted({r.transport for r in after.replicas})
    finally:
        gateway.stop(flush_timeout_s=1.0)
        if aio is not None:
            aio.close()
    decisions = after.decisions - before.decisions
    fresh = after.decisions_fresh - before.decisions_fresh
    latencies = [r.latency_ms.mean for r in after.replicas if r.replies]
    return {
        "decisions": decisions,
        "coverage": fresh / decisions if decisions else 0.0,
        "staleness_mean": float(staleness.mean()) if staleness.size else math.nan,
        "staleness_p99": float(np.percentile(staleness, 99)) if staleness.size else math.nan,
        "wasted_per_100": 100.0 * (after.replies_superseded - before.replies_superseded) / max(decisions, 1),
        "late_per_100": 100.0 * (after.replies_late - before.replies_late) / max(decisions, 1),
        "overhead_p50_ms": float(np.percentile(overhead, 50)) if overhead.size else math.nan,
        "overhead_p99_ms": float(np.percentile(overhead, 99)) if overhead.size else math.nan,
        "overhead_max_ms": float(overhead.max()) if overhead.size else math.nan,
        "gateway_cpu_ms": 1000.0 * (cpu_after[0] - cpu_before[0]) / max(decisions, 1),
        "replica_cpu_ms": 1000.0 * (cpu_after[1] - cpu_before[1]) / max(decisions, 1),
        "transports": transports,
        "period_ms": after.scheduler_period_ms,
        "frames_late": after.frames_late - before.frames_late,
        "latency_mean_ms": float(np.mean(latencies)) if latencies else math.nan,
        "train_ms_mean": after.train_ms.mean,
        "cycles": after.sequential_cycles - before.sequential_cycles,
        "fps": after.measured_frame_rate_hz,
    }


def paced_messages(address: str, way: str, seconds: float) -> dict:
    """The floor under the zero-cost rows: bare messages to the same zero-cost replica, on `way` (the act
    socket or ActStream), as the gateway sends them, paced at the frame rate from one thread of this
    process, each building its 84x84x4 request. Its "overhead" is request built -> answer back; the
    gateway's adds sampling, preprocessing and the reading thread's hand-over of the answer."""
    channel = create_channel(address)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    observation = np.zeros((4, 84, 84), np.uint8)
    round_trips_ms: list[float] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(channel.close)
        if way == ACT_SOCKET:
            port = stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=10.0).act_socket_port
            connection = cleanup.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10.0))
            configure(connection)
            connection.sendall(client_hello(""))
            assert receive_exactly(connection, len(HELLO)) == HELLO

            def exchange(message: inference_pb2.ActStreamRequest) -> None:
                connection.sendall(frame(message.SerializeToString()))
                receive_exactly(connection, receive_length(connection))

        else:
            requests: queue.SimpleQueue[inference_pb2.ActStreamRequest | None] = queue.SimpleQueue()
            # A deadline for the whole stream, so that a hung replica ends the benchmark instead of holding it.
            answers = stub.ActStream(iter(requests.get, None), timeout=seconds + 60.0)
            cleanup.callback(answers.cancel)
            cleanup.callback(requests.put, None)

            def exchange(message: inference_pb2.ActStreamRequest) -> None:
                requests.put(message)
                next(answers)

        def ask(frame_index: int) -> None:
            request = inference_pb2.ActRequest(
                observation=to_proto(observation), gateway_id="bench-bare", action_count=6, frame_index=frame_index
            )
            exchange(inference_pb2.ActStreamRequest(request=request, timeout_ms=1000.0))

        ask(0)
        start_s = time.monotonic()
        call = 0
        while time.monotonic() < start_s + seconds:
            wait_s = start_s + call / FRAME_RATE_HZ - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
            sent_s = time.monotonic()
            ask(call)
            round_trips_ms.append((time.monotonic() - sent_s) * 1000.0)
            call += 1
    nan = math.nan
    return {
        "decisions": len(round_trips_ms), "coverage": nan, "staleness_mean": nan, "staleness_p99": nan,
        "wasted_per_100": nan, "late_per_100": nan, "overhead_p50_ms": float(np.percentile(round_trips_ms, 50)),
        "overhead_p99_ms": float(np.percentile(round_trips_ms, 99)), "period_ms": nan, "frames_late": 0,
        "overhead_max_ms": float(np.max(round_trips_ms)),
    }  # fmt: skip


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds process `pid` has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` runs on `cpus` (and threads it starts later inherit them)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def replica_counts(t_infer_frames: float, limit: int) -> list[int]:
    """1, and around ceil(t_infer / t_frame): enough to find the smallest N reaching 99% coverage."""
    needed = math.ceil(t_infer_frames)
    counts = {1, needed - 1, needed, needed + 1, needed + 2} if needed > 1 else {1, 2, 3}
    return sorted(n for n in counts if 1 <= n <= limit)


def staleness_bound(t_infer_frames: float) -> int:
    """S for a row: replies up to about four frames beyond t_infer are still applied."""
    return max(6, math.ceil(t_infer_frames) + 4)


# -- the run --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = Processes(workdir)
        self.rows: list[Row] = []
        self.started_s = time.monotonic()
        self.redis = LocalRedis().start()
        self.checkpoints = workdir / "checkpoints"
        self.learner: subprocess.Popen[bytes] | None = None
        self.row_count = 0
        self.cpus = usable_cpus()
        self.learner_cpus: set[int] | None = None
        if args.learner_cpus:
            try:
                self.learner_cpus, _ = split_cpus(args.learner_cpus)
            except SettingsError as e:
                raise SystemExit(str(e)) from None

    def replica_dir(self) -> str:
        """The learner's checkpoint directory (replicas hot-reload what it publishes), or one of their own."""
        return str(self.checkpoints if self.args.replica_checkpoints == "learner" else self.workdir / "replica-own")

    def over_budget(self) -> bool:
        return time.monotonic() - self.started_s > self.args.budget_s

    def start_learner(self, mode: str, stream: str, checkpoints: Path) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {
            "RTRL_LEARNER_HOST": "127.0.0.1",
            "RTRL_LEARNER_PORT": str(port),
            "RTRL_REDIS_URL": self.redis.url,
            "RTRL_STREAM": stream,
            "RTRL_CHECKPOINT_DIR": str(checkpoints),
            "RTRL_LEARNER_DEVICE": "cpu",
            "RTRL_LEARNER_MODE": mode,
            "RTRL_DQN_LEARNING_STARTS": "64",
            "RTRL_CONSUMER_NAME": f"bench-{mode}",
        }
        process, _ = self.procs.spawn(f"learner-{mode}", ["-m", "rtrl.services.learner"], env)
        address = f"127.0.0.1:{port}"
        give_up_at = time.monotonic() + 120
        while health_status(address) != "SERVING":
            if process.poll() is not None or time.monotonic() > give_up_at:
                raise RuntimeError(f"the {mode} learner did not start; see {self.workdir}/learner-{mode}.log")
            time.sleep(0.2)
        return process, address

    def record(
        self,
        kind: str,
        label: str,
        t_infer: float,
        replicas: int,
        scheduler: str,
        m: dict,
        reserve: int = 0,
        **extra: float,
    ) -> Row:
        row = Row(
            kind=kind,
            label=label,
            t_infer_frames=t_infer,
            replicas=replicas,
            scheduler=scheduler,
            decisions=m["decisions"],
            coverage=m["coverage"],
            staleness_mean=m["staleness_mean"],
            staleness_p99=m["staleness_p99"],
            wasted_per_100=m["wasted_per_100"],
            late_per_100=m["late_per_100"],
            overhead_p50_ms=m["overhead_p50_ms"],
            overhead_p99_ms=m["overhead_p99_ms"],
            period_ms=m["period_ms"],
            frames_late=m["frames_late"],
            load=os.getloadavg()[0],
            reserve=reserve,
            overhead_max_ms=m.get("overhead_max_ms", math.nan),
            gateway_cpu_ms=m.get("gateway_cpu_ms", math.nan),
            replica_cpu_ms=m.get("replica_cpu_ms", math.nan),
            **extra,
        )
        self.rows.append(row)
        self.row_count += 1
        log(
            f"{label:>14} N={replicas:<2} {scheduler:<9} r{row.reserve} "
            f"coverage {100 * row.coverage:7.3f}% of {row.decisions} "
            f"staleness {row.staleness_mean:5.2f}/{row.staleness_p99:4.1f} wasted {row.wasted_per_100:5.1f} "
            f"late {row.late_per_100:5.1f} overhead {row.overhead_p50_ms:6.2f}/{row.overhead_p99_ms:6.2f} ms "
            f"T {row.period_ms:6.1f} ms, frames late {row.frames_late}, load {row.load:.1f} "
            f"({time.monotonic() - self.started_s:.0f} s)"
        )
        if self.args.rows_json is not None:
            self.args.rows_json.write_text(json.dumps([asdict(r) for r in self.rows], indent=1))
        return row

    def wait_for_calm(self) -> None:
        """Waits (bounded) until the machine's load is below --calm-load: other users' bursts (builds,
        test suites) would otherwise decide a row's tail latencies. This run's own processes count too."""
        give_up_at = time.monotonic() + self.args.calm_wait_s
        if os.getloadavg()[0] >= self.args.calm_load:
            log(f"load {os.getloadavg()[0]:.1f}: waiting up to {self.args.calm_wait_s:.0f} s for calm")
        while os.getloadavg()[0] >= self.args.calm_load and time.monotonic() < give_up_at:
            time.sleep(2.0)

    def sweep(self, kind: str, label: str, t_infer: float, addresses: list[str], counts: list[int]) -> None:
        args = self.args
        for n in counts:
            for scheduler in args.schedulers:
                for reserve in args.jitter_reserve:
                    if self.over_budget():
                        log("time budget spent; skipping the remaining rows")
                        return
                    self.wait_for_calm()
                    # Rows below ceil(t_infer/t_frame) cannot cover every frame; a shorter window shows that.
                    measure_s = args.measure_s if n >= math.ceil(t_infer) else args.short_measure_s
                    m = run_gateway(
                        self.redis.url,
                        addresses[:n],
                        scheduler,
                        staleness_bound(t_infer),
                        args.warmup_s + t_infer * FRAME_MS * n / 1000.0,
                        measure_s,
                        f"bench-{label}-{n}-{scheduler}-r{reserve}".replace(" ", ""),
                        jitter_reserve=reserve,
                    )
                    self.record(kind, label, t_infer, n, scheduler, m, reserve=reserve)

    def partition(self, learner_cpus: set[int] | None) -> None:
        """Moves the learner to `learner_cpus` and every other process of the run (this one, whose gateway
        threads inherit it, Redis, the replicas) to the other CPUs, as `rtrl up --learner-cpus` starts
        them; None puts everything back on every CPU."""
        learner = learner_cpus or self.cpus
        others = self.cpus - learner if learner_cpus else self.cpus
        assert self.redis.process is not None and self.learner is not None
        for pid in (os.getpid(), self.redis.process.pid, *(p.pid for p in self.procs.started if p.poll() is None)):
            set_affinity(pid, learner if pid == self.learner.pid else others)

    def run_zero_cost(self) -> None:
        """The gateway's own overhead on each way of asking, against zero-cost stubs and against the real
        server with a zero-cost policy, side by side."""
        args = self.args
        with contextlib.ExitStack() as stack:
            pools: dict[tuple[str, str], list[str]] = {}
            for kind in args.zero_cost_replicas:
                # The aio ways ask replicas without an act socket, as ActStream does.
                for served in dict.fromkeys(ACT_SOCKET if way == ACT_SOCKET else ACT_STREAM for way in args.ways):
                    name = f"zero-cost-{kind}-{served}".replace(" ", "-")
                    pools[kind, served] = stack.enter_context(replica_pool(self.procs, 2, {}, name, served, kind))
            for (kind, served), addresses in pools.items():
                self.wait_for_calm()
                bare = paced_messages(addresses[0], served, args.measure_s)
                self.record("zero-cost", f"bare {served} message, {kind}", 0.0, 1, "-", bare)
            # Each row is measured each way (and, with --learner-cpus, unpinned and pinned), side by side,
            # first in one order and then in the other, so that none always comes first.
            ways = list(args.ways)
            partitions = [None, *([self.learner_cpus] if self.learner_cpus else [])]
            for n in (1, 2):
                for reserve in args.jitter_reserve:
                    ways.reverse()
                    partitions.reverse()
                    for kind in args.zero_cost_replicas:
                        for way in ways:
                            addresses = pools[kind, ACT_SOCKET if way == ACT_SOCKET else ACT_STREAM]
                            for learner_cpus in partitions:
                                self.partition(learner_cpus)
                                self.wait_for_calm()
                                m = run_gateway(
                                    self.redis.url,
                                    addresses[:n],
                                    "next_idle",
                                    6,
                                    args.warmup_s,
                                    args.measure_s,
                                    f"bench-zero-{n}-r{reserve}-{kind}-{way}".replace(" ", ""),
                                    jitter_reserve=reserve,
                                    way=way,
                                )
                                if m["transports"] != [way]:
                                    log(f"the {way} row asked on {m['transports']}; see the gateway's log above")
                                pinned = f", learner on CPU {format_cpu_list(learner_cpus)}" if learner_cpus else ""
                                label = f"zero-cost, {way}, {kind}{pinned}"
                                self.record("zero-cost", label, 0.0, n, "next_idle", m, reserve=reserve)
            self.partition(None)

    def run(self) -> None:
        args = self.args
        log(f"work directory {self.workdir}; Redis {self.redis.url}")
        self.learner, _ = self.start_learner("async", STREAM, self.checkpoints)
        log("the learner trains on every row's transitions from now on")
        try:
            if args.zero_cost:
                self.run_zero_cost()
            for t_infer in args.t_infer:
                counts = [
                    n for n in replica_counts(t_infer, args.max_replicas) if not args.replicas or n in args.replicas
                ]
                if not counts or self.over_budget():
                    continue
                env = {"RTRL_CHECKPOINT_DIR": self.replica_dir()}
                log(f"t_infer = {t_infer} frames: starting {max(counts)} replicas")
                with replica_pool(
                    self.procs, max(counts), env, f"occupy-{t_infer}", occupy_ms=t_infer * FRAME_MS
                ) as addresses:
                    label = f"{t_infer:g} frames" + (" fixed" if args.replica_checkpoints == "own" else "")
                    self.sweep("occupy", label, t_infer, addresses, counts)
            if args.models:
                self.run_models()
            if args.sequential:
                self.run_sequential()
        finally:
            self.procs.stop_all()
            self.redis.stop()

    def run_models(self) -> None:
        args = self.args
        for width in args.model_widths:
            if self.over_budget():
                return
            forward_ms = measure_forward_ms(width)
            if forward_ms > MAX_MODEL_FORWARD_MS:
                log(f"impala_cnn k={width}: {forward_ms:.0f} ms per forward pass on this CPU; not benchmarked")
                self.rows.append(
                    Row("model", f"impala k={width}", forward_ms / FRAME_MS, 0, "-", 0, math.nan, math.nan,
                        math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0)
                )  # fmt: skip
                continue
            t_infer = forward_ms / FRAME_MS
            # Real forward passes need a core each; this machine has few, so more replicas stop helping.
            counts = sorted({1, *range(max(1, math.ceil(t_infer) - 1), math.ceil(t_infer) + 2)})
            counts = [n for n in counts if n <= min(args.max_replicas, 4)]
            model_dir = self.workdir / f"model-{width}"
            env = {
                "RTRL_MODEL_ARCH": "impala_cnn",
                "RTRL_MODEL_WIDTH": str(width),
                # Their own directory: the learner's checkpoints are of another network.
                "RTRL_CHECKPOINT_DIR": str(model_dir),
            }
            log(f"impala_cnn k={width}: {forward_ms:.1f} ms per forward pass ({t_infer:.2f} frames); N {counts}")
            with replica_pool(self.procs, max(counts), env, f"impala-{width}") as addresses:
                self.sweep("model", f"impala k={width}", t_infer, addresses, counts)

    def run_sequential(self) -> None:
        args = self.args
        assert self.learner is not None
        # The async learner pauses: the sequential learner is the only one training in these rows.
        self.learner.send_signal(signal.SIGSTOP)
        learner, address = self.start_learner("sequential", SEQUENTIAL_STREAM, self.workdir / "checkpoints-seq")
        try:
            for t_infer in args.t_infer:
                if self.over_budget():
                    return
                self.wait_for_calm()
                env = {"RTRL_CHECKPOINT_DIR": self.replica_dir()}
                with replica_pool(
                    self.procs, 1, env, f"sequential-{t_infer}", occupy_ms=t_infer * FRAME_MS
                ) as addresses:
                    m = run_gateway(
                        self.redis.url,
                        addresses,
                        "next_idle",
                        staleness_bound(t_infer),
                        args.warmup_s,
                        args.measure_s,
                        f"bench-seq-{t_infer}",
                        interaction="sequential",
                        learner_address=address,
                        stream=SEQUENTIAL_STREAM,
                    )
                round_trip_ms, t_learn_ms = m["latency_mean_ms"], m["train_ms_mean"]
                # The paper's prediction, with the measured round trip as t_infer (as the gateway sees it).
                self.record(
                    "sequential",
                    f"{t_infer:g} frames",
                    t_infer,
                    1,
                    "sequential",
                    m,
                    t_learn_ms=t_learn_ms,
                    round_trip_ms=round_trip_ms,
                    predicted_coverage=FRAME_MS / (round_trip_ms + t_learn_ms),
                )
                log(f"    t_learn {t_learn_ms:.1f} ms, round trip {round_trip_ms:.1f} ms, {m['cycles']} cycles")
        finally:
            self.procs.stop([learner])
            self.learner.send_signal(signal.SIGCONT)


def measure_forward_ms(width: int) -> float:
    """Median forward time of impala_cnn at `width` on this CPU, one thread, batch 1 (as a replica runs it)."""
    script = (
        "import time, torch, numpy as np\n"
        "from rtrl.models import QNetwork, default_model_config\n"
        "torch.set_num_threads(1)\n"
        f"m = QNetwork(default_model_config((4, 84, 84), 6, 'impala_cnn', {width})).eval()\n"
        "x = torch.randint(0, 256, (1, 4, 84, 84), dtype=torch.uint8)\n"
        "t = []\n"
        "with torch.inference_mode():\n"
        "    for i in range(4):\n"
        "        s = time.perf_counter(); m(x); t.append(time.perf_counter() - s)\n"
        "print(float(np.median(t[1:])) * 1000)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


# -- the table ------------------------------------------------------------------------------------------


def fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


HOW_TO_READ = """\
Real ALE Pong at 60 fps deciding every frame (k = 1, so a decision is a frame), replicas whose forward
pass occupies them for t_infer (bench/replica.py --occupy-ms) or real ImpalaCNN models on this CPU, the
learner training on the same machine. coverage: decisions with a fresh action; staleness: frames from
an action's observation to the frame it was applied; wasted: replies superseded before being applied,
per 100 decisions; late: replies too late to apply, per 100 decisions; overhead: frame produced ->
reply in the mailbox (includes t_infer); T: the round trip the staggering schedulers space calls by;
frames late: frames the clock itself started late (the machine was too busy); load: the machine's
1-minute load average (2 cores). See bench/staggering.py for everything else."""


def table(rows: list[Row]) -> str:
    head = (
        "rows", "t_infer (frames)", "N", "ceil(t/f)", "scheduler", "reserve", "decisions", "coverage %",
        "staleness mean", "staleness p99", "wasted /100", "late /100", "overhead p50 ms", "overhead p99 ms", "T ms",
        "frames late", "load",
    )  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---|" + "---:|" * (len(head) - 5)]
    for r in rows:
        if r.kind == "sequential":
            continue
        cells = (
            r.label,
            fmt(r.t_infer_frames, ".2f"),
            str(r.replicas),
            str(math.ceil(r.t_infer_frames)) if r.replicas else "-",
            r.scheduler,
            str(r.reserve),
            str(r.decisions),
            fmt(100 * r.coverage, ".2f"),
            fmt(r.staleness_mean, ".2f"),
            fmt(r.staleness_p99, ".1f"),
            fmt(r.wasted_per_100, ".1f"),
            fmt(r.late_per_100, ".1f"),
            fmt(r.overhead_p50_ms, ".2f"),
            fmt(r.overhead_p99_ms, ".2f"),
            fmt(r.period_ms, ".1f"),
            str(r.frames_late),
            fmt(r.load, ".1f"),
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| t_infer | scheduler | reserve | ceil(t_infer/t_frame) | smallest N with coverage >= 99% "
        "| coverage at ceil+1 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    labels = list(dict.fromkeys(r.label for r in rows if r.kind in ("occupy", "model") and r.replicas))
    reserves = sorted({r.reserve for r in rows})
    for label in labels:
        for scheduler, reserve in [(s, r) for s in SCHEDULER_NAMES for r in reserves]:
            group = [
                r for r in rows if r.label == label and r.scheduler == scheduler and r.reserve == reserve and r.replicas
            ]
            if not group:
                continue
            needed = math.ceil(group[0].t_infer_frames)
            reaching = [r.replicas for r in group if r.coverage >= 0.99]
            smallest = str(min(reaching)) if reaching else f"> {max(r.replicas for r in group)}"
            at_plus_one = [r for r in group if r.replicas == needed + 1]
            coverage = fmt(100 * at_plus_one[0].coverage, ".2f") + "%" if at_plus_one else "-"
            lines.append(f"| {label} | {scheduler} | {reserve} | {needed} | {smallest} | {coverage} |")
    zero_cost = [r for r in rows if r.kind == "zero-cost"]
    if zero_cost:
        lines += [
            "",
            "| zero-cost row | N | decisions | coverage % | overhead p50 ms | p99 ms | max ms "
            "| gateway CPU ms / decision | replica CPU ms / decision | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in zero_cost:
            lines.append(
                f"| {r.label} | {r.replicas} | {r.decisions} | {fmt(100 * r.coverage, '.2f')} "
                f"| {fmt(r.overhead_p50_ms, '.2f')} | {fmt(r.overhead_p99_ms, '.2f')} "
                f"| {fmt(r.overhead_max_ms, '.2f')} "
                f"| {fmt(r.gateway_cpu_ms, '.2f')} | {fmt(r.replica_cpu_ms, '.2f')} | {fmt(r.load, '.1f')} |"
            )
    sequential = [r for r in rows if r.kind == "sequential"]
    if sequential:
        lines += [
            "",
            "| sequential, t_infer | coverage % | t_frame / (t_infer + t_learn) % | ... + t_frame % | round trip ms "
            "| t_learn ms | staleness mean |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sequential:
            # A cycle also waits for frame boundaries: the reply for the next step to start (half a frame on
            # average), the next observation after training (another half): about one frame per cycle.
            quantized = FRAME_MS / (r.round_trip_ms + r.t_learn_ms + FRAME_MS) if r.round_trip_ms else math.nan
            lines.append(
                f"| {r.label} | {fmt(100 * r.coverage, '.2f')} | {fmt(100 * r.predicted_coverage, '.2f')} "
                f"| {fmt(100 * quantized, '.2f')} | {fmt(r.round_trip_ms, '.1f')} | {fmt(r.t_learn_ms, '.1f')} "
                f"| {fmt(r.staleness_mean, '.2f')} |"
            )
    return "\n".join(lines)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-zero-cost", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-act-socket", dest="act_socket", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument(
        "--ways",
        nargs="+",
        default=list(WAYS),
        choices=WAYS,
        help="how the gateway asks the zero-cost replicas, each a row of its own (default: all)",
    )
    parser.add_argument(
        "--zero-cost-replicas",
        nargs="+",
        default=[STUB, REAL],
        choices=(STUB, REAL),
        help="zero-cost stubs, the real server with a zero-cost policy, or both (default), each a row of its own",
    )
    parser.add_argument("--t-infer", type=float, nargs="*", default=list(T_INFER_FRAMES), help="in frames")
    parser.add_argument("--replicas", type=int, nargs="*", default=[], help="only these N (default: around ceil)")
    parser.add_argument("--max-replicas", type=int, default=10)
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULER_NAMES), choices=SCHEDULER_NAMES)
    parser.add_argument(
        "--jitter-reserve",
        type=int,
        nargs="+",
        default=[DEFAULT_JITTER_RESERVE_FRAMES],
        help=f"RTRL_JITTER_RESERVE_FRAMES values, each row measured once per value (default "
        f"{DEFAULT_JITTER_RESERVE_FRAMES}, the gateway's)",
    )
    parser.add_argument("--model-widths", type=int, nargs="+", default=list(MODEL_WIDTHS))
    parser.add_argument(
        "--learner-cpus",
        default="",
        metavar="LIST",
        help="also measure each zero-cost row with the learner on these CPUs and everything else on the others "
        "(as rtrl up --learner-cpus runs them), beside the same row unpinned",
    )
    parser.add_argument("--no-models", dest="models", action="store_false")
    parser.add_argument("--no-sequential", dest="sequential", action="store_false")
    parser.add_argument("--no-zero-cost", dest="zero_cost", action="store_false")
    parser.add_argument("--warmup-s", type=float, default=4.0)
    parser.add_argument("--measure-s", type=float, default=20.0, help="measured seconds of a row that can cover")
    parser.add_argument("--short-measure-s", type=float, default=8.0, help="... of a row with N < ceil")
    parser.add_argument("--budget-s", type=float, default=3600.0, help="skip rows once this much time has passed")
    parser.add_argument("--calm-load", type=float, default=3.0, help="before a row, wait for a load average below")
    parser.add_argument("--calm-wait-s", type=float, default=90.0, help="... but at most this long")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--rows-json", type=Path, help="write the rows measured so far here after each row")
    parser.add_argument(
        "--replica-checkpoints",
        choices=("learner", "own"),
        default="learner",
        help="occupancy replicas hot-reload the learner's checkpoints (default) or serve a fixed policy "
        "(rows labelled 'fixed')",
    )
    parser.add_argument(
        "--table-from",
        type=Path,
        nargs="+",
        help="only print (and --out) the table of rows saved by --rows-json; a row of a later file replaces "
        "the same row (t_infer, N, scheduler) of an earlier one (re-measured when the machine was calmer)",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.serve_zero_cost:
        serve_zero_cost(args.act_socket)
        return
    if args.table_from is not None:
        merged: dict[tuple[str, str, int, str, int], Row] = {}
        for path in args.table_from:
            for row in json.loads(path.read_text()):
                key = (row["kind"], row["label"], row["replicas"], row["scheduler"], row.get("reserve", 0))
                merged[key] = Row(**row)
        rows = list(merged.values())
        print(table(rows))
        if args.out is not None:
            args.out.write_text(HOW_TO_READ + "\n\n" + table(rows) + "\n")
        return
    # Run in the background, a shell ignores SIGINT for us; SIGTERM then stops every process cleanly.
    signal.signal(signal.SIGTERM, interrupt)
    with tempfile.TemporaryDirectory(prefix="rtrl-staggering-") as tmp:
        workdir = Path(tmp) / "run"
        workdir.mkdir()
        bench = Bench(args, workdir)
        try:
            bench.run()
        finally:
            result = table(bench.rows)
            print(result, flush=True)
            if args.out is not None:
                command = " ".join(["python bench/staggering.py", *sys.argv[1:]])
                header = (
                    f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPU cores by `{command}` "
                    f"in {time.monotonic() - bench.started_s:.0f} s."
                )
                args.out.write_text(header + "\n\n" + HOW_TO_READ + "\n\n" + result + "\n")


if __name__ == "__main__":
    main()
