"""Warm-up calls: a replica enters the gateway's rotation only after answering one call on a blank
observation, so the slow first call that builds its network never costs a decision.

The replicas here are real gRPC servers on loopback whose first Act call takes `BUILD_S` (as a real
replica's first call does while it builds its network), and later ones answer at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from gateway_doubles import Stack
from inference_doubles import ActStreamByAct

from rtrl.local_redis import LocalRedis, free_port
from rtrl.services.env_gateway.replicas import ReplicaPool
from rtrl.tensors import from_proto
from rtrl.v1 import inference_pb2

# Longer than any decision's deadline at 60 fps (the default staleness bound is 6 frames, 100 ms).
BUILD_S = 0.5
SHAPE = (4, 84, 84)
# Generous bound for background work on a busy machine; not a measurement.
BOUND_S = 10.0


class FirstCallBuilds(ActStreamByAct):
    """Answers action 1 at once, except the first call: it waits for `release`, or `BUILD_S` when not held."""

    def __init__(self, hold_first_call: bool) -> None:
        self.observations: list[np.ndarray] = []
        self.first_call_arrived = threading.Event()
        self.release = threading.Event()
        self._hold = hold_first_call
        self._lock = threading.Lock()

    def Act(self, request: inference_pb2.ActRequest, context: grpc.ServicerContext) -> inference_pb2.ActResponse:
        with self._lock:
            first = not self.observations
            self.observations.append(from_proto(request.observation))
        if first:
            self.first_call_arrived.set()
            if self._hold:
                self.release.wait(BOUND_S)
            else:
                time.sleep(BUILD_S)
        return inference_pb2.ActResponse(action=1, checkpoint_version=3, frame_index=request.frame_index, batch_size=1)


Serve = Callable[..., tuple[str, grpc.Server]]


def wait_until(condition: Callable[[], bool]) -> None:
    give_up_at = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < give_up_at, "not reached within the bound"
        time.sleep(0.01)


def test_a_joining_replica_is_out_of_rotation_until_it_answers_its_warm_up_call(
    serve_inference: Serve,
) -> None:
    servicer = FirstCallBuilds(hold_first_call=True)
    address, _ = serve_inference(servicer)
    pool = ReplicaPool("gw", 6, observation_shape=SHAPE)
    try:
        pool.set_members({address: time.monotonic()})
        assert servicer.first_call_arrived.wait(BOUND_S)
        assert pool.views(time.monotonic()) == []
        (stats,) = pool.stats()
        assert stats.warming_up and not stats.excluded
        servicer.release.set()
        wait_until(lambda: len(pool.views(time.monotonic())) == 1)
        (view,) = pool.views(time.monotonic())
        assert (view.address, view.in_flight, view.recently_failed) == (address, 0, False)
        (stats,) = pool.stats()
        # The warm-up is not a decision's call: it counts neither as a request nor as a failure.
        assert (stats.warming_up, stats.requests, stats.failures) == (False, 0, 0)
        (observation,) = servicer.observations
        assert observation.shape == SHAPE and observation.dtype == np.uint8 and not observation.any()
    finally:
        pool.close()


def test_a_replica_not_listening_yet_is_warmed_up_when_it_is_seen_alive(serve_inference: Serve) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    pool = ReplicaPool("gw", 6, observation_shape=SHAPE)
    try:
        pool.set_members({address: time.monotonic()})
        # Connection refused: out of rotation, as after any UNAVAILABLE, and no decision was sent there.
        wait_until(lambda: pool.stats()[0].excluded and not pool.stats()[0].warming_up)
        assert pool.views(time.monotonic()) == []
        servicer = FirstCallBuilds(hold_first_call=False)
        serve_inference(servicer, port)

        def seen_alive_and_in_rotation() -> bool:
            # As membership hands the pool its replicas: again and again, each time seen alive now.
            pool.set_members({address: time.monotonic()})
            time.sleep(0.1)
            return len(pool.views(time.monotonic())) == 1

        wait_until(seen_alive_and_in_rotation)
        assert len(servicer.observations) == 1
        (stats,) = pool.stats()
        assert (stats.excluded, stats.requests, stats.failures) == (False, 0, 0)
    finally:
        pool.close()


def test_the_gateway_loses_no_call_to_a_replica_building_its_network(
    serve_inference: Serve, local_redis: LocalRedis, start_gateway: Callable[..., Stack]
) -> None:
    servicer = FirstCallBuilds(hold_first_call=False)
    address, _ = serve_inference(servicer)
    stack = start_gateway(local_redis.url, [address])
    gateway = stack.gateway
    wait_until(lambda: gateway.stats().decisions_fresh >= 30)
    stats = gateway.stats()
    # Without the warm-up the first decision's call would wait out the BUILD_S build and fail.
    assert stats.requests_failed == 0 and stats.replies_late == 0
    (replica,) = stats.replicas
    assert replica.failures == 0 and replica.replies == replica.requests - replica.in_flight
    warm_up = servicer.observations[0]
    assert list(warm_up.shape) == list(gateway.spec().observation_shape) and not warm_up.any()


def test_the_game_clock_starts_once_a_replica_is_warm_so_even_the_first_decision_is_fresh(
    serve_inference: Serve, local_redis: LocalRedis, start_gateway: Callable[..., Stack]
) -> None:
    servicer = FirstCallBuilds(hold_first_call=False)
    address, _ = serve_inference(servicer)
    gateway = start_gateway(local_redis.url, [address]).gateway
    wait_until(lambda: gateway.stats().decisions >= 30)
    stats = gateway.stats()
    # Started at once, the clock's first decisions would fall back for the BUILD_S of the warm-up call.
    assert stats.decisions_fallback == 0, stats


def test_waiting_for_a_warm_replica_ends_when_no_replica_is_warming_up_any_more() -> None:
    pool = ReplicaPool("gw", 6, observation_shape=SHAPE)
    try:
        pool.set_members({f"127.0.0.1:{free_port()}": time.monotonic()})  # nothing listens there
        started_s = time.monotonic()
        assert pool.wait_for_rotation(BOUND_S, threading.Event()) is False
        # Its warm-up failed (connection refused): nothing left to wait for, long before the bound.
        assert time.monotonic() - started_s < BOUND_S / 2
    finally:
        pool.close()


def test_a_replica_unavailable_at_each_warm_up_is_said_once_and_tried_each_time_it_is_seen_alive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="rtrl.services.env_gateway.replicas")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    pool = ReplicaPool("gw", 6, observation_shape=SHAPE)
    try:
        for _ in range(3):
            pool.set_members({address: time.monotonic()})  # seen alive: registered, or a heartbeat
            wait_until(lambda: not pool.stats()[0].warming_up)
            (stats,) = pool.stats()
            assert stats.excluded and pool.views(time.monotonic()) == []
        unavailable = [
            r for r in caplog.records if r.getMessage().endswith("warmed up") and "unavailable" in r.getMessage()
        ]
        assert [record.levelno for record in unavailable] == [logging.INFO, logging.DEBUG, logging.DEBUG]
    finally:
        pool.close()


def test_a_stop_requested_while_the_gateway_waits_for_a_warm_replica_ends_the_wait_at_once(
    serve_inference: Serve, local_redis: LocalRedis, start_gateway: Callable[..., Stack]
) -> None:
    servicer = FirstCallBuilds(hold_first_call=True)
    address, _ = serve_inference(servicer)
    gateway = start_gateway(local_redis.url, [address], started=False).gateway
    starting = threading.Thread(target=gateway.start)
    try:
        starting.start()
        assert servicer.first_call_arrived.wait(BOUND_S)
        requested_s = time.monotonic()
        gateway.stop_requested.set()  # what SIGTERM does in `serve`
        starting.join(BOUND_S)
        # Not the warm-up's 10 s timeout: the wait ends at once, and the game clock never starts.
        assert not starting.is_alive() and time.monotonic() - requested_s < 1.0
        assert not gateway.clock.ticking.is_set() and gateway.clock.frame == 0
    finally:
        servicer.release.set()
