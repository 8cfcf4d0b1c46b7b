"""The dashboard's profile table against a real gateway on the test ROM (tests/fixtures/gbrom/counter_gateway.py):
the variables and reward terms GetStats reports reach /api/state, update, and agree with each other."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from file_modules import load_file

from rtrl.v1 import env_gateway_pb2, env_gateway_pb2_grpc

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "gbrom" / "counter_gateway.py"


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[dict[str, str]]:
    with load_file("counter_gateway", FIXTURE).watched_counter_gateway(tmp_path) as addresses:
        yield addresses


def gateway_state(url: str) -> dict[str, Any] | None:
    """The gateway's stats as the dashboard shows them (None before its first answer)."""
    with urllib.request.urlopen(url + "api/state", timeout=5) as response:
        gateways = json.loads(response.read())["state"]["gateways"]
    return gateways[0]["stats"] if gateways else None


def test_the_dashboard_shows_the_profiles_variables_and_terms_as_get_stats_reports_them(watched) -> None:
    deadline = time.monotonic() + 30
    while not ((stats := gateway_state(watched["url"])) and stats["last_episode_end_rules"]):
        assert time.monotonic() < deadline, f"no episode ended by a rule on the dashboard within 30 s: {stats}"
        time.sleep(0.2)
    # The 1 s time cap ended an episode (no START pressed, so not the equals rule).
    assert stats["last_episode_end_rules"] == ["time_cap"]
    variables = {v["name"]: v["value"] for v in stats["variables"]}
    assert list(variables) == ["buttons", "counter", "game_over"]
    assert variables["buttons"] == 1 and variables["game_over"] == 0  # the fallback holds A
    [term] = stats["reward_terms"]
    assert term["label"] == "delta(counter)" and term["last_frame_reward"] in (0.0, 0.5)
    # The counter counts held frames from 0 at the reset and the term pays half of each: the two agree up to
    # the one frame the gateway may step between reading them.
    assert abs(term["episode_reward"] - 0.5 * variables["counter"]) <= 0.5

    channel = grpc.insecure_channel(watched["gateway"])
    try:
        direct = env_gateway_pb2_grpc.EnvGatewayServiceStub(channel).GetStats(
            env_gateway_pb2.GetStatsRequest(), timeout=5
        )
    finally:
        channel.close()
    assert [(v.name, v.known) for v in direct.variables] == [(name, True) for name in variables]
    assert [t.label for t in direct.reward_terms] == ["delta(counter)"]

    # It is live: later polls show other counts.
    counters = {variables["counter"]}
    deadline = time.monotonic() + 10
    while len(counters) < 3:
        assert time.monotonic() < deadline, f"the counter shown did not change: {counters}"
        time.sleep(0.25)
        later = gateway_state(watched["url"])
        assert later is not None
        counters.add({v["name"]: v["value"] for v in later["variables"]}["counter"])
