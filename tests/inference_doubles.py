"""Inference doubles shared by tests: `ActStreamByAct` for test replicas that only define Act (the gateway
asks every replica on ActStream), and the benchmark's `BenchPolicy` (bench/replica.py) for real replicas
whose forward pass takes a while: the tests use the very replica the benchmarks measure.

Importable from any test module: pytest puts tests/ on sys.path for tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
from file_modules import load_file

from rtrl.v1 import inference_pb2, inference_pb2_grpc

BENCH_REPLICA = Path(__file__).resolve().parents[1] / "bench" / "replica.py"
"""The benchmark replica: `python bench/replica.py --occupy-ms X` serves the real server with a slow policy."""


_bench_replica = load_file("bench_replica", BENCH_REPLICA)
BenchPolicy = _bench_replica.BenchPolicy
bench_policy_factory = _bench_replica.bench_policy_factory


class ActStreamByAct(inference_pb2_grpc.InferenceServiceServicer):
    """Answers each ActStream request with the servicer's own Act, in order, as rtrl's replicas do."""

    def ActStream(
        self, requests: Iterator[inference_pb2.ActStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.ActStreamResponse]:
        for message in requests:
            yield inference_pb2.ActStreamResponse(response=self.Act(message.request, context))
