"""It learns, through the running system: `rtrl up` trains PPO on CartPole-v1 from its state at 50 fps for a
few minutes, and the final checkpoint, played greedily by `rtrl play`, balances the pole far longer than a
random policy on the same seed.

The run is the product as a user starts it: embedded Redis, the learner, two inference replicas and the
gateway as processes, the realtime clock never waiting for learning. The bar is 3 times the random
policy's mean return (about 22 on CartPole-v1); PPO with these settings passes it with a wide margin
(bench/learning_live.py measures the whole curve), so a failure means learning through the services broke.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rtrl.cpus import usable_cpus
from rtrl.local_redis import free_port, free_ports_in_a_row
from rtrl.services.env_gateway.backends import make_backend
from rtrl.services.env_gateway.settings import GatewaySettings

pytestmark = pytest.mark.e2e

TRAIN_SECONDS = 180
EVALUATION_EPISODES = 20
SEED = 0
# PPO's settings for CartPole from bench/learning_live.py, and the realtime game's repeat-last fallback.
SETTINGS = {
    "RTRL_ALGORITHM": "ppo",
    "RTRL_SEED": str(SEED),
    "RTRL_FALLBACK_POLICY": "repeat_last",
    "RTRL_FRAME_STACK": "1",
    "RTRL_PPO_UNROLL_LENGTH": "32",
    "RTRL_PPO_BATCH_UNROLLS": "4",
    "RTRL_PPO_EPOCHS": "10",
    "RTRL_PPO_MINIBATCHES": "2",
    "RTRL_PPO_LEARNING_RATE": "0.001",
}
LEARNER_CPU = max(usable_cpus()) if len(usable_cpus()) > 1 else None


def setting_flags(settings: dict[str, str]) -> list[str]:
    return [flag for name, value in settings.items() for flag in ("--set", f"{name}={value}")]


def random_policy_returns(episodes: int, seed: int) -> list[float]:
    """Uniformly random actions on the backend `rtrl play` uses, its first reset seeded the same way."""
    backend = make_backend(GatewaySettings.from_env({"RTRL_ENV": "gym:CartPole-v1"}))
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    try:
        backend.reset(seed)
        for _ in range(episodes):
            total, ended = 0.0, False
            while not ended:
                _, reward, terminated, truncated = backend.step(int(rng.integers(backend.action_count)))
                total += reward
                ended = terminated or truncated
            returns.append(total)
            backend.reset()
    finally:
        backend.close()
    return returns


def test_ppo_trained_through_the_live_services_balances_three_times_longer_than_random(tmp_path: Path) -> None:
    checkpoints, runs = tmp_path / "checkpoints", tmp_path / "runs"
    summary_path = tmp_path / "summary.json"
    command = [
        sys.executable, "-m", "rtrl.cli", "up", "--env", "gym:CartPole-v1",
        "--duration", str(TRAIN_SECONDS), "--inference-replicas", "2", "--no-dashboard",
        "--checkpoint-dir", str(checkpoints), "--run-dir", str(runs), "--summary-json", str(summary_path),
        "--gateway-port", str(free_port()), "--learner-port", str(free_port()),
        "--inference-base-port", str(free_ports_in_a_row(2)), "--metrics-base-port", "-1",
        *setting_flags(SETTINGS),
    ]  # fmt: skip
    if LEARNER_CPU is not None:
        command += ["--learner-cpus", str(LEARNER_CPU)]
    up = subprocess.run(command, capture_output=True, text=True, timeout=TRAIN_SECONDS + 120)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]

    summary = json.loads(summary_path.read_text())
    gateway, learner = summary["gateway"], summary["learner"]
    assert float(gateway["coverage"]) >= 0.99, gateway
    assert int(learner["transitions_invalid"]) == 0
    [run_dir] = [path for path in runs.iterdir() if not path.is_symlink()]
    episodes = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    returns = [float(episode["episode_return"]) for episode in episodes]
    assert len(returns) >= 40, returns
    # The training curve itself rises: the last 20 episodes against the first 20.
    assert statistics.fmean(returns[-20:]) > 2 * statistics.fmean(returns[:20]), returns

    play = subprocess.run(
        [
            sys.executable, "-m", "rtrl.cli", "play", "--env", "gym:CartPole-v1",
            "--checkpoint-dir", str(checkpoints), "--episodes", str(EVALUATION_EPISODES),
            "--greedy", "--fast", "--json", *setting_flags(SETTINGS),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert play.returncode == 0, play.stderr
    played = json.loads(play.stdout.strip().splitlines()[-1])
    greedy = [float(episode["return"]) for episode in played["episodes"]]
    random = random_policy_returns(EVALUATION_EPISODES, SEED)

    assert len(greedy) == EVALUATION_EPISODES
    assert 15 < statistics.fmean(random) < 35, random  # CartPole's random policy, as a sanity check
    assert statistics.fmean(greedy) >= 3 * statistics.fmean(random), (greedy, random)
