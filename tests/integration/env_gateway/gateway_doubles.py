"""Test doubles and a check for the gateway's integration tests.

`FakeInference` is a real rtrl.v1.InferenceService servicer (the real replica is built elsewhere):
it answers Act and ActStream after a configurable delay with a fixed action and checkpoint version.
`assert_on_schedule` checks a running clock's frame count against its uptime.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from rtrl.services.env_gateway.clock import CATCH_UP_LIMIT_FRAMES, RealtimeClock
from rtrl.services.env_gateway.server import Gateway
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.tensors import from_proto
from rtrl.v1 import inference_pb2, inference_pb2_grpc


class FakeInference(inference_pb2_grpc.InferenceServiceServicer):
    """Answers every Act and ActStream request after `delay_s` with `action`; records the frame indices it saw.

    `policy`, when given, chooses each answer's action from the observation and `delay_of` its delay from
    the frame index instead."""

    def __init__(
        self,
        delay_s: float,
        action: int,
        checkpoint_version: int,
        policy: Callable[[np.ndarray], int] | None = None,
        delay_of: Callable[[int], float] | None = None,
    ) -> None:
        self.delay_s = delay_s
        self.action = action
        self.policy = policy
        self.delay_of = delay_of
        self.checkpoint_version = checkpoint_version
        self.frame_indices: list[int] = []
        self.observation_shapes: set[tuple[int, ...]] = set()
        self.observation_dtypes: set[np.dtype] = set()

    def Act(self, request: inference_pb2.ActRequest, context: grpc.ServicerContext) -> inference_pb2.ActResponse:
        return self._answer(request, self._ended(context))

    def ActStream(
        self, requests: Iterator[inference_pb2.ActStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.ActStreamResponse]:
        ended = self._ended(context)
        for message in requests:
            yield inference_pb2.ActStreamResponse(response=self._answer(message.request, ended))

    @staticmethod
    def _ended(context: grpc.ServicerContext) -> threading.Event:
        """Set when the call ends: the caller gave up, or the server stops. A hung replica holds no thread."""
        ended = threading.Event()
        context.add_callback(ended.set)
        return ended

    def _answer(self, request: inference_pb2.ActRequest, ended: threading.Event) -> inference_pb2.ActResponse:
        self.frame_indices.append(request.frame_index)
        observation = from_proto(request.observation)
        self.observation_shapes.add(observation.shape)
        self.observation_dtypes.add(observation.dtype)
        delay_s = self.delay_s if self.delay_of is None else self.delay_of(request.frame_index)
        if delay_s:
            ended.wait(delay_s)
        return inference_pb2.ActResponse(
            action=self.action if self.policy is None else self.policy(observation),
            behaviour_log_prob=-0.05,
            checkpoint_version=self.checkpoint_version,
            frame_index=request.frame_index,
        )


@dataclass
class Replica:
    address: str
    servicer: FakeInference
    server: grpc.Server


@dataclass
class Stack:
    gateway: Gateway
    server: grpc.Server
    address: str
    settings: GatewaySettings


# A machine that holds the clock back beyond CATCH_UP_LIMIT_FRAMES makes it give that time up; a run may
# lose this share of its frames so, and no more. One stall of the whole test process was measured at
# 95 ms alone and 421 ms with three CPU hogs on its core (the first GetStats, importing numpy.ma).
MOST_TIME_GIVEN_UP = 0.2


def assert_on_schedule(clock: RealtimeClock, frames: int, uptime_s: float, rate_hz: float) -> None:
    """`frames` produced in `uptime_s` (read together, as GetStats does) keep an absolute schedule at `rate_hz`
    (frame f due f / rate after frame 0; clock.py, Schedule): never ahead of it, and at most
    CATCH_UP_LIMIT_FRAMES behind plus the tick under way, unless the machine held the clock back further
    (`schedule_moves`, read after `frames`): then it gave that time up, at most `MOST_TIME_GIVEN_UP` of it.

    A band around the rate does not tell these apart: 5% of a 3 s run is 150 ms, less than one stall of a
    busy machine, yet wider than the 3 frames a clock on schedule can be off by."""
    due = math.floor(uptime_s * rate_hz) + 1
    # +1: the tick that ended between reading the uptime and the count.
    assert frames <= due + 1, f"{frames} frames in {uptime_s:.3f} s: ahead of the schedule's {due}"
    if clock.schedule_moves == 0:
        least = due - CATCH_UP_LIMIT_FRAMES - 1
    else:
        least = math.floor((1.0 - MOST_TIME_GIVEN_UP) * due)
    assert frames >= least, (
        f"{frames} frames in {uptime_s:.3f} s, {due} due and at least {least} expected "
        f"({clock.schedule_moves} schedule moves)"
    )
