"""The paper's Figure 6 direction on ALE Boxing: DQN acting asynchronously (an action every frame from a
d-frame-old observation) against sequentially (d fallback frames after each action), d in {1, 5, 8, 70},
with random and noop baselines; mean episode return over a fixed budget of frames.

    nice -n 19 python bench/delay_experiment.py                       # every run, then docs/delay-experiment.*
    python bench/delay_experiment.py --frames 20000 --seeds 0 --delays 1 70 --out /tmp/quick
    python bench/delay_experiment.py --report-only                    # the docs again from the saved results

Each run is one process (`--run-one`, results as one JSON line on stdout, no pickle), at most `--jobs`
at a time, torch on one thread. A run drives the gateway's frame-accurate clock
(services/env_gateway/simulated_clock.py, the code behind RTRL_CLOCK=simulated) on real ALE Boxing at
frameskip 1, and the learner's own DQN code (services/learner/dqn.py update and epsilon schedule,
services/learner/replay.py ReplayBuffer) in the same process, with the policy answering each
observation at once. The services in simulated mode would run the same clock, but with a free-running
learner the number of updates per frame would depend on how fast each process happens to be on a
shared 2-core machine; in-process it is fixed (one update every `--train-every` frames, in both
interaction modes, as a learner running beside the game would do), and the gRPC and Redis round
trips per frame (about 1 ms each here) are not paid a million times.

Choices forced by the CPU budget, all stated in the report: 60,000 frames per run and an update every
8 frames by default (the whole table took 48 minutes on 2 loaded cores); observations are one 42x42 grey frame
(the paper: one 84x84 frame; the Nature CNN's update costs 6 ms at 42x42 against 73 ms at 84x84 on
this machine), epsilon decays over the first half of the frames, the target network is copied every
1000 updates. The return of a run is the mean over every episode that ended within its budget
(online performance, which is what inaction costs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DEFAULT_OUT = REPO_ROOT / "docs"
RESULTS_NAME = "delay-experiment.json"
DELAYS = (1, 5, 8, 70)
MODES = ("async", "sequential")
BASELINES = ("random", "noop")
ENV = "ale:Boxing"


@dataclass(frozen=True)
class RunSpec:
    """One run: a policy ("dqn", "random", "noop"), an interaction mode and delay, a seed, a budget."""

    policy: str
    interaction: str
    delay_frames: int
    seed: int
    frames: int
    train_every: int
    obs_size: int


def run_one(spec: RunSpec) -> dict[str, object]:
    """Plays `spec.frames` frames of Boxing through the simulated clock, training DQN when the policy is "dqn"."""
    import torch

    from rtrl.models import default_model_config
    from services.env_gateway.backends import make_backend
    from services.env_gateway.clock import ActionReply, ClockConfig, ObservationSample, StepRecord
    from services.env_gateway.preprocess import Preprocessor
    from services.env_gateway.settings import EnvSpec, FallbackPolicy, GatewaySettings
    from services.env_gateway.simulated_clock import SimulatedClock, SimulatedTiming, completed
    from services.learner import dqn
    from services.learner.replay import ReplayBuffer

    torch.set_num_threads(1)
    started_s = time.monotonic()
    settings = GatewaySettings(env=EnvSpec.parse(ENV), seed=spec.seed)
    backend = make_backend(settings)
    timing = SimulatedTiming(spec.delay_frames, spec.interaction)
    config = ClockConfig(
        gateway_id=f"{spec.policy}-{spec.interaction}-{spec.delay_frames}-{spec.seed}",
        frame_rate_hz=60.0,
        decision_interval_frames=timing.decision_interval_frames,
        lead_frames=timing.lead_frames,
        max_staleness_frames=timing.lead_frames,
        fallback_policy=FallbackPolicy.NOOP,
        fallback_action=0,
        frame_stack=1,
        max_episode_frames=settings.max_episode_frames,
        seed=spec.seed,
    )
    preprocessor = Preprocessor(spec.obs_size, spec.obs_size, grayscale=True)
    observation_shape = preprocessor.observation_shape(1)
    rng = np.random.default_rng(spec.seed + 1000)
    dqn_config = dqn.DQNConfig(
        learning_rate=1e-4,
        buffer_size=100_000,
        learning_starts=1_000,
        target_network_frequency=1_000,
        epsilon_decay_steps=max(1, spec.frames // 2),
    )
    agent = None
    replay = None
    if spec.policy == "dqn":
        model_config = default_model_config(observation_shape, backend.action_count)
        agent = dqn.make_agent(dqn_config, model_config, "cpu", spec.seed)
        replay = ReplayBuffer(dqn_config.buffer_size, observation_shape, preprocessor.dtype, seed=spec.seed)

    def policy(sample: ObservationSample) -> Future[ActionReply | None]:
        if spec.policy == "noop":
            return completed(ActionReply(0, 0, 0.0))
        if spec.policy == "random":
            return completed(ActionReply(int(rng.integers(backend.action_count)), 0, 0.0))
        assert agent is not None
        # Epsilon follows frames, not decisions, so both modes explore on the same schedule in game time.
        if rng.random() < dqn.epsilon_at(clock.frame, dqn_config):
            return completed(ActionReply(int(rng.integers(backend.action_count)), agent.updates, 0.0))
        observation = torch.from_numpy(preprocessor.stack(sample.frames)).unsqueeze(0)
        with torch.no_grad():
            action = int(agent.q_network(observation).argmax(dim=1).item())
        return completed(ActionReply(action, agent.updates, 0.0))

    def publish(record: StepRecord) -> bool:
        if replay is not None:
            replay.add(record.to_transition(preprocessor))
        return True

    clock = SimulatedClock(backend, config, timing, request_action=policy, publish=publish)
    returns: list[float] = []
    losses: list[float] = []
    try:
        while clock.frame < spec.frames:
            episodes_before = clock.episodes
            clock.run_frames(min(spec.train_every, spec.frames - clock.frame))
            if clock.episodes > episodes_before:
                returns.append(clock.last_episode_return)
            if agent is None or replay is None or replay.trainable_count < dqn_config.learning_starts:
                continue
            batch = replay.sample(dqn_config.batch_size)
            loss = dqn.update(
                agent,
                torch.from_numpy(batch.obs),
                torch.from_numpy(batch.actions),
                torch.from_numpy(batch.rewards),
                torch.from_numpy(batch.next_obs),
                torch.from_numpy(batch.terminated),
            )
            if agent.updates % 1000 == 0:
                losses.append(float(loss))
    finally:
        backend.close()
    return {
        **asdict(spec),
        "episode_returns": returns,
        "mean_return": float(np.mean(returns)) if returns else float("nan"),
        "episodes": len(returns),
        "decisions": clock.decisions,
        "fallback_frame_share": clock.fallback_frames / max(1, clock.frame),
        "updates": agent.updates if agent is not None else 0,
        "wall_s": time.monotonic() - started_s,
        "loss_every_1000_updates": losses,
    }


def planned_runs(args: argparse.Namespace) -> list[RunSpec]:
    """Seed by seed (so an interrupted run still has whole seeds), baselines first, the largest delay first."""
    runs: list[RunSpec] = []
    for seed in args.seeds:
        for baseline in BASELINES:
            runs.append(RunSpec(baseline, "async", 1, seed, args.frames, args.train_every, args.obs_size))
        for delay in sorted(args.delays, reverse=True):
            for mode in MODES:
                runs.append(RunSpec("dqn", mode, delay, seed, args.frames, args.train_every, args.obs_size))
    return runs


def run_all(args: argparse.Namespace, results_path: Path) -> list[dict[str, object]]:
    done: list[dict[str, object]] = []
    if results_path.exists() and args.resume:
        done = json.loads(results_path.read_text())["runs"]
    finished = {json.dumps({k: r[k] for k in RunSpec.__dataclass_fields__}, sort_keys=True) for r in done}
    queue = [s for s in planned_runs(args) if json.dumps(asdict(s), sort_keys=True) not in finished]
    running: list[tuple[RunSpec, subprocess.Popen[str]]] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started_s = time.monotonic()
    while queue or running:
        while queue and len(running) < args.jobs:
            spec = queue.pop(0)
            command = [sys.executable, __file__, "--run-one", json.dumps(asdict(spec))]
            running.append((spec, subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)))
        time.sleep(1.0)
        for spec, process in list(running):
            if process.poll() is None:
                continue
            running.remove((spec, process))
            output = process.stdout.read() if process.stdout else ""
            if process.returncode != 0:
                print(f"run {spec} failed with exit status {process.returncode}", file=sys.stderr)
                continue
            result = json.loads(output.strip().splitlines()[-1])
            done.append(result)
            save(results_path, args, done)
            print(
                f"[{time.monotonic() - started_s:7.0f} s] {spec.policy:6s} {spec.interaction:10s}"
                f" d={spec.delay_frames:<3d} seed {spec.seed}: mean return {result['mean_return']:7.2f}"
                f" over {result['episodes']} episodes"
                f" ({result['updates']} updates, {result['wall_s']:.0f} s)",
                flush=True,
            )
    return done


def save(results_path: Path, args: argparse.Namespace, runs: list[dict[str, object]]) -> None:
    results_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"env": ENV, "frames": args.frames, "train_every": args.train_every, "obs_size": args.obs_size}
    results_path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(results_path: Path, out_dir: Path) -> str:
    """Writes delay-experiment.md and delay-experiment.png next to the results; returns the table."""
    data = json.loads(results_path.read_text())
    meta, runs = data["meta"], data["runs"]

    def returns_of(policy: str, interaction: str | None = None, delay: int | None = None) -> list[float]:
        return [
            float(r["mean_return"])
            for r in runs
            if r["policy"] == policy
            and (interaction is None or r["interaction"] == interaction)
            and (delay is None or r["delay_frames"] == delay)
        ]

    delays = sorted({int(r["delay_frames"]) for r in runs if r["policy"] == "dqn"})
    seeds = sorted({int(r["seed"]) for r in runs})
    # The command that reproduces these runs (the results file keeps no record of how it was invoked).
    command = (
        f"python bench/delay_experiment.py --frames {meta['frames']} --train-every {meta['train_every']} "
        f"--obs-size {meta['obs_size']} --seeds {' '.join(map(str, seeds))} --delays {' '.join(map(str, delays))}"
    )

    def mean_of(field: str, interaction: str, delay: int) -> float:
        values = [
            float(r[field])
            for r in runs
            if r["policy"] == "dqn" and r["interaction"] == interaction and r["delay_frames"] == delay
        ]
        return statistics.fmean(values) if values else float("nan")

    lines = [
        "| d (frames) | async mean ± std | sequential mean ± std | gap (async - sequential) | runs "
        "| decisions async / sequential | updates async / sequential |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for delay in delays:
        a_mean, a_std = mean_std(returns_of("dqn", "async", delay))
        s_mean, s_std = mean_std(returns_of("dqn", "sequential", delay))
        count = f"{len(returns_of('dqn', 'async', delay))} + {len(returns_of('dqn', 'sequential', delay))}"
        rows.append((delay, a_mean, a_std, s_mean, s_std))
        decisions = f"{mean_of('decisions', 'async', delay):.0f} / {mean_of('decisions', 'sequential', delay):.0f}"
        updates = f"{mean_of('updates', 'async', delay):.0f} / {mean_of('updates', 'sequential', delay):.0f}"
        lines.append(
            f"| {delay} | {a_mean:.2f} ± {a_std:.2f} | {s_mean:.2f} ± {s_std:.2f} | {a_mean - s_mean:+.2f} | {count} "
            f"| {decisions} | {updates} |"
        )
    for baseline in BASELINES:
        b_mean, b_std = mean_std(returns_of(baseline))
        lines.append(f"| {baseline} (every frame) | {b_mean:.2f} ± {b_std:.2f} | | | {len(returns_of(baseline))} | | |")
    table = "\n".join(lines)

    # Exploration decays over the first half of the budget: the second half shows the greedy policy's returns.
    def halves(interaction: str, delay: int) -> str:
        first, second = [], []
        for r in runs:
            if r["policy"] == "dqn" and r["interaction"] == interaction and r["delay_frames"] == delay:
                episode_returns = [float(x) for x in r["episode_returns"]]
                middle = len(episode_returns) // 2
                first += episode_returns[:middle]
                second += episode_returns[middle:]
        if not first or not second:
            return "- / -"
        return f"{statistics.fmean(first):.2f} / {statistics.fmean(second):.2f}"

    halves_lines = [
        "| d (frames) | async: first half / second half of episodes | sequential: first half / second half |",
        "|---:|---:|---:|",
    ]
    halves_lines += [f"| {delay} | {halves('async', delay)} | {halves('sequential', delay)} |" for delay in delays]
    halves_table = "\n".join(halves_lines)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    positions = np.arange(len(rows))
    width = 0.38
    axes.bar(positions - width / 2, [r[1] for r in rows], width, yerr=[r[2] for r in rows], label="async", capsize=3)
    axes.bar(
        positions + width / 2, [r[3] for r in rows], width, yerr=[r[4] for r in rows], label="sequential", capsize=3
    )
    for baseline, style in zip(BASELINES, ("--", ":"), strict=True):
        axes.axhline(mean_std(returns_of(baseline))[0], color="grey", linestyle=style, label=baseline)
    axes.set_xticks(positions, [str(r[0]) for r in rows])
    axes.set_xlabel("delay d (frames from observation to action)")
    axes.set_ylabel("mean episode return")
    axes.set_title(f"DQN on ALE Boxing, {meta['frames'] // 1000}k frames per run, seeds {', '.join(map(str, seeds))}")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_dir / "delay-experiment.png")
    plt.close(figure)
    checks = []
    gaps = [r[1] - r[3] for r in rows]
    for (delay, *_), gap in zip(rows, gaps, strict=True):
        checks.append(f"- d = {delay}: async {'>=' if gap >= 0 else '<'} sequential (gap {gap:+.2f})")
    growing = all(later >= earlier for earlier, later in itertools.pairwise(gaps))
    gap_list = ", ".join(f"{gap:+.2f}" for gap in gaps)
    checks.append(f"- the gap {'grows' if growing else 'does not grow'} with d at every step: {gap_list}")
    (out_dir / "delay-experiment.md").write_text(
        f"""# Delay experiment: asynchronous vs sequential interaction on ALE Boxing

