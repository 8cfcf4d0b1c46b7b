"""How the gateway should make its Act calls: a caller thread per replica, or `future()` from the deciding thread.

    python bench/act_call_paths.py --calls 600 --rounds 3

One zero-cost replica (bench/staggering.py --serve-zero-cost, a real gRPC server in its own process)
and, in this process, calls paced at 60 per second as the clock makes them, each with an 84x84x4
observation. Three ways, alternated round by round so that they share the machine's conditions:
- caller thread: the deciding thread builds the request and hands it to a thread that makes a
  blocking call (what the gateway did for unary Act calls before it asked every replica on a stream:
  docs/transports.md);
- future: the deciding thread calls `stub.Act.future(...)`; the reply comes in a done-callback;
- future + spin: the same with a long-lived Health/Watch stream open on the channel, which keeps the
  channel's completion ("spin") thread alive between calls.
Columns: `issue` is how long the deciding thread is held (building the request included), `reply`
the time from the start of the issue to the reply being handled. Compare rows with each other.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rtrl.tensors import to_proto  # noqa: E402
from rtrl.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402

RATE_HZ = 60.0
OBSERVATION = np.zeros((4, 84, 84), np.uint8)


def start_replica(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "bench" / "staggering.py"), "--serve-zero-cost"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    give_up_at = time.monotonic() + 60
    while time.monotonic() < give_up_at:
        match = re.search(r"listening on [\d.]+:(\d+)", log_path.read_text())
        if match:
            return process, f"127.0.0.1:{match.group(1)}"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the zero-cost replica did not start; see {log_path}")


def request() -> inference_pb2.ActRequest:
    return inference_pb2.ActRequest(observation=to_proto(OBSERVATION), gateway_id="bench", action_count=6)


def paced(calls: int, issue: Callable[[], None]) -> None:
    start_s = time.monotonic()
    for i in range(calls):
        wait_s = start_s + i / RATE_HZ - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)
        issue()


def caller_thread(stub: inference_pb2_grpc.InferenceServiceStub, calls: int) -> tuple[list[float], list[float]]:
    issued: list[float] = []
    replied: list[float] = []
    ready = threading.Condition()
    queue: list[tuple[inference_pb2.ActRequest, float]] = []

    def run() -> None:
        for _ in range(calls):
            with ready:
                while not queue:
                    ready.wait()
                item, started_s = queue.pop()
            stub.Act(item, timeout=1.0)
            replied.append(time.monotonic() - started_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def issue() -> None:
        started_s = time.monotonic()
        item = request()
        with ready:
            queue.append((item, started_s))
            ready.notify()
        issued.append(time.monotonic() - started_s)

    paced(calls, issue)
    thread.join(5)
    return issued, replied


def future_calls(stub: inference_pb2_grpc.InferenceServiceStub, calls: int) -> tuple[list[float], list[float]]:
    issued: list[float] = []
    replied: list[float] = []

    def issue() -> None:
        started_s = time.monotonic()
        call = stub.Act.future(request(), timeout=1.0)
        issued.append(time.monotonic() - started_s)
        call.add_done_callback(lambda _call: replied.append(time.monotonic() - started_s))

    paced(calls, issue)
    time.sleep(0.2)
    return issued, replied


def run_way(way: str, address: str, calls: int) -> tuple[list[float], list[float]]:
    channel = grpc.insecure_channel(address)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    stub.Act(request(), timeout=5.0)  # connected and warm before measuring
    watch = None
    try:
        if way == "future + spin":
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            next(watch)
        return caller_thread(stub, calls) if way == "caller thread" else future_calls(stub, calls)
    finally:
        if watch is not None:
            watch.cancel()
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=600, help="calls per way and round (default 600)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ways = ("caller thread", "future", "future + spin")
    results: dict[str, tuple[list[float], list[float]]] = {way: ([], []) for way in ways}
    with tempfile.TemporaryDirectory(prefix="rtrl-act-paths-") as tmp:
        process, address = start_replica(Path(tmp) / "replica.log")
        try:
            for _ in range(args.rounds):
                for way in ways:
                    issued, replied = run_way(way, address, args.calls)
                    results[way][0].extend(issued)
                    results[way][1].extend(replied)
        finally:
            process.terminate()
            process.wait(10)
    print("| way | issue p50 ms | issue p99 ms | reply p50 ms | reply p90 ms | reply p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for way, (issued, replied) in results.items():
        i, r = np.array(issued) * 1000, np.array(replied) * 1000
        print(
            f"| {way} | {np.percentile(i, 50):.3f} | {np.percentile(i, 99):.3f} | {np.percentile(r, 50):.3f} "
            f"| {np.percentile(r, 90):.3f} | {np.percentile(r, 99):.3f} |"
        )


if __name__ == "__main__":
    main()
