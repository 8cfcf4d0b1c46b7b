"""Learning works: the learner's DQN, fed by the gateway's frame-accurate clock, beats the random policy on
CartPole-v1 within a small budget of environment steps.

    nice -n 19 python bench/learning_works.py                    # 2 seeds x 20k steps
    python bench/learning_works.py --steps 20000 --seeds 0

What runs is the code the services run, in one process: the simulated clock
(services/env_gateway/simulated_clock.py, delay d = 1, async: ordinary RL, an action every step
computed from the latest observation) steps CartPole-v1, every step becomes a StepRecord and then
a Transition in the learner's ReplayBuffer (services/learner/replay.py, pairing by seq), and
services/learner/dqn.py trains the learner's MLP Q-network (rtrl/models.py) with its update, target
network and epsilon schedule. CartPole's observation is its 4-number state, not pixels, as the
gateway plays it (RTRL_OBSERVATION=state, the default for CartPole): learning CartPole from pixels
takes far more than this budget (the Boxing experiment, bench/delay_experiment.py, covers pixels).

After training, the greedy policy (epsilon 0) plays `--eval-episodes` episodes; the random policy
plays as many. The table prints both and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

from rtrl.models import default_model_config  # noqa: E402
from rtrl.transitions import Transition  # noqa: E402
from services.env_gateway.clock import ActionReply, ClockConfig, ObservationSample, StepRecord  # noqa: E402
from services.env_gateway.preprocess import SampledFrame  # noqa: E402
from services.env_gateway.settings import FallbackPolicy  # noqa: E402
from services.env_gateway.simulated_clock import SimulatedClock, SimulatedTiming, completed  # noqa: E402
from services.learner import dqn  # noqa: E402
from services.learner.replay import ReplayBuffer  # noqa: E402

ENV_ID = "CartPole-v1"


class CartPoleStateBackend:
    """CartPole-v1 as a gateway backend whose "frame" is the 4-number state (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        self._env = gym.make(ENV_ID)
        self._env.action_space.seed(seed)

    action_count = 2
    action_meanings = ("LEFT", "RIGHT")
    native_frame_rate_hz = 50.0

    def reset(self, seed: int | None = None) -> np.ndarray:
        observation, _ = self._env.reset(seed=seed)
        return np.asarray(observation, dtype=np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        observation, reward, terminated, truncated, _ = self._env.step(action)
        return np.asarray(observation, dtype=np.float32), float(reward), bool(terminated), bool(truncated)

    def read_variables(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        self._env.close()


def state_of(frames: tuple[SampledFrame, ...]) -> np.ndarray:
    """The state the backend returned for the newest frame (kept as is: nothing preprocesses it)."""
    state = frames[-1].rgb
    assert state is not None
    return state


def play(seed: int, steps: int, policy_name: str, agent: dqn.DQNAgent | None, config: dqn.DQNConfig) -> dict:
    """Runs the clock for `steps` steps (training when policy_name is "dqn") or for whole evaluation episodes."""
    backend = CartPoleStateBackend(seed)
    timing = SimulatedTiming(1, "async")
    clock_config = ClockConfig(
        gateway_id=f"{policy_name}-{seed}",
        frame_rate_hz=backend.native_frame_rate_hz,
        decision_interval_frames=timing.decision_interval_frames,
        lead_frames=timing.lead_frames,
        max_staleness_frames=timing.lead_frames,
        fallback_policy=FallbackPolicy.NOOP,
        fallback_action=0,
        frame_stack=1,
        max_episode_frames=0,
        seed=seed,
    )
    rng = np.random.default_rng(seed + 1000)
    replay = ReplayBuffer(config.buffer_size, (4,), np.dtype(np.float32), seed=seed) if policy_name == "dqn" else None

    def policy(sample: ObservationSample) -> Future[ActionReply | None]:
        if policy_name == "random" or (policy_name == "dqn" and rng.random() < dqn.epsilon_at(clock.decisions, config)):
            return completed(ActionReply(int(rng.integers(2)), 0, 0.0))
        assert agent is not None
        with torch.no_grad():
            q = agent.q_network(torch.from_numpy(state_of(sample.frames)).unsqueeze(0))
        return completed(ActionReply(int(q.argmax(dim=1).item()), agent.updates, 0.0))

    def publish(record: StepRecord) -> bool:
        if replay is not None:
            replay.add(
                Transition(
                    gateway_id=record.gateway_id,
                    seq=record.seq,
                    episode=record.episode,
                    step=record.step,
                    obs_frame=record.obs_frame,
                    observation=state_of(record.frames),
                    action=record.action,
                    action_count=record.action_count,
                    reward=record.reward,
                    terminated=record.terminated,
                    truncated=record.truncated,
                    fresh=record.fresh,
                    fallback_policy=record.fallback_policy,
                    staleness_frames=record.staleness_frames,
                    policy_version=record.policy_version,
                    behaviour_log_prob=record.behaviour_log_prob,
                    obs_captured_unix_ns=record.obs_captured_unix_ns,
                    action_applied_unix_ns=record.action_applied_unix_ns,
                )
            )
        return True

    clock = SimulatedClock(backend, clock_config, timing, request_action=policy, publish=publish)  # type: ignore[arg-type]
    returns: list[float] = []
    try:
        while clock.frame < steps if policy_name == "dqn" else len(returns) < steps:
            episodes = clock.episodes
            clock.tick()
            if clock.episodes > episodes:
                returns.append(clock.last_episode_return)
            if replay is None or agent is None or replay.trainable_count < config.learning_starts:
                continue
            batch = replay.sample(config.batch_size)
            dqn.update(
                agent,
                torch.from_numpy(batch.obs),
                torch.from_numpy(batch.actions),
                torch.from_numpy(batch.rewards),
                torch.from_numpy(batch.next_obs),
                torch.from_numpy(batch.terminated),
            )
    finally:
        backend.close()
    return {"returns": returns, "frames": clock.frame}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="training steps per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--eval-episodes", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = dqn.DQNConfig(
        learning_rate=5e-4,
        batch_size=64,
        gamma=0.99,
        buffer_size=50_000,
        learning_starts=1_000,
        target_network_frequency=500,
        epsilon_decay_steps=args.steps // 2,
        epsilon_end=0.02,
    )
    rows = []
    for seed in args.seeds:
        started_s = time.monotonic()
        model_config = default_model_config((4,), 2)
        agent = dqn.make_agent(config, model_config, "cpu", seed)
        training = play(seed, args.steps, "dqn", agent, config)
        trained = play(seed + 100, args.eval_episodes, "greedy", agent, config)["returns"]
        random_returns = play(seed + 100, args.eval_episodes, "random", None, config)["returns"]
        rows.append((seed, statistics.fmean(random_returns), statistics.fmean(trained), agent.updates))
        print(
            f"seed {seed}: {training['frames']} training steps, {agent.updates} updates, "
            f"last 10 training episodes {statistics.fmean(training['returns'][-10:]):.1f}, "
            f"{time.monotonic() - started_s:.0f} s",
            flush=True,
        )
    print()
    print(
        f"{ENV_ID}, DQN (services/learner/dqn.py), {args.steps} steps per seed, greedy evaluation over "
        f"{args.eval_episodes} episodes:"
    )
    print()
    print("| seed | random policy | trained (greedy) | trained / random |")
    print("|---:|---:|---:|---:|")
    for seed, random_mean, trained_mean, _ in rows:
        print(f"| {seed} | {random_mean:.1f} | {trained_mean:.1f} | {trained_mean / random_mean:.1f}x |")
    random_all = statistics.fmean(r[1] for r in rows)
    trained_all = statistics.fmean(r[2] for r in rows)
    print(f"| mean | {random_all:.1f} | {trained_all:.1f} | {trained_all / random_all:.1f}x |")


if __name__ == "__main__":
    main()
