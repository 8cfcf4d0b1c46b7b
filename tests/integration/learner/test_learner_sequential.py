"""Sequential mode (act -> learn -> act): the learner trains only when Train asks, after the transition
is consumed; and a whole sequential gateway, on real ALE Pong, acting only between learner updates."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest
from inference_doubles import ActStreamByAct

from rtrl.services.env_gateway.server import Gateway
from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings
from rtrl.services.learner.loop import Learner
from rtrl.services.learner.server import create_server
from rtrl.services.learner.settings import LearnerSettings
from rtrl.v1 import inference_pb2, inference_pb2_grpc, learner_pb2, learner_pb2_grpc

TIMEOUT_S = 30.0


@dataclass
class Served:
    learner: Learner
    stub: learner_pb2_grpc.LearnerServiceStub
    address: str


@pytest.fixture
def serve_learner() -> Iterator[Callable[[LearnerSettings], Served]]:
    running: list[tuple[Learner, grpc.Server, grpc.Channel]] = []

    def serve(settings: LearnerSettings) -> Served:
        learner = Learner(settings)
        server, port = create_server(settings, learner)
        server.start()
        learner.start()
        address = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(address)
        running.append((learner, server, channel))
        return Served(learner, learner_pb2_grpc.LearnerServiceStub(channel), address)

    yield serve
    for learner, server, channel in running:
        learner.stop()
        channel.close()
        server.stop(0).wait()


def train(stub: learner_pb2_grpc.LearnerServiceStub, through_seq: int, timeout_s: float = TIMEOUT_S, **kw: Any):
    request = learner_pb2.TrainRequest(gateway_id="gw-0", through_seq=through_seq, **kw)
    return stub.Train(request, timeout=timeout_s)


def test_sequential_learner_trains_only_when_asked_and_only_after_the_transition_is_consumed(
    make_settings, serve_learner, publish, transition, wait_until
) -> None:
    served = serve_learner(make_settings(mode="sequential", sequential_updates=2))
    learner, stub = served.learner, served.stub
    publish([transition(seq) for seq in range(40)])
    wait_until(lambda: learner.status().transitions_consumed == 40, "the stream to be consumed")
    assert learner.status().updates == 0  # it never trains by itself

    answer = train(stub, through_seq=39, updates=3)
    assert (answer.updates, answer.updates_total) == (3, 3)
    assert answer.train_ms > 0
    assert train(stub, through_seq=10).updates == 2  # RTRL_SEQUENTIAL_UPDATES when the call says 0
    assert learner.status().updates == 5

    with pytest.raises(grpc.RpcError) as refused:
        train(stub, through_seq=45, timeout_s=0.5)
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    answers: list[learner_pb2.TrainResponse] = []
    waiting = threading.Thread(target=lambda: answers.append(train(stub, through_seq=45, updates=1)))
    waiting.start()
    publish([transition(seq) for seq in range(40, 46)])
    waiting.join(TIMEOUT_S)
    assert answers and answers[0].updates == 1 and answers[0].wait_ms > 0
    assert learner.status().train_calls == 3


def test_train_is_refused_by_a_learner_that_trains_without_pause(make_settings, serve_learner) -> None:
    stub = serve_learner(make_settings()).stub
    with pytest.raises(grpc.RpcError) as refused:
        train(stub, through_seq=0)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "RTRL_LEARNER_MODE=sequential" in str(refused.value.details())


class SlowInference(ActStreamByAct):
    """Answers every Act with action 2 after `delay_s`, as a policy that takes that long would."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def Act(self, request: inference_pb2.ActRequest, context: grpc.ServicerContext) -> inference_pb2.ActResponse:
        threading.Event().wait(self.delay_s)
        return inference_pb2.ActResponse(action=2, checkpoint_version=0, frame_index=request.frame_index)


def test_sequential_gateway_acts_once_per_act_learn_cycle_and_the_game_runs_on_meanwhile(
    redis_server, stream_name, make_settings, serve_learner
) -> None:
    served = serve_learner(make_settings(mode="sequential", sequential_updates=4))
    learner = served.learner
    replica = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(SlowInference(0.03), replica)
    replica_port = replica.add_insecure_port("127.0.0.1:0")
    replica.start()
    settings = replace(
        GatewaySettings(),
        port=0,
        gateway_id="gw-seq",
        env=EnvSpec.parse("ale:Pong"),
        decision_interval_frames=1,
        lead_frames=1,
        max_staleness_frames=6,
        inference_addresses=(f"127.0.0.1:{replica_port}",),
        redis_url=redis_server.url,
        stream=stream_name,
        interaction="sequential",
        learner_address=served.address,
    )
    gateway = Gateway(settings)
    try:
        gateway.start()
        threading.Event().wait(4.0)
        stats = gateway.stats()
    finally:
        gateway.stop()
        replica.stop(0).wait()
    assert stats.interaction == "sequential"
    assert stats.frames >= 200  # the clock ran at 60 fps throughout
    assert stats.sequential_cycles >= 5
    assert stats.train_failures == 0
    assert learner.status().train_calls >= stats.sequential_cycles
    # One fresh action per cycle of at least one 30 ms call plus a learner update: a small share of frames.
    assert stats.decisions_fresh <= stats.sequential_cycles + 1
    assert stats.coverage < 0.5
