"""What the real inference replica spends answering one zero-cost call, for one or more checkouts side by side.

    python bench/answer_path.py                                   # this checkout
    git worktree add /tmp/before <commit>
    python bench/answer_path.py --compare /tmp/before --rounds 3  # an older checkout too, rounds alternating

Two measures per checkout, each in a fresh process of that checkout's code:
- tight: `InferenceServicer.answer` on one parsed 84x84x4 request, in a loop in one process (the answer
  path alone: validation, batcher, policy, response; no socket), microseconds per call;
- paced: the real replica (`bench/replica.py --zero-cost`) asked over its act socket 60 times a second,
  as a gateway asks, from this process: the round trip's p50 and p99, and the CPU time per call of the
  replica's busiest thread (its act socket connection's thread; from /proc/<pid>/task/*/schedstat) and
  of the whole replica.

Rounds alternate between checkouts so that they share the machine's conditions: compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RATE_HZ = 60.0
REPLICA_ENV = {
    "RTRL_INFERENCE_HOST": "127.0.0.1",
    "RTRL_INFERENCE_PORT": "0",
    "RTRL_INFERENCE_DEVICE": "cpu",
    "RTRL_TORCH_THREADS": "1",
    "RTRL_INFERENCE_MAX_WAIT_MS": "0",
    "RTRL_INFERENCE_ACT_SOCKET_PORT": "0",
}
TIGHT = """
import os, sys, tempfile, time
sys.path.insert(0, os.path.join(sys.argv[1], "bench")); sys.path.insert(0, sys.argv[1])
import numpy as np
from replica import bench_policy_factory
from rtrl.services.inference.server import InferenceServicer, create_server
from rtrl.services.inference.settings import InferenceSettings
from rtrl.tensors import to_proto
from rtrl.v1 import inference_pb2
server, _ = create_server(InferenceSettings.from_env(), bench_policy_factory(0.0, True))
servicer = InferenceServicer(server.policy, server.streams, "", None)
request = inference_pb2.ActRequest(observation=to_proto(np.zeros((4, 84, 84), np.uint8)), action_count=6)
body = inference_pb2.ActStreamRequest(request=request, timeout_ms=1000.0).SerializeToString()
calls = int(sys.argv[2])
for _ in range(calls // 10):
    servicer.answer(inference_pb2.ActStreamRequest.FromString(body))
started = time.perf_counter()
for _ in range(calls):
    servicer.answer(inference_pb2.ActStreamRequest.FromString(body)).SerializeToString()
print((time.perf_counter() - started) / calls * 1e6)
server.stop(0)
"""


def tight_us(root: Path, calls: int) -> float:
    env = {
        **os.environ,
        **REPLICA_ENV,
        "RTRL_INFERENCE_ACT_SOCKET_PORT": "-1",
        "RTRL_CHECKPOINT_DIR": tempfile.mkdtemp(),
    }
    result = subprocess.run(
        [sys.executable, "-c", TIGHT, str(root), str(calls)], env=env, capture_output=True, text=True, check=True
    )
    return float(result.stdout.split()[-1])


def thread_cpu_s(pid: int) -> dict[str, float]:
    """Each thread's CPU seconds so far (schedstat's run time, in nanoseconds)."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            times[tid] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
        except OSError:
            continue  # the thread ended meanwhile
    return times


def paced(root: Path, seconds: float) -> dict[str, float]:
    # Imported here: the client is this checkout's, whatever checkout the replica runs.
    from rtrl.act_socket import HELLO, client_hello, configure, frame, receive_exactly, receive_length
    from rtrl.grpc_util import create_channel
    from rtrl.tensors import to_proto
    from rtrl.v1 import inference_pb2, inference_pb2_grpc

    with tempfile.TemporaryDirectory() as workdir:
        log_path = Path(workdir) / "replica.log"
        env = {**os.environ, **REPLICA_ENV, "RTRL_CHECKPOINT_DIR": workdir}
        with open(log_path, "wb") as log:
            replica = subprocess.Popen(
                [sys.executable, "bench/replica.py", "--zero-cost"], cwd=root, env=env, stdout=log, stderr=log
            )
        try:
            give_up_s = time.monotonic() + 60.0
            while not (found := re.search(r"listening on [\d.]+:(\d+)", log_path.read_text())):
                if time.monotonic() > give_up_s or replica.poll() is not None:
                    raise RuntimeError(f"the replica of {root} did not start:\n{log_path.read_text()}")
                time.sleep(0.1)
            channel = create_channel(f"127.0.0.1:{found.group(1)}")
            status_request = inference_pb2.InferenceServiceGetStatusRequest()
            port = inference_pb2_grpc.InferenceServiceStub(channel).GetStatus(status_request, timeout=30.0)
            channel.close()
            connection = socket.create_connection(("127.0.0.1", port.act_socket_port), timeout=30.0)
            configure(connection)
            connection.sendall(client_hello(""))
            assert receive_exactly(connection, len(HELLO)) == HELLO
            observation = to_proto(np.zeros((4, 84, 84), np.uint8))

            def ask(frame_index: int) -> None:
                request = inference_pb2.ActRequest(observation=observation, action_count=6, frame_index=frame_index)
                message = inference_pb2.ActStreamRequest(request=request, timeout_ms=1000.0)
                connection.sendall(frame(message.SerializeToString()))
                receive_exactly(connection, receive_length(connection))

            for frame_index in range(100):  # the network is built on the first call
                ask(frame_index)
            before = thread_cpu_s(replica.pid)
            round_trips_ms = []
            started_s = time.monotonic()
            while (now_s := time.monotonic()) < started_s + seconds:
                due_s = started_s + len(round_trips_ms) / RATE_HZ
                if due_s > now_s:
                    time.sleep(due_s - now_s)
                sent_s = time.perf_counter()
                ask(len(round_trips_ms))
                round_trips_ms.append((time.perf_counter() - sent_s) * 1000.0)
            after = thread_cpu_s(replica.pid)
            connection.close()
        finally:
            replica.terminate()
            replica.wait(timeout=30.0)
    used = [after[tid] - before.get(tid, 0.0) for tid in after]
    calls = len(round_trips_ms)
    return {
        "p50": float(np.percentile(round_trips_ms, 50)),
        "p99": float(np.percentile(round_trips_ms, 99)),
        "thread_ms": max(used) / calls * 1000.0,
        "process_ms": sum(used) / calls * 1000.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--compare", nargs="*", type=Path, default=[], help="other checkouts to measure beside this one"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="paced measurement per round and checkout")
    parser.add_argument("--tight-calls", type=int, default=5000)
    args = parser.parse_args()
    roots = [REPO_ROOT, *(path.resolve() for path in args.compare)]
    for root in roots[1:]:
        if not (root / "bench" / "replica.py").exists():
            parser.error(f"{root} is not an rtrl checkout with bench/replica.py")
    sys.path.insert(0, str(REPO_ROOT))
    columns = "tight answer us | paced p50 ms | paced p99 ms | busiest thread CPU ms/call | replica CPU ms/call"
    print(f"| checkout | round | {columns} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for round_index in range(args.rounds):
        for root in roots if round_index % 2 == 0 else roots[::-1]:
            tight = tight_us(root, args.tight_calls)
            measured = paced(root, args.seconds)
            print(
                f"| {root} | {round_index + 1} | {tight:.1f} | {measured['p50']:.3f} | {measured['p99']:.3f} | "
                f"{measured['thread_ms']:.3f} | {measured['process_ms']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
