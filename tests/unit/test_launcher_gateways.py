"""`rtrl up --gateways N` without starting anything: names, ports, the clash check, the combined final
stats and the status line over several gateways."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtrl import launcher
from rtrl.launcher import LaunchError, Stack, UpOptions, combined_gateway_stats, gateway_names, metrics_ports
from rtrl.status import StackStatus, status_line
from rtrl.v1 import env_gateway_pb2


def test_one_gateway_keeps_its_plain_name_and_several_are_numbered() -> None:
    assert gateway_names(1) == ["gateway"]
    assert gateway_names(3) == ["gateway-0", "gateway-1", "gateway-2"]


def test_metrics_ports_from_a_base_give_the_gateways_the_first_ones() -> None:
    ports = metrics_ports(UpOptions(gateways=2, inference_replicas=1, metrics_base_port=9100))
    assert ports == {"gateway-0": 9100, "gateway-1": 9101, "learner": 9102, "inference-0": 9103}


def test_chosen_ports_avoid_the_ports_given_and_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    # free_port only says a port is free now: the learner's given port is free until the learner binds it.
    draws = iter([50052, 30001, 30001, 30002, 50061, 30003])
    monkeypatch.setattr(launcher, "free_port", lambda host="127.0.0.1": next(draws))
    taken = {50051, 50052, 50061}
    ports = metrics_ports(UpOptions(inference_replicas=1), taken)
    assert ports == {"gateway": 30001, "learner": 30002, "inference-0": 30003}
    assert taken == {50051, 50052, 50061, 30001, 30002, 30003}  # so that Redis, chosen later, avoids them too


def test_gateways_get_distinct_ports_with_the_first_on_gateway_port(tmp_path: Path) -> None:
    stack = Stack(UpOptions(gateways=4, gateway_port=41000, run_dir=tmp_path))
    assert stack.gateway_ports[0] == 41000
    assert len(set(stack.gateway_ports)) == 4
    assert stack.addresses().gateways == [f"127.0.0.1:{port}" for port in stack.gateway_ports]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (UpOptions(gateway_port=50052, learner_port=50052), "--learner-port and --gateway-port are both port 50052"),
        (UpOptions(learner_port=50061), "--inference-base-port (replica 0) and --learner-port are both port 50061"),
        (UpOptions(dashboard_port=50051), "--dashboard-port and --gateway-port are both port 50051"),
        (UpOptions(gateways=0), "--gateways must be at least 1"),
        (UpOptions(gateways=2, gateway_env={2: {"DISPLAY": ":3"}}), "names gateway 2, but gateways are 0..1"),
    ],
)
def test_a_run_that_cannot_work_is_refused_before_anything_starts(
    tmp_path: Path, options: UpOptions, message: str
) -> None:
    options.run_dir = tmp_path
    stack = Stack(options)
    with pytest.raises(LaunchError) as raised:
        stack.start()
    assert message in str(raised.value)
    assert stack.redis is None and stack.learner is None  # nothing was started


def test_the_final_stats_of_one_gateway_are_its_own_and_of_several_their_totals() -> None:
    one = {"frames": "100", "decisions": "50", "decisions_fresh": "49", "coverage": 0.98, "episodes": "2"}
    assert combined_gateway_stats([one]) is one
    assert combined_gateway_stats([None]) is None
    other = {"frames": "300", "decisions": "150", "decisions_fresh": "150", "coverage": 1.0, "episodes": "4"}
    combined = combined_gateway_stats([one, None, other])
    assert combined is not None
    assert (combined["frames"], combined["decisions"], combined["episodes"], combined["gateways"]) == (400, 200, 6, 2)
    assert combined["coverage"] == pytest.approx(199 / 200)


def stats(fps: float, decisions: int, fresh: int, episodes: int, mean: float) -> env_gateway_pb2.GetStatsResponse:
    return env_gateway_pb2.GetStatsResponse(
        measured_frame_rate_hz=fps,
        decisions=decisions,
        decisions_fresh=fresh,
        coverage=fresh / decisions,
        episodes=episodes,
        mean_episode_return=mean,
        uptime_s=10,
    )


def test_the_status_line_adds_up_the_gateways_and_says_which_did_not_answer() -> None:
    status = StackStatus(
        gateways={
            "a:1": stats(60.0, 100, 100, 1, 10.0),
            "b:2": stats(59.0, 300, 297, 3, 20.0),
            "c:3": None,
        }
    )
    line = status_line(status)
    assert line.startswith("2/3 gateways |")
    assert "119.0 fps" in line and "coverage  99.25% of 400" in line
    assert "episodes 4 mean +17.5" in line and "1 gateway: no answer" in line
    assert "last" not in line  # the last return of which gateway? Not said with several.
    single = status_line(StackStatus(gateways={"a:1": stats(60.0, 100, 100, 1, 10.0)}))
    assert "gateways" not in single and "episodes 1 last" in single
