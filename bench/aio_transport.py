"""A transport measured against the gateway's own (bench/staggering.py's zero-cost rows): every
replica's ActStream on one `grpc.aio` event loop, on asyncio's loop or on uvloop's.

It plugs into the gateway's transport seam (rtrl/services/env_gateway/transports/) through
`ReplicaPool.open_transport`: `put` hands the request to the loop (`call_soon_threadsafe`), a task per
replica writes it on the stream, and another reads the answers and calls the pool back on the loop's
thread. docs/transports.md has the figures and why this one is not among the gateway's transports.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import grpc.aio

from rtrl.services.env_gateway.transports import Endpoint, OnAnswer, OnEnd, Transport
from rtrl.v1 import inference_pb2, inference_pb2_grpc


class AioLoop:
    """One event loop on a thread of its own; `open` is a `ReplicaPool.open_transport`."""

    def __init__(self, use_uvloop: bool) -> None:
        if use_uvloop:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.name = "grpc.aio+uvloop" if use_uvloop else "grpc.aio"
        threading.Thread(target=self.loop.run_forever, name=f"rtrl-{self.name}", daemon=True).start()

    def open(self, endpoint: Endpoint, on_answer: OnAnswer, on_end: OnEnd) -> Transport:
        return AioStream(self, endpoint.address, on_answer, on_end)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class AioStream(Transport):
    """One replica's ActStream on the loop's own channel to it."""

    def __init__(self, owner: AioLoop, address: str, on_answer: OnAnswer, on_end: OnEnd) -> None:
        super().__init__()
        self.name = owner.name
        self._loop = owner.loop
        self._requests: asyncio.Queue[inference_pb2.ActStreamRequest | None] | None = None
        self._early: list[inference_pb2.ActStreamRequest | None] = []
        self._run_args = (address, on_answer, on_end)

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._run(*self._run_args), self._loop)

    def put(self, request: inference_pb2.ActStreamRequest) -> None:
        self._loop.call_soon_threadsafe(self._put_on_loop, request)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._put_on_loop, None)

    def _put_on_loop(self, request: inference_pb2.ActStreamRequest | None) -> None:
        if self._requests is None:
            self._early.append(request)
        else:
            self._requests.put_nowait(request)

    async def _run(self, address: str, on_answer: OnAnswer, on_end: OnEnd) -> None:
        self._requests = asyncio.Queue()
        for request in self._early:
            self._requests.put_nowait(request)
        channel = grpc.aio.insecure_channel(address)
        call = inference_pb2_grpc.InferenceServiceStub(channel).ActStream()
        writer = asyncio.ensure_future(self._write(call))
        code = grpc.StatusCode.UNAVAILABLE  # the replica ended the stream without an error
        try:
            while True:
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    break
                on_answer(self, answer)
        except grpc.aio.AioRpcError as error:
            code = error.code()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
        writer.cancel()
        await channel.close()
        on_end(self, code)

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        assert self._requests is not None
        while True:
            request = await self._requests.get()
            if request is None:
                call.cancel()
                return
            await call.write(request)
