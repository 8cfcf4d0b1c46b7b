"""The ActStream transport: one long-lived gRPC stream of requests and answers per replica.

`put` queues the request, gRPC's thread for the stream writes it, and a thread of the transport's own
reads the answers. A message on an open stream skips a call's set-up, about 0.4 ms of each round trip
against a unary Act (docs/transports.md).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc

from rtrl.services.env_gateway.transports.base import Endpoint, OnAnswer, OnEnd, Transport
from rtrl.v1 import inference_pb2


class ActStream(Transport):
    name = "ActStream"

    def __init__(self, endpoint: Endpoint, on_answer: OnAnswer, on_end: OnEnd) -> None:
        super().__init__()
        self._stub = endpoint.stub
        self._requests: queue.SimpleQueue[inference_pb2.ActStreamRequest | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._answers: Any = None
        """The call, once started: an iterator of the answers that can be cancelled."""
        self._closed = False
        name = f"rtrl-act-stream {endpoint.address}"
        self._reader = threading.Thread(target=self._read, args=(on_answer, on_end), name=name, daemon=True)

    def start(self) -> None:
        """Opens the stream (its requests go out as they are put) and its reader."""
        with self._lock:
            self._answers = self._stub.ActStream(iter(self._requests.get, None))
            if self._closed:
                self._answers.cancel()
        self._reader.start()

    def put(self, request: inference_pb2.ActStreamRequest) -> None:
        self._requests.put(request)

    def close(self) -> None:
        """Cancels the stream; its reader ends with CANCELLED."""
        with self._lock:
            self._closed = True
            answers = self._answers
        self._requests.put(None)
        if answers is not None:
            answers.cancel()

    def _read(self, on_answer: OnAnswer, on_end: OnEnd) -> None:
        assert self._answers is not None
        try:
            for answer in self._answers:
                on_answer(self, answer)
        except grpc.RpcError as error:
            on_end(self, error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN)
            return
        # The replica ended the stream without an error: it is shutting down.
        on_end(self, grpc.StatusCode.UNAVAILABLE)
