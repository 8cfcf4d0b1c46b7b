"""The floor under the gateway's decision overhead: one request and its reply between two processes.

    python bench/paced_round_trip.py --calls 600 --rounds 3
    python bench/paced_round_trip.py --calls 600 --rounds 3 --beside-training   # the same, with a learner's load

The gateway asks for an action once per decision, so its calls are paced (60 per second at most) and
both processes go idle between them. This measures what that costs, against the same exchange made
back to back, for three ways of making it, each with an 84x84x4 observation's worth of bytes:
- tcp: a length-prefixed message on a plain TCP socket (Python on both sides, TCP_NODELAY);
- grpc unary: a gRPC unary call to a sync grpc.server (what the gateway's Act is);
- grpc stream: one message each way on a long-lived bidirectional gRPC stream to the same server.
The server is another process of this script. Its handler stamps the time the request reached it
(CLOCK_MONOTONIC, shared by both processes), which splits the round trip into send -> handler and
handler -> reply. Ways and pacings alternate round by round so that they share the machine's
conditions; compare rows with each other.

With --beside-training, every paced exchange is also measured with a training loop running beside
both processes, as the learner runs beside the gateway and the replicas: a third process, at the
learner's niceness (RTRL_LEARNER_NICE's default, 10), training rtrl's Nature CNN on random batches of
32 with one torch thread (what rtrl/services/learner does between its reads from Redis).
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtrl.services.learner.settings import DEFAULT_NICE

OBSERVATION_BYTES = 4 * 84 * 84
RATE_HZ = 60.0
STAMP = struct.Struct("d")
LENGTH = struct.Struct("!I")
SERVICE = "rtrl.bench.PacedRoundTrip"


def stamp() -> bytes:
    return STAMP.pack(time.monotonic())


def serve_grpc() -> None:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return stamp()

    def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in requests:
            yield stamp()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def train_beside() -> None:
    """A learner's CPU load: one torch thread training the Nature CNN on random batches, until killed."""
    import torch

    from rtrl.models import build_model, default_model_config

    os.nice(DEFAULT_NICE)
    torch.set_num_threads(1)
    model = build_model(default_model_config((4, 84, 84), 6))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = torch.rand(32, 4, 84, 84)
    print("training", flush=True)
    while True:
        loss = model(batch).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def serve_tcp() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    connection, _ = listener.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = connection.makefile("rb")
    while header := reader.read(LENGTH.size):
        reader.read(LENGTH.unpack(header)[0])
        connection.sendall(stamp())


@contextmanager
def server_process(kind: str) -> Iterator[str]:
    """Runs this script with --serve `kind`; gives the first line it prints (a port, or "training")."""
    process = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(10)


# One exchange: sends the payload, returns when the reply is back, and gives the handler's time stamp.
Exchange = Callable[[bytes], float]


@contextmanager
def tcp_exchange(port: int) -> Iterator[Exchange]:
    connection = socket.create_connection(("127.0.0.1", port))
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(payload: bytes) -> float:
        connection.sendall(LENGTH.pack(len(payload)) + payload)
        reply = b""
        while len(reply) < STAMP.size:
            reply += connection.recv(STAMP.size - len(reply))
        return float(STAMP.unpack(reply)[0])

    try:
        yield exchange
    finally:
        connection.close()


@contextmanager
def grpc_unary_exchange(port: int) -> Iterator[Exchange]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    try:
        yield lambda payload: float(STAMP.unpack(call(payload, timeout=5.0))[0])
    finally:
        channel.close()


@contextmanager
def grpc_stream_exchange(port: int) -> Iterator[Exchange]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    replies = channel.stream_stream(f"/{SERVICE}/Stream")(iter(requests.get, None))

    def exchange(payload: bytes) -> float:
        requests.put(payload)
        return float(STAMP.unpack(next(replies))[0])

    try:
        yield exchange
    finally:
        requests.put(None)
        replies.cancel()
        channel.close()


WAYS: dict[str, tuple[str, Callable[[int], AbstractContextManager[Exchange]]]] = {
    "tcp": ("tcp", tcp_exchange),
    "grpc unary": ("grpc", grpc_unary_exchange),
    "grpc stream": ("grpc", grpc_stream_exchange),
}


def measure(exchange: Exchange, calls: int, paced: bool, payload: bytes) -> list[tuple[float, float]]:
    """(send -> handler, round trip) seconds of each exchange."""
    exchange(payload)  # connected and warm before measuring
    samples = []
    start_s = time.monotonic()
    for i in range(calls):
        if paced:
            wait_s = start_s + (i + 1) / RATE_HZ - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
        sent_s = time.monotonic()
        handled_s = exchange(payload)
        samples.append((handled_s - sent_s, time.monotonic() - sent_s))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=600, help="exchanges per way, pacing and round (default 600)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--payload-bytes", type=int, default=OBSERVATION_BYTES)
    parser.add_argument(
        "--beside-training", action="store_true", help="also measure the paced exchanges beside a training loop"
    )
    parser.add_argument("--serve", choices=["tcp", "grpc", "training"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        {"tcp": serve_tcp, "grpc": serve_grpc, "training": train_beside}[args.serve]()
        return
    payload = os.urandom(args.payload_bytes)
    # (pacing, beside) in the order each round measures them.
    conditions = [("back to back", "nothing"), (f"{RATE_HZ:.0f}/s", "nothing")]
    if args.beside_training:
        conditions.append((f"{RATE_HZ:.0f}/s", "training"))
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for way, (kind, connect) in WAYS.items():
            for pacing, beside in conditions:
                # A fresh server each time: the tcp one serves one connection, and none carries state over.
                with ExitStack() as stack:
                    if beside == "training":
                        stack.enter_context(server_process("training"))
                    port = int(stack.enter_context(server_process(kind)))
                    exchange = stack.enter_context(connect(port))
                    samples = measure(exchange, args.calls, pacing != "back to back", payload)
                results.setdefault((way, pacing, beside), []).extend(samples)
    print(f"{args.rounds} rounds of {args.calls} exchanges, {args.payload_bytes} bytes sent and 8 bytes back")
    print()
    print("| way | pacing | beside | round trip p50 ms | round trip p99 ms | send -> handler p50 ms "
          "| send -> handler p99 ms | round trip p50 / back to back |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for way in WAYS:
        back_to_back_p50 = float(np.percentile([t for _, t in results[(way, *conditions[0])]], 50))
        for pacing, beside in conditions:
            to_handler, round_trip = (
                np.array(column) * 1000.0 for column in zip(*results[(way, pacing, beside)], strict=True)
            )
            p50 = float(np.percentile(round_trip, 50))
            print(
                f"| {way} | {pacing} | {beside} | {p50:.3f} | {np.percentile(round_trip, 99):.3f} "
                f"| {np.percentile(to_handler, 50):.3f} | {np.percentile(to_handler, 99):.3f} "
                f"| x{p50 / (back_to_back_p50 * 1000.0):.2f} |"
            )


if __name__ == "__main__":
    main()
