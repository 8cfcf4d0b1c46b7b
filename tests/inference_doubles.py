"""Shared by test replicas that only define Act: the gateway asks every replica on ActStream.

Importable from any test module: pytest puts tests/ on sys.path for tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from rtrl.v1 import inference_pb2, inference_pb2_grpc


class ActStreamByAct(inference_pb2_grpc.InferenceServiceServicer):
    """Answers each ActStream request with the servicer's own Act, in order, as rtrl's replicas do."""

    def ActStream(
        self, requests: Iterator[inference_pb2.ActStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.ActStreamResponse]:
        for message in requests:
            yield inference_pb2.ActStreamResponse(response=self.Act(message.request, context))
