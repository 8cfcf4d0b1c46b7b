"""Membership: the registry and the static list merged, and a replica dropped after UNAVAILABLE coming back."""

from __future__ import annotations

import grpc

from rtrl.services.env_gateway.membership import REGISTRY_SOURCE, STATIC_SOURCE, Membership
from rtrl.services.env_gateway.replicas import ReplicaPool
from rtrl.services.env_gateway.transports import Call
from rtrl.v1 import inference_pb2


def complete(
    pool: ReplicaPool,
    address: str,
    sent_s: float,
    response: inference_pb2.ActResponse | None,
    code: grpc.StatusCode | None,
) -> None:
    """What the pool does when a call to `address` sent at `sent_s` ends with `response` or `code`."""
    call = Call(inference_pb2.ActRequest(), sent_s, float("inf"), lambda outcome: None)
    pool._complete(pool._replicas[address], call, response, code)


def pool_after_a_failed_call(address: str, code: grpc.StatusCode) -> ReplicaPool:
    """A pool of one replica whose one call in flight (sent at 9.9 s, now 10 s) failed with `code`."""
    pool = ReplicaPool("gw", 4, now_s=lambda: 10.0)
    pool.set_members({address: 9.5})
    pool._replicas[address].in_flight = 1
    complete(pool, address, 9.9, None, code)
    return pool


def test_sources_are_merged_with_the_latest_sighting_of_each_address() -> None:
    handed: list[dict[str, float]] = []
    membership = Membership(handed.append)
    membership.update(STATIC_SOURCE, {"10.0.0.2:50061": 5.0})
    membership.update(REGISTRY_SOURCE, {"10.0.0.2:50061": 7.0, "10.0.0.3:50061": 6.0})
    assert handed[-1] == {"10.0.0.2:50061": 7.0, "10.0.0.3:50061": 6.0}
    membership.update(REGISTRY_SOURCE, {})  # both registered replicas stopped heartbeating
    assert handed[-1] == {"10.0.0.2:50061": 5.0}


def test_static_addresses_are_seen_alive_when_they_resolve() -> None:
    handed: list[dict[str, float]] = []
    membership = Membership(handed.append)
    membership.static_addresses(now_s=lambda: 42.0)(["a:1", "b:2"])
    assert handed[-1] == {"a:1": 42.0, "b:2": 42.0}


def test_unavailable_replica_leaves_rotation_until_it_is_seen_alive_after_the_failure() -> None:
    now = [10.0]
    pool = ReplicaPool("gw", 4, now_s=lambda: now[0])
    try:
        pool.set_members({"a:1": 9.0, "b:2": 9.5})
        assert [v.address for v in pool.views(now[0])] == ["a:1", "b:2"]
        # What ReplicaPool does when a call to b fails with UNAVAILABLE (e.g. the process was killed).
        pool._replicas["b:2"].in_flight = 1
        complete(pool, "b:2", 9.9, None, grpc.StatusCode.UNAVAILABLE)
        assert [v.address for v in pool.views(now[0])] == ["a:1"]
        pool.set_members({"a:1": 10.2, "b:2": 9.8})  # b's last heartbeat predates the failure
        assert [v.address for v in pool.views(now[0])] == ["a:1"]
        assert [s.excluded for s in pool.stats()] == [False, True]
        pool.set_members({"a:1": 10.4, "b:2": 10.3})  # a heartbeat after the failure: b is back
        assert [v.address for v in pool.views(now[0])] == ["a:1", "b:2"]
    finally:
        pool.close()


def test_nothing_is_sent_to_a_replica_out_of_rotation_and_no_transport_opens_for_it() -> None:
    pool = pool_after_a_failed_call("b:2", grpc.StatusCode.UNAVAILABLE)
    try:
        outcomes: list[object] = []

        sent = pool.send("b:2", inference_pb2.ActRequest(), float("inf"), outcomes.append)

        replica = pool._replicas["b:2"]
        assert not sent and replica.transport is None
        assert (replica.in_flight, replica.measures.requests, outcomes) == (0, 0, [])
    finally:
        pool.close()


def test_a_call_that_failed_otherwise_keeps_the_replica_in_rotation_as_a_second_choice() -> None:
    pool = pool_after_a_failed_call("a:1", grpc.StatusCode.DEADLINE_EXCEEDED)
    try:
        (view,) = pool.views(10.0)
        assert view.recently_failed and view.in_flight == 0
    finally:
        pool.close()


def test_an_answer_after_a_failure_makes_the_replica_a_first_choice_again() -> None:
    """Only the last call counts: a replica that answered since its failure is as good as any."""
    pool = ReplicaPool("gw", 4, now_s=lambda: 10.0)
    try:
        pool.set_members({"a:1": 9.0})
        replica = pool._replicas["a:1"]
        replica.in_flight = 2
        complete(pool, "a:1", 9.8, None, grpc.StatusCode.DEADLINE_EXCEEDED)
        complete(pool, "a:1", 9.9, inference_pb2.ActResponse(action=1), None)
        (view,) = pool.views(10.0)
        assert not view.recently_failed
    finally:
        pool.close()
