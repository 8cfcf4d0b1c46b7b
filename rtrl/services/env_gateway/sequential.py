"""The sequential baseline's wiring (RTRL_INTERACTION=sequential on the realtime clock): act -> learn -> act.

`sequential_dispatcher` builds the `SequentialDispatcher` (dispatcher.py) that replaces the realtime
gateway's staggered `Dispatcher`, and the `LearnerTrainer` it calls the learner's Train through.
`LearnerTrainer` is the boundary to the learner: gRPC errors become `TrainError` here, so dispatcher.py
never sees grpc. The realtime gateway (server.py) builds neither; it is the default path.
"""

from __future__ import annotations

import grpc

from rtrl import grpc_util
from rtrl.security import SecuritySettings
from rtrl.services.env_gateway.clock import ActionMailbox
from rtrl.services.env_gateway.dispatcher import ReplicaLink, SequentialDispatcher, TrainError, TrainResult
from rtrl.services.env_gateway.preprocess import ObservationPreprocessor
from rtrl.services.env_gateway.settings import GatewaySettings
from rtrl.v1 import learner_pb2, learner_pb2_grpc


class LearnerTrainer:
    """Calls LearnerService/Train for one gateway (sequential interaction); errors become TrainError."""

    def __init__(
        self, address: str, gateway_id: str, updates: int, timeout_s: float, security: SecuritySettings | None = None
    ) -> None:
        self.address = address
        self._gateway_id = gateway_id
        self._updates = updates
        self._timeout_s = timeout_s
        self._channel = grpc_util.create_channel(address, security)
        self._stub = learner_pb2_grpc.LearnerServiceStub(self._channel)

    def __call__(self, through_seq: int) -> TrainResult:
        request = learner_pb2.TrainRequest(gateway_id=self._gateway_id, through_seq=through_seq, updates=self._updates)
        try:
            response = self._stub.Train(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise TrainError(
                f"the learner at {self.address} did not train through transition {through_seq} "
                f"({code.name}: {details}); check that it runs with RTRL_LEARNER_MODE=sequential"
            ) from error
        return TrainResult(response.updates, response.train_ms, response.checkpoint_version)

    def close(self) -> None:
        self._channel.close()


def sequential_dispatcher(
    settings: GatewaySettings,
    preprocessor: ObservationPreprocessor,
    mailbox: ActionMailbox,
    replicas: ReplicaLink,
    frame_rate_hz: float,
) -> tuple[SequentialDispatcher, LearnerTrainer]:
    """The dispatcher of the sequential baseline and the trainer it calls; the gateway closes the trainer."""
    trainer = LearnerTrainer(
        settings.learner_address,
        settings.gateway_id,
        settings.sequential_updates,
        settings.sequential_train_timeout_s,
        security=settings.security,
    )
    dispatcher = SequentialDispatcher(
        preprocessor,
        mailbox,
        replicas,
        trainer,
        frame_period_s=1.0 / frame_rate_hz,
        max_staleness_frames=settings.max_staleness_frames,
        decision_interval_frames=settings.decision_interval_frames,
    )
    return dispatcher, trainer