Generated by `bench/delay_experiment.py` (the command below; `--report-only` rewrites this page and the
plot from the saved results); the per-run and per-episode numbers are in
[delay-experiment.json](delay-experiment.json), the plot in [delay-experiment.png](delay-experiment.png),
and what they mean in [learning.md](learning.md).

    nice -n 19 {command}

## Set-up

- Game: ALE Boxing (`ale:Boxing`, ale-py's ROM), frameskip 1, no sticky actions, episodes as the game
  ends them (a 2-minute round, about 7,100 frames, or a knock-out).
- Clock: the gateway's frame-accurate simulated clock (`RTRL_CLOCK=simulated`,
  services/env_gateway/simulated_clock.py). d = frames from an observation to the frame its action is
  applied on (1: ordinary RL). **async**: an action every frame, each from a d-frame-old observation.
  **sequential**: the action is applied d frames after its observation, then d noop frames, then the
  next observation (one decision every d + 1 frames). Fallback: noop (action 0).
- Learner: DQN from services/learner/dqn.py (Huber loss, Adam 1e-4, batch 32, target copy every 1,000
  updates, epsilon 1 -> 0.05 over the first half of the frames, counted in frames in both modes) on the
  learner's ReplayBuffer (100k transitions), Nature CNN on one {meta["obs_size"]}x{meta["obs_size"]} grey
  frame. One update every {meta["train_every"]} frames in both modes, starting once 1,000 transitions are
  trainable: the learner's time does not depend on how often the agent acts.
