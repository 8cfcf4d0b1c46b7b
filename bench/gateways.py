"""Many games at once, and the transition path's ceiling, measured on this machine.

    python bench/gateways.py                   # both parts (about 6 minutes)
    python bench/gateways.py --part stack      # rtrl up --gateways N rows only
    python bench/gateways.py --part stream --transitions 2000 --repeats 1   # a quick look at the path

Part "stack": `rtrl up` as a user runs it (embedded Redis, the learner training DQN, R replicas, N gateways
each playing its own ALE Pong at 60 fps) for N = 1, 2, 4, with --duration seconds per row. Columns:
aggregate frames per second (each gateway's frames over its uptime, summed) against the 60 x N the
games ask for, coverage over every gateway's decisions, the clock ticks that came late, the learner's
updates per second and transitions consumed per second, and how busy the machine's CPUs were over the
row (from /proc/stat: 100% is every core busy).

Part "stream": how many transitions per second (84x84x4 uint8 observations, about 28 KB each) get from
a publisher to a consumer through Redis, with both running at once until `--transitions` arrived:
- rtrl: the gateway's TransitionPublisher (encode, pipelined XADD in batches) into the learner's
  TransitionStream (XREADGROUP, decode, XACK);
- raw: redis-py alone, pipelined XADD of the same bytes in batches of the same size, XREADGROUP and XACK,
  no encoding or decoding;
each on a Redis with an append-only file synced every second (what rtrl up and compose run) and without,
rows interleaved and repeated; the ratio rtrl / raw is taken within each Redis mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from rtrl.local_redis import LocalRedis, free_port, free_ports_in_a_row  # noqa: E402
from rtrl.services.env_gateway.publisher import BATCH_SIZE, TransitionPublisher  # noqa: E402
from rtrl.services.learner.stream import DEFAULT_READ_COUNT, TransitionStream  # noqa: E402
from rtrl.transitions import STREAM_FIELD, Transition, encode  # noqa: E402

FPS = 60.0


# -- part "stack" -----------------------------------------------------------------------------------


@dataclass
class StackRow:
    gateways: int
    replicas: int
    fps: float
    coverage: float
    late_ticks: int
    updates_per_s: float
    consumed_per_s: float
    cpu_busy: float


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run_stack(gateways: int, replicas: int, duration_s: float, work: Path) -> StackRow:
    summary_path = work / f"summary-{gateways}-{replicas}.json"
    command = [
        sys.executable, "-m", "rtrl.cli", "up",
        "--env", "ale:Pong",
        "--duration", str(duration_s),
        "--gateways", str(gateways),
        "--inference-replicas", str(replicas),
        "--no-dashboard",
        "--gateway-port", str(free_port()),
        "--learner-port", str(free_port()),
        "--inference-base-port", str(free_ports_in_a_row(replicas)),
        "--checkpoint-dir", str(work / f"checkpoints-{gateways}-{replicas}"),
        "--run-dir", str(work / "runs"),
        "--summary-json", str(summary_path),
    ]  # fmt: skip
    busy0, total0 = 0, 0
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
    assert process.stdout is not None
    output = []
    for line in process.stdout:  # the CPU window opens once the stack runs
        output.append(line)
        if line.startswith("redis ") and not total0:
            busy0, total0 = cpu_times()
        if line.startswith("stopping:"):
            busy1, total1 = cpu_times()
    if process.wait() != 0:
        raise SystemExit(f"rtrl up failed:\n{''.join(output)}")
    summary = json.loads(summary_path.read_text())
    finals = [s for s in summary["gateways"].values() if s is not None]
    learner = summary["learner"]
    decisions = sum(int(s["decisions"]) for s in finals)
    return StackRow(
        gateways=gateways,
        replicas=replicas,
        fps=sum(int(s["frames"]) / float(s["uptime_s"]) for s in finals),
        coverage=sum(int(s["decisions_fresh"]) for s in finals) / decisions,
        late_ticks=sum(int(s["frames_late"]) for s in finals),
        updates_per_s=int(learner["updates"]) / duration_s,
        consumed_per_s=int(learner["transitions_consumed"]) / duration_s,
        cpu_busy=(busy1 - busy0) / max(1, total1 - total0),
    )


def stack_table(rows: list[StackRow]) -> str:
    lines = [
        "| gateways | replicas | fps (asked) | fps / asked | coverage | late ticks | learner upd/s | consumed/s "
        "| CPU busy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        asked = FPS * r.gateways
        lines.append(
            f"| {r.gateways} | {r.replicas} | {r.fps:.1f} ({asked:.0f}) | {r.fps / asked:.3f} "
            f"| {100 * r.coverage:.2f}% | {r.late_ticks} | {r.updates_per_s:.1f} | {r.consumed_per_s:.1f} "
            f"| {100 * r.cpu_busy:.0f}% |"
        )
    return "\n".join(lines)


# -- part "stream" ----------------------------------------------------------------------------------


def example_transition(seq: int) -> Transition:
    rng = np.random.default_rng(seq)
    return Transition(
        gateway_id="bench", seq=seq, episode=0, step=seq, obs_frame=4 * seq,
        observation=rng.integers(0, 256, size=(4, 84, 84), dtype=np.uint8),
        action=1, action_count=6, reward=0.0, terminated=False, truncated=False, fresh=True, fallback_policy=0,
        staleness_frames=1, policy_version=1, behaviour_log_prob=-1.0, obs_captured_unix_ns=0,
        action_applied_unix_ns=0, action_obs_frame=4 * seq,
    )  # fmt: skip


def rtrl_path(url: str, stream: str, transitions: list[Transition]) -> float:
    """Seconds until the learner's TransitionStream has read and acknowledged what the publisher got."""
    reader = TransitionStream(url, stream, "bench", "bench-learner")
    reader.connect()
    publisher: TransitionPublisher[Transition] = TransitionPublisher(
        url, stream, maxlen=len(transitions) + 1000, queue_size=len(transitions), encode=encode
    )
    started = time.perf_counter()
    publisher.start()
    for t in transitions:
        publisher.publish(t)
    consumed = 0
    while consumed < len(transitions):
        result = reader.read(block=True)
        reader.ack([e.entry_id for e in result.entries])
        consumed += len(result.entries)
    elapsed = time.perf_counter() - started
    publisher.stop()
    reader.close()
    assert publisher.dropped == 0
    return elapsed


