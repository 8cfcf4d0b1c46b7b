"""The dashboard in-process against two real gateways (ALE Pong), a test replica that heartbeats into a
real Redis registry, and no learner: both games are shown, the replica is found in the registry and in
the gateways' stats, and the unreachable learner is reported, not fatal."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from inference_doubles import ActStreamByAct

from rtrl.local_redis import LocalRedis, free_port
from rtrl.registry import Heartbeat
from rtrl.services.dashboard.server import Dashboard, create_server
from rtrl.services.dashboard.settings import DashboardSettings
from rtrl.services.env_gateway.server import Gateway
from rtrl.services.env_gateway.server import create_server as create_gateway_server
from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings
from rtrl.v1 import inference_pb2, inference_pb2_grpc

CHECKPOINT_VERSION = 7


class AlwaysRight(ActStreamByAct):
    """A replica that answers RIGHT at once from a pretend checkpoint."""

    def Act(self, request, context):
        return inference_pb2.ActResponse(
            action=2, checkpoint_version=CHECKPOINT_VERSION, frame_index=request.frame_index, batch_size=1
        )

    def GetStatus(self, request, context):
        return inference_pb2.InferenceServiceGetStatusResponse(
            replica_id="always-right", checkpoint_version=CHECKPOINT_VERSION, model_arch="none"
        )


@pytest.fixture
def stack() -> Iterator[dict[str, Any]]:
    with LocalRedis() as redis_server:
        replica = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(AlwaysRight(), replica)
        replica_address = f"127.0.0.1:{replica.add_insecure_port('127.0.0.1:0')}"
        replica.start()
        heartbeat = Heartbeat(redis_server.url, replica_address)
        heartbeat.start()
        gateways, servers = [], []
        for name in ("game-a", "game-b"):
            settings = replace(
                GatewaySettings(),
                port=0,
                gateway_id=name,
                env=EnvSpec.parse("ale:Pong"),
                inference_addresses=(replica_address,),
                redis_url=redis_server.url,
                stream=f"test:dashboard:{name}",
            )
            gateway = Gateway(settings)
            server, port = create_gateway_server(settings, gateway)
            server.start()
            gateway.start()
            gateways.append(f"127.0.0.1:{port}")
            servers.append((gateway, server))
        settings = replace(
            DashboardSettings(),
            port=0,
            gateways=tuple(gateways),
            learner_address=f"127.0.0.1:{free_port()}",
            redis_url=redis_server.url,
        )
        dashboard = Dashboard(settings)
        http, http_port = create_server(settings, dashboard)
        dashboard.start()
        threading.Thread(target=http.serve_forever, daemon=True).start()
        try:
            yield {"url": f"http://127.0.0.1:{http_port}/", "replica": replica_address, "gateways": gateways}
        finally:
            dashboard.stop()
            http.shutdown()
            http.server_close()
            for gateway, server in servers:
                gateway.stop()
                server.stop(None).wait()
            heartbeat.stop()
            replica.stop(None).wait()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_two_gateways_are_shown_with_the_replica_from_the_registry_and_the_learner_missing(stack):
    deadline = time.monotonic() + 30
    while True:
        state = get_json(stack["url"] + "api/state")["state"]
        ready = [g for g in state["gateways"] if g["stats"] and g["stats"]["decisions"] > 10]
        if len(ready) == 2 and state["replicas"] and state["replicas"][0]["status"]:
            break
        assert time.monotonic() < deadline, f"the dashboard did not show both gateways within 30 s: {state}"
        time.sleep(0.3)

    assert [g["address"] for g in state["gateways"]] == stack["gateways"]
    assert [g["stats"]["gateway_id"] for g in state["gateways"]] == ["game-a", "game-b"]
    for gateway in state["gateways"]:
        assert gateway["spec"]["action_meanings"][2] == "RIGHT"
        [seen] = gateway["stats"]["replicas"]
        assert (seen["address"], seen["checkpoint_version"]) == (stack["replica"], CHECKPOINT_VERSION)
    [replica] = state["replicas"]
    assert replica["address"] == stack["replica"]
    assert replica["in_registry"] and replica["called_by_gateway"]
    assert replica["status"]["replica_id"] == "always-right"
    assert state["learner"]["status"] is None and state["learner"]["error"].startswith("UNAVAILABLE")

    for index in (0, 1):
        with urllib.request.urlopen(f"{stack['url']}api/frame/{index}.png", timeout=5) as response:
            frame = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
        assert frame.shape == (210, 160, 3)

    # Frames of both games arrive on one event stream, each with its action's name and freshness.
    seen_gateways: set[int] = set()
    with urllib.request.urlopen(stack["url"] + "api/events", timeout=5) as events:
        event = ""
        while len(seen_gateways) < 2:
            line = events.readline().decode()
            if line.startswith("event: "):
                event = line.removeprefix("event: ").strip()
            elif line.startswith("data: ") and event == "frame":
                frame_event = json.loads(line.removeprefix("data: "))
                seen_gateways.add(frame_event["gateway"])
                assert frame_event["action_name"] in {"NOOP", "RIGHT"}
                assert frame_event["fresh"] == (frame_event["action_name"] == "RIGHT")
    assert seen_gateways == {0, 1}