- Budget: **{meta["frames"]:,} frames per run** (about {meta["frames"] / 60 / 60:.0f} minutes of game time), seeds
  {", ".join(map(str, seeds))}. A run's score is the mean return of every episode that ended within its
  budget (performance while learning, which is where inaction costs); the table gives the mean and standard
  deviation of that score over seeds.
- Baselines: the uniformly random policy and the noop policy, acting every frame (no delay matters to them).

## Results

{table}

Direction expected from the paper (Figure 6): async >= sequential at every d, the gap growing with d.
Measured:

{chr(10).join(checks)}

Mean return of the episodes in the first half of each run (epsilon still high) against the second half
(epsilon near 0.05, the greedy policy acting), all seeds pooled:

{halves_table}
"""
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60_000, help="frames per run (frameskip 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--delays", type=int, nargs="+", default=list(DELAYS))
    parser.add_argument("--train-every", type=int, default=8, help="frames between two DQN updates")
    parser.add_argument("--obs-size", type=int, default=42, help="observation width and height in pixels")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the results, table and plot")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the table and plot")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_one(RunSpec(**json.loads(args.run_one)))), flush=True)
        return
    results_path = args.out / RESULTS_NAME
    if not args.report_only:
        run_all(args, results_path)
    print(report(results_path, args.out))


if __name__ == "__main__":
    main()