def raw_path(url: str, stream: str, payloads: list[bytes]) -> float:
    """The same with redis-py alone: pipelined XADD, XREADGROUP, XACK, the bytes as they are."""
    producer, consumer = redis.Redis.from_url(url), redis.Redis.from_url(url)
    consumer.xgroup_create(stream, "bench", id="0", mkstream=True)
    field = STREAM_FIELD.encode()

    def produce() -> None:
        for start in range(0, len(payloads), BATCH_SIZE):
            pipe = producer.pipeline(transaction=False)
            for data in payloads[start : start + BATCH_SIZE]:
                pipe.xadd(stream, {field: data}, maxlen=len(payloads) + 1000, approximate=True)
            pipe.execute()

    started = time.perf_counter()
    thread = threading.Thread(target=produce)
    thread.start()
    consumed = 0
    while consumed < len(payloads):
        reply = consumer.xreadgroup("bench", "bench-raw", {stream: ">"}, count=DEFAULT_READ_COUNT, block=50)
        for _, entries in reply or []:
            consumer.xack(stream, "bench", *[entry_id for entry_id, _ in entries])
            consumed += len(entries)
    elapsed = time.perf_counter() - started
    thread.join()
    producer.close()
    consumer.close()
    return elapsed


@dataclass
class StreamRow:
    redis_mode: str
    rtrl_per_s: float
    raw_per_s: float


def run_stream(count: int, repeats: int) -> list[StreamRow]:
    transitions = [example_transition(i) for i in range(count)]
    payloads = [encode(t) for t in transitions]
    rows = []
    for append_only in (True, False):
        rtrl_times, raw_times = [], []
        with LocalRedis(maxmemory_mb=2048, append_only=append_only) as server:
            client = redis.Redis.from_url(server.url)
            for i in range(repeats):
                # Interleaved, each on a fresh stream: the machine's noise falls on both alike.
                raw_times.append(raw_path(server.url, f"raw-{i}", payloads))
                client.delete(f"raw-{i}")
                rtrl_times.append(rtrl_path(server.url, f"rtrl-{i}", transitions))
                client.delete(f"rtrl-{i}")
            client.close()
        rows.append(
            StreamRow(
                "append-only everysec" if append_only else "no persistence",
                count / statistics.median(rtrl_times),
                count / statistics.median(raw_times),
            )
        )
    return rows


def stream_table(rows: list[StreamRow], count: int, repeats: int) -> str:
    size_kb = len(encode(example_transition(0))) / 1024
    lines = [
        f"{count} transitions of {size_kb:.1f} KB, median of {repeats}",
        "",
        "| Redis | rtrl transitions/s | raw redis-py transitions/s | rtrl / raw |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.redis_mode} | {r.rtrl_per_s:.0f} | {r.raw_per_s:.0f} | {r.rtrl_per_s / r.raw_per_s:.2f} |")
    if len(rows) == 2:
        lines.append("")
        lines.append(
            f"The append-only file costs the rtrl path {100 * (1 - rows[0].rtrl_per_s / rows[1].rtrl_per_s):.0f}% "
            "of its ceiling (first row against the second)."
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("stack", "stream", "both"), default="both")
    parser.add_argument("--duration", type=float, default=45.0, help="seconds of each rtrl up row")
    parser.add_argument(
        "--rows", nargs="+", default=["1x2", "2x2", "4x2", "4x4"], help="GATEWAYSxREPLICAS of each stack row"
    )
    parser.add_argument("--transitions", type=int, default=4000, help="transitions per stream measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.part in ("stack", "both"):
        rows = []
        with tempfile.TemporaryDirectory(prefix="rtrl-bench-gateways-") as work:
            for spec in args.rows:
                gateways, replicas = (int(v) for v in spec.split("x"))
                rows.append(run_stack(gateways, replicas, args.duration, Path(work)))
                print(f"done: {rows[-1]}", flush=True)
        print(f"\nrtrl up --gateways N on ALE Pong at {FPS:.0f} fps each, learner training DQN, ", end="")
        print(f"{args.duration:g} s a row\n")
        print(stack_table(rows))
    if args.part in ("stream", "both"):
        print()
        print(stream_table(run_stream(args.transitions, args.repeats), args.transitions, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
