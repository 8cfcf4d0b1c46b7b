"""Measures one inference replica's dynamic batching over real gRPC: callers with deadlines, a busy model.

    python bench/inference_batching.py --occupy-ms 33 --callers 4 --period-ms 16.7 --deadline-ms 50
    python bench/inference_batching.py --device cuda --occupy-ms 0 --arch impala_cnn --width 29 --callers 16

Starts a replica in this process on a free port (the benchmark replica's policy, bench/replica.py,
makes each forward pass hold it for at least --occupy-ms, like an accelerator running a big model),
then `--callers` threads each send one Act per `--period-ms` with a `--deadline-ms` deadline, as
gateways stepping games at 60 fps would, for `--duration` seconds, once per --max-batch value. Prints
per run: answers, refusals (DEADLINE_EXCEEDED), the replica's batch sizes and its latency. Rows are
only comparable within a run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# bench/ is this script's own folder, so Python finds its sibling modules.
from replica import bench_policy_factory  # noqa: E402

from rtrl.services.inference.server import create_server  # noqa: E402
from rtrl.services.inference.settings import InferenceSettings, resolve_device  # noqa: E402
from rtrl.tensors import to_proto  # noqa: E402
from rtrl.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402

OBSERVATION = np.zeros((4, 84, 84), dtype=np.uint8)
ACTIONS = 6


def caller(
    address: str, period_s: float, phase_s: float, deadline_s: float, stop: threading.Event, counts: dict[str, int]
) -> None:
    request = inference_pb2.ActRequest(observation=to_proto(OBSERVATION), gateway_id="bench", action_count=ACTIONS)
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        # Games are not in phase with each other: each caller starts at its own offset into the frame.
        next_at = time.perf_counter() + phase_s
        time.sleep(phase_s)
        while not stop.is_set():
            try:
                stub.Act(request, timeout=deadline_s)
                counts["answered"] += 1
            except grpc.RpcError as error:
                counts[error.code().name.lower()] = counts.get(error.code().name.lower(), 0) + 1
            next_at += period_s
            time.sleep(max(next_at - time.perf_counter(), 0.0))


def run(args: argparse.Namespace, max_batch: int, checkpoint_dir: str) -> None:
    settings = InferenceSettings(
        host="127.0.0.1",
        port=0,
        replica_id="bench",
        checkpoint_dir=checkpoint_dir,
        device=resolve_device(args.device),
        epsilon_start=0.0,
        workers=max(16, max_batch, args.callers),
        max_batch_size=max_batch,
        max_wait_ms=args.max_wait_ms,
        model_arch=args.arch,
        model_width=args.width,
    )
    server, port = create_server(settings, bench_policy_factory(args.occupy_ms, zero_cost=False))
    server.start()
    address = f"127.0.0.1:{port}"
    stop = threading.Event()
    counts = [{"answered": 0} for _ in range(args.callers)]
    period_s = args.period_ms / 1e3
    threads = [
        threading.Thread(
            target=caller, args=(address, period_s, i * period_s / args.callers, args.deadline_ms / 1e3, stop, c)
        )
        for i, c in enumerate(counts)
    ]
    # The first call builds the fresh policy; keep that out of the measurement.
    with grpc.insecure_channel(address) as channel:
        inference_pb2_grpc.InferenceServiceStub(channel).Act(
            inference_pb2.ActRequest(observation=to_proto(OBSERVATION), action_count=ACTIONS), timeout=60
        )
    for thread in threads:
        thread.start()
    time.sleep(args.duration)
    stop.set()
    for thread in threads:
        thread.join()
    with grpc.insecure_channel(address) as channel:
        status = inference_pb2_grpc.InferenceServiceStub(channel).GetStatus(
            inference_pb2.InferenceServiceGetStatusRequest(), timeout=10
        )
    server.stop(1.0).wait()
    total: dict[str, int] = {}
    for c in counts:
        for name, value in c.items():
            total[name] = total.get(name, 0) + value
    sent = sum(total.values())
    answered, refused = total.get("answered", 0), total.get("deadline_exceeded", 0)
    print(
        f"max batch {max_batch:>2}: sent {sent:>5}, answered {answered / max(sent, 1):6.1%}, refused {refused:>4}, "
        f"other errors {sent - answered - refused:>3}; batch mean {status.batch_size.mean:.2f} "
        f"max {status.batch_size.max:.0f}; latency p50 {status.latency_ms.p50:.1f} p99 {status.latency_ms.p99:.1f} ms; "
        f"forward estimate {status.expected_forward_ms:.1f} ms; answered late {status.requests_answered_late}; "
        # Refusals the replica counted: fewer than the callers saw means calls ran out of time on the way.
        f"refused by the replica {status.requests_refused_deadline}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--period-ms", type=float, default=1000 / 60)
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    parser.add_argument("--occupy-ms", type=float, default=33.0)
    parser.add_argument("--max-wait-ms", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--arch", default="nature_cnn")
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda if present")
    args = parser.parse_args()
    print(
        f"{args.callers} callers, one Act each per {args.period_ms:.1f} ms with a {args.deadline_ms:.0f} ms deadline; "
        f"{args.arch} width {args.width} on {resolve_device(args.device)}, every forward pass occupies the replica"
        f" >= {args.occupy_ms:.0f} ms",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        for max_batch in args.max_batch:
            run(args, max_batch, checkpoint_dir)


if __name__ == "__main__":
    main()
