"""`rtrl up --gateways 2`: two games at once, each its own gateway process with its own id and port, sharing
the replicas, the stream and the learner; one gateway's own setting (`--gateway-set`) reaches it alone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rtrl.local_redis import free_port, free_ports_in_a_row

pytestmark = pytest.mark.e2e

RUN_SECONDS = 20


def test_two_gateways_play_at_once_into_one_learner(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    command = [
        sys.executable, "-m", "rtrl.cli", "up",
        "--env", "gym:CartPole-v1",
        "--duration", str(RUN_SECONDS),
        "--gateways", "2",
        # Gateway 1 alone decides every second frame: its own setting, not gateway 0's.
        "--gateway-set", "1:RTRL_DECISION_INTERVAL_FRAMES=2",
        "--inference-replicas", "2",
        "--no-dashboard",
        "--gateway-port", str(free_port()),
        "--learner-port", str(free_port()),
        "--inference-base-port", str(free_ports_in_a_row(2)),
        "--checkpoint-dir", str(tmp_path / "checkpoints"),
        "--run-dir", str(tmp_path / "runs"),
        "--summary-json", str(summary_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(summary_path.read_text())

    addresses = summary["addresses"]["gateways"]
    assert len(set(addresses)) == 2
    finals = [summary["gateways"][address] for address in addresses]
    assert [f["gateway_id"] for f in finals] == ["gateway-0", "gateway-1"]
    for final in finals:
        assert int(final["decisions"]) > 100 and final["coverage"] > 0.9, final
        assert int(final["transitions_dropped"]) == 0
    # One decision per frame on gateway 0, one per two frames on gateway 1.
    ratios = [int(f["decisions"]) / int(f["frames"]) for f in finals]
    assert ratios[0] > 0.9 and 0.4 < ratios[1] < 0.6, ratios

    total = summary["gateway"]
    assert total["gateways"] == 2
    assert total["decisions"] == sum(int(f["decisions"]) for f in finals)
    # The one learner consumed what both published: the run drains the stream before it stops.
    assert int(summary["learner"]["transitions_consumed"]) == total["transitions_published"]

    episode_log = next((tmp_path / "runs").glob("*/episodes.jsonl"))
    episodes = [json.loads(line) for line in episode_log.read_text().splitlines()]
    per_gateway = Counter(e["gateway_id"] for e in episodes)
    assert set(per_gateway) == {"gateway-0", "gateway-1"}, per_gateway
    assert "2/2 gateways" in result.stdout
