"""A real replica serving an actor-critic (V-trace) checkpoint over gRPC: sampled actions and their log pi."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest
import torch

from rtrl.models import ModelConfig
from rtrl.services.inference.server import InferenceServer
from rtrl.tensors import to_proto
from rtrl.v1 import inference_pb2, inference_pb2_grpc

OBS = np.array([0.1, -0.4, 0.7], dtype=np.float32)
ACTIONS = 4
AC_CONFIG = ModelConfig(arch="mlp", observation_shape=(3,), action_count=ACTIONS, hidden_size=16, head="actor_critic")
CALL_TIMEOUT_S = 10.0


def test_an_actor_critic_checkpoint_answers_with_logits_and_the_log_probability_of_the_sampled_action(
    make_server: Callable[..., InferenceServer], connect: Callable[[InferenceServer], grpc.Channel], publish: Callable
) -> None:
    publish(1, AC_CONFIG)
    server = make_server(algorithm="vtrace")
    server.start()
    stub = inference_pb2_grpc.InferenceServiceStub(connect(server))
    request = inference_pb2.ActRequest(
        observation=to_proto(OBS), gateway_id="test-gateway", frame_index=7, action_count=ACTIONS
    )

    answers = [stub.Act(request, timeout=CALL_TIMEOUT_S) for _ in range(10)]

    for answer in answers:
        assert answer.checkpoint_version == 1
        assert (answer.epsilon, answer.explored) == (0.0, False)
        log_pi = torch.log_softmax(torch.tensor(answer.action_values, dtype=torch.float64), dim=-1)
        assert answer.behaviour_log_prob == pytest.approx(log_pi[answer.action].item(), abs=1e-5)
    status = stub.GetStatus(inference_pb2.InferenceServiceGetStatusRequest(), timeout=CALL_TIMEOUT_S)
    assert (status.checkpoint_version, status.epsilon) == (1, 0.0)
