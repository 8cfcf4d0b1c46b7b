"""Inference doubles shared by tests: `ActStreamByAct` for test replicas that only define Act (the gateway
asks every replica on ActStream), and `SlowPolicy` for real replicas whose forward pass takes a while.

Importable from any test module: pytest puts tests/ on sys.path for tests/conftest.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np

from rtrl.services.inference.policy import Policy, ServedModel
from rtrl.services.inference.server import PolicyFactory
from rtrl.services.inference.settings import InferenceSettings
from rtrl.v1 import inference_pb2, inference_pb2_grpc


class ActStreamByAct(inference_pb2_grpc.InferenceServiceServicer):
    """Answers each ActStream request with the servicer's own Act, in order, as rtrl's replicas do."""

    def ActStream(
        self, requests: Iterator[inference_pb2.ActStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.ActStreamResponse]:
        for message in requests:
            yield inference_pb2.ActStreamResponse(response=self.Act(message.request, context))


class SlowPolicy(Policy):
    """The production policy on a slow machine: every forward pass lasts at least `forward_s` (the real
    pass, then a sleep for the rest), like a replica busy with a bigger model, without using a core."""

    forward_s = 0.0
    """Least time one forward pass lasts; set before the first call."""

    def _forward_batch(self, served: ServedModel, observations: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        result = super()._forward_batch(served, observations)
        left_s = self.forward_s - (time.perf_counter() - started)
        if left_s > 0:
            time.sleep(left_s)
        return result

    @classmethod
    def factory(cls, forward_ms: float) -> PolicyFactory:
        """Builds one from a replica's settings, for `create_server(settings, policy_factory)`."""

        def build(settings: InferenceSettings, replica_id: str) -> Policy:
            policy = cls.from_settings(settings, replica_id)
            assert isinstance(policy, SlowPolicy)
            policy.forward_s = forward_ms / 1000.0
            return policy

        return build
