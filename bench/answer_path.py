"""What the real inference replica spends answering one zero-cost call, for one or more checkouts side by side.

    python bench/answer_path.py                                   # this checkout
    git worktree add /tmp/before <commit>
    python bench/answer_path.py --compare /tmp/before --rounds 3  # an older checkout too, rounds alternating

Two measures per checkout, each in a fresh process of that checkout's code:
- tight: `InferenceServicer.answer` on one parsed 84x84x4 request, in a loop in one process (the answer
  path alone: validation, batcher, policy, response; no socket), microseconds per call;
- paced: the real replica (`bench/replica.py --zero-cost`) asked over its act socket 60 times a second,
  as a gateway asks, from this process (bench/staggering.py's bare messages, this checkout's client):
  the round trip's p50 and p99, and the replica process's CPU time per call (the connection's thread
  ends with the connection, so a per-thread count would lose it).

Rounds alternate between checkouts so that they share the machine's conditions: compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.staggering import ACT_SOCKET, Processes, paced_messages, process_cpu_s, wait_for_port  # noqa: E402

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


def paced(root: Path, seconds: float) -> dict[str, float]:
    """`root`'s replica asked at 60 Hz over its act socket by this checkout's client (bench/staggering.py's
    bare messages), with the CPU the replica spent meanwhile."""
    with tempfile.TemporaryDirectory() as workdir:
        procs = Processes(Path(workdir))
        env = {**REPLICA_ENV, "RTRL_CHECKPOINT_DIR": workdir}
        replica, log_path = procs.spawn("replica", [str(root / "bench" / "replica.py"), "--zero-cost"], env)
        try:
            address = f"127.0.0.1:{wait_for_port(log_path, replica)}"
            paced_messages(address, ACT_SOCKET, 1.0)  # not measured: the first call builds the network
            # The whole process's CPU: the connection's thread ends with it, taking its own count along.
            before_s = process_cpu_s(replica.pid)
            measured = paced_messages(address, ACT_SOCKET, seconds)
            used_s = process_cpu_s(replica.pid) - before_s
        finally:
            procs.stop_all()
    return {
        "p50": measured["overhead_p50_ms"],
        "p99": measured["overhead_p99_ms"],
        "cpu_ms": used_s / measured["decisions"] * 1000.0,
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
    columns = "tight answer us | paced p50 ms | paced p99 ms | replica CPU ms/call"
    print(f"| checkout | round | {columns} |")
    print("|---|---:|---:|---:|---:|---:|")
    for round_index in range(args.rounds):
        for root in roots if round_index % 2 == 0 else roots[::-1]:
            tight = tight_us(root, args.tight_calls)
            measured = paced(root, args.seconds)
            print(
                f"| {root} | {round_index + 1} | {tight:.1f} | {measured['p50']:.3f} | {measured['p99']:.3f} | "
                f"{measured['cpu_ms']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
