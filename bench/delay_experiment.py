"""The paper's Figure 6 direction on ALE Boxing: DQN acting asynchronously (an action every frame from a
d-frame-old observation) against sequentially (d fallback frames after each action), d in {1, 5, 8, 70},
with random and noop baselines; mean episode return over a fixed budget of frames.

    nice -n 19 python bench/delay_experiment.py                       # every run, then docs/delay-experiment.*
    python bench/delay_experiment.py --frames 20000 --seeds 0 --delays 1 70 --out /tmp/quick
    python bench/delay_experiment.py --report-only                    # the docs again from the saved results
    python bench/delay_experiment.py --device cuda --jobs 20 --obs-size 84 --frames 2000000 --wall-s 400 \\
        --epsilon-frames 100000 --out /tmp/gpu                        # on a GPU machine, each run 400 s

Each run is one process (`--run-one`, results as one JSON line on stdout, no pickle), at most `--jobs`
at a time, torch on one thread. A run drives the gateway's frame-accurate clock
(rtrl/services/env_gateway/simulated_clock.py, the code behind RTRL_CLOCK=simulated) on real ALE Boxing at
frameskip 1, and the learner's own DQN code (rtrl/services/learner/algorithms/dqn.py update and epsilon schedule,
rtrl/services/learner/replay.py ReplayBuffer) in the same process, with the policy answering each
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

On a GPU (`--device cuda`, or `auto`), each run's network, acting forward passes and updates live on
the GPU (its own CUDA context per process; one observation goes to the device per decision, one
sampled batch per update), and the environment, clock and replay buffer stay on the run's CPU core.
On a machine of unknown speed `--wall-s` stops every run after that many seconds of wall clock
(`--frames` is then only an upper bound): each run records the frame at which each episode ended and
the frames it reached, and the report scores every run over the same number of frames, the fewest a
DQN run reached rounded down to a multiple of 10,000. The exploration schedule must then not depend
on the budget: `--epsilon-frames` fixes it (100,000 frames, the paper's, when a wall limit is set).
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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rtrl.services.learner.algorithms.dqn import DQNConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DEFAULT_OUT = REPO_ROOT / "docs"
RESULTS_NAME = "delay-experiment.json"
DELAYS = (1, 5, 8, 70)
MODES = ("async", "sequential")
BASELINES = ("random", "noop")
ENV = "ale:Boxing"
# The exploration schedule when runs are limited by wall clock rather than frames (the paper's).
WALL_EPSILON_FRAMES = 100_000
# A wall-clock-limited comparison is scored over the fewest frames a DQN run reached, rounded down to this.
BUDGET_STEP_FRAMES = 10_000
# Each run prints a progress line to stderr this often.
PROGRESS_EVERY_S = 30.0
# The DQN hyperparameters this experiment sets (the others are rtrl/services/learner/algorithms/dqn.py's defaults); the
# results' meta records them all.
LEARNING_RATE = 1e-4
BATCH_SIZE = 32
BUFFER_SIZE = 100_000
LEARNING_STARTS = 1_000
TARGET_COPY_EVERY = 1_000


@dataclass(frozen=True)
class RunSpec:
    """One run: a policy ("dqn", "random", "noop"), an interaction mode and delay, a seed, a budget."""

    policy: str
    interaction: str
    delay_frames: int
    seed: int
    frames: int
    """Frames to play; with `wall_limit_s`, an upper bound."""
    train_every: int
    obs_size: int
    epsilon_frames: int | None = None
    """Frames over which epsilon decays from 1 to 0.05; None: half of `frames`."""
    learning_rate: float = LEARNING_RATE
    target_copy_every: int = TARGET_COPY_EVERY
    """Updates between two copies of the online network into the target network."""
    wall_limit_s: float | None = None
    """Seconds of wall clock after which the run stops, wherever it is (None: no limit)."""
    device: str = "cpu"


def dqn_config_of(spec: RunSpec) -> DQNConfig:
    """The DQN hyperparameters of a run (the results' meta records them all)."""
    from rtrl.services.learner.algorithms import dqn

    return dqn.DQNConfig(
        learning_rate=spec.learning_rate,
        batch_size=BATCH_SIZE,
        buffer_size=BUFFER_SIZE,
        learning_starts=LEARNING_STARTS,
        target_network_frequency=spec.target_copy_every,
        epsilon_decay_steps=spec.epsilon_frames or max(1, spec.frames // 2),
    )


def run_one(spec: RunSpec) -> dict[str, object]:
    """Plays `spec.frames` frames of Boxing through the simulated clock, training DQN when the policy is "dqn".

    Stops early when `spec.wall_limit_s` seconds of wall clock have passed since the process began the run.
    """
    started_s = time.monotonic()
    import torch

    from rtrl.models import default_model_config
    from rtrl.services.env_gateway.backends import make_backend
    from rtrl.services.env_gateway.clock import ClockConfig, ObservationSample, StepRecord
    from rtrl.services.env_gateway.mailbox import ActionReply
    from rtrl.services.env_gateway.preprocess import Preprocessor
    from rtrl.services.env_gateway.settings import EnvSpec, FallbackPolicy, GatewaySettings
    from rtrl.services.env_gateway.simulated_clock import SimulatedClock, SimulatedTiming, completed
    from rtrl.services.learner.algorithms import dqn

    torch.set_num_threads(1)
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
    dqn_config = dqn_config_of(spec)
    device = torch.device(spec.device)
    agent = None
    replay = None
    if spec.policy == "dqn":
        if device.type == "cuda":
            # The network's input shapes never change: let cuDNN time its algorithms once and keep the fastest.
            torch.backends.cudnn.benchmark = True
        model_config = default_model_config(observation_shape, backend.action_count)
        agent = dqn.DQN(dqn_config, model_config, device, spec.seed)
        replay = agent.make_source(observation_shape, preprocessor.dtype, seed=spec.seed)

    def policy(sample: ObservationSample) -> Future[ActionReply | None]:
        if spec.policy == "noop":
            return completed(ActionReply(0, 0, 0.0))
        if spec.policy == "random":
            return completed(ActionReply(int(rng.integers(backend.action_count)), 0, 0.0))
        assert agent is not None
        # Epsilon follows frames, not decisions, so both modes explore on the same schedule in game time.
        if rng.random() < dqn.epsilon_at(clock.frame, dqn_config):
            return completed(ActionReply(int(rng.integers(backend.action_count)), agent.updates, 0.0))
        observation = torch.from_numpy(preprocessor.stack(sample.frames)).to(device).unsqueeze(0)
        with torch.no_grad():
            action = int(agent.q_network(observation).argmax(dim=1).item())
        return completed(ActionReply(action, agent.updates, 0.0))

    def publish(record: StepRecord) -> bool:
        if replay is not None:
            replay.add(record.to_transition(preprocessor))
        return True

    clock = SimulatedClock(backend, config, timing, request_action=policy, publish=publish)
    returns: list[float] = []
    # The frame count when each episode was seen to end: exact when `train_every` divides it, else within
    # `train_every` frames after; the report keeps the episodes that ended within a common budget.
    end_frames: list[int] = []
    # [frame, decisions, updates] every BUDGET_STEP_FRAMES frames, so the report can give them at its budget.
    counters: list[list[int]] = []
    losses: list[float] = []
    stopped_by = "frames"
    progress_s = started_s + PROGRESS_EVERY_S
    try:
        while clock.frame < spec.frames:
            now_s = time.monotonic()
            if spec.wall_limit_s is not None and now_s - started_s >= spec.wall_limit_s:
                stopped_by = "wall clock"
                break
            if now_s >= progress_s:
                progress_s = now_s + PROGRESS_EVERY_S
                print(
                    f"[{config.gateway_id}] frame {clock.frame:,} episodes {clock.episodes}"
                    f" updates {agent.updates if agent is not None else 0:,} {now_s - started_s:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            episodes_before = clock.episodes
            clock.run_frames(min(spec.train_every, spec.frames - clock.frame))
            if clock.episodes > episodes_before:
                returns.append(clock.last_episode_return)
                end_frames.append(clock.frame)
            if clock.frame // BUDGET_STEP_FRAMES > len(counters):
                counters.append([clock.frame, clock.decisions, agent.updates if agent is not None else 0])
            if agent is None or replay is None or replay.trainable_count < dqn_config.learning_starts:
                continue
            loss = agent.update(agent.sample(replay))["loss"]
            if agent.updates % 1000 == 0:
                losses.append(float(loss))
    finally:
        backend.close()
    return {
        **asdict(spec),
        "episode_returns": returns,
        "episode_end_frames": end_frames,
        "mean_return": float(np.mean(returns)) if returns else float("nan"),
        "episodes": len(returns),
        "frames_reached": clock.frame,
        "stopped_by": stopped_by,
        "decisions": clock.decisions,
        "fallback_frame_share": clock.fallback_frames / max(1, clock.frame),
        "updates": agent.updates if agent is not None else 0,
        "counters_every_10k_frames": counters,
        "wall_s": time.monotonic() - started_s,
        "loss_every_1000_updates": losses,
    }


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The RunSpec fields every run shares."""
    return {
        "train_every": args.train_every,
        "obs_size": args.obs_size,
        "epsilon_frames": args.epsilon_frames,
        "learning_rate": args.learning_rate,
        "target_copy_every": args.target_copy_every,
        "wall_limit_s": args.wall_s,
        "device": args.device,
    }


def planned_runs(args: argparse.Namespace) -> list[RunSpec]:
    """Seed by seed (so an interrupted run still has whole seeds), baselines first, the largest delay first."""
    common = run_options(args)
    runs: list[RunSpec] = []
    for seed in args.seeds:
        for baseline in BASELINES:
            runs.append(RunSpec(baseline, "async", 1, seed, args.baseline_frames, **common))
        for delay in sorted(args.delays, reverse=True):
            for mode in MODES:
                runs.append(RunSpec("dqn", mode, delay, seed, args.frames, **common))
    return runs


def spec_key(values: dict[str, Any]) -> str:
    """A run's identity, for --resume."""
    return json.dumps({f.name: values[f.name] for f in fields(RunSpec)}, sort_keys=True)


def run_all(args: argparse.Namespace, results_path: Path) -> list[dict[str, object]]:
    done: list[dict[str, object]] = []
    if results_path.exists() and args.resume:
        done = json.loads(results_path.read_text())["runs"]
    finished = {spec_key(r) for r in done}
    queue = [s for s in planned_runs(args) if spec_key(asdict(s)) not in finished]
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
                f" ({result['frames_reached']} frames, {result['updates']} updates, {result['wall_s']:.0f} s)",
                flush=True,
            )
    return done


def save(results_path: Path, args: argparse.Namespace, runs: list[dict[str, object]]) -> None:
    results_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "env": ENV,
        "frames": args.frames,
        "train_every": args.train_every,
        "obs_size": args.obs_size,
        "frame_stack": 1,
        "grayscale": True,
        "fallback_action": 0,
        "baseline_frames": args.baseline_frames,
        "wall_s": args.wall_s,
        "device": args.device,
        "device_name": args.device_name,
        "jobs": args.jobs,
        # Every DQN hyperparameter (DQNConfig in rtrl/services/learner/algorithms/dqn.py); epsilon_decay_steps
        # counts frames.
        "dqn": asdict(dqn_config_of(RunSpec("dqn", "async", 1, 0, args.frames, **run_options(args)))),
    }
    results_path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def frames_reached(run: dict[str, Any]) -> int:
    """Frames a run played."""
    return int(run["frames_reached"])


def common_budget(runs: list[dict[str, Any]]) -> tuple[int, bool]:
    """The frames every run is scored over, and whether the wall clock rather than --frames set it.

    Without a wall-clock stop it is the budget the runs were given. When a DQN run stopped short, it is
    the fewest frames a DQN run reached, rounded down to a multiple of BUDGET_STEP_FRAMES.
    """
    dqn_runs = [r for r in runs if r["policy"] == "dqn"] or runs
    fewest = min(frames_reached(r) for r in dqn_runs)
    limited = any(frames_reached(r) < int(r["frames"]) for r in dqn_runs)
    if limited and fewest >= BUDGET_STEP_FRAMES:
        return fewest // BUDGET_STEP_FRAMES * BUDGET_STEP_FRAMES, True
    return fewest, limited


def returns_within(run: dict[str, Any], budget: int) -> list[float]:
    """The returns of the run's episodes that ended within `budget` frames."""
    returns = [float(x) for x in run["episode_returns"]]
    end_frames = run["episode_end_frames"]
    return [value for value, end in zip(returns, end_frames, strict=True) if end <= budget]


def counter_at(run: dict[str, Any], field: str, budget: int) -> float:
    """The run's decisions or updates after `budget` frames: exact at the counters it recorded every
    BUDGET_STEP_FRAMES frames and at its end, linearly interpolated between them."""
    column = {"decisions": 1, "updates": 2}[field]
    points = [
        [0, 0, 0],
        *run["counters_every_10k_frames"],
        [frames_reached(run), run["decisions"], run["updates"]],
    ]
    return float(np.interp(budget, [p[0] for p in points], [p[column] for p in points]))


def short_float(value: float) -> str:
    """1e-4 rather than 0.0001 or 1e-04."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def command_of(meta: dict[str, Any], seeds: list[int], delays: list[int]) -> str:
    """The command that reproduces the runs (the results file keeps no record of how it was invoked)."""
    frames, dqn = meta["frames"], meta["dqn"]
    command = (
        f"python bench/delay_experiment.py --frames {frames} --train-every {meta['train_every']} "
        f"--obs-size {meta['obs_size']} --seeds {' '.join(map(str, seeds))} --delays {' '.join(map(str, delays))}"
    )
    options = {
        "--device": meta["device"] if meta["device"] != "cpu" else None,
        "--jobs": meta["jobs"] if meta["wall_s"] is not None else None,
        "--wall-s": meta["wall_s"],
        "--epsilon-frames": (dqn["epsilon_decay_steps"] if dqn["epsilon_decay_steps"] != max(1, frames // 2) else None),
        "--learning-rate": (short_float(dqn["learning_rate"]) if dqn["learning_rate"] != LEARNING_RATE else None),
        "--target-copy-every": (
            dqn["target_network_frequency"] if dqn["target_network_frequency"] != TARGET_COPY_EVERY else None
        ),
        "--baseline-frames": meta["baseline_frames"] if meta["baseline_frames"] != frames else None,
    }
    command += "".join(
        f" {option} {value:g}" if isinstance(value, float) else f" {option} {value}"
        for option, value in options.items()
        if value is not None
    )
    return command if meta["device"] != "cpu" else f"nice -n 19 {command}"


def report(results_path: Path, out_dir: Path) -> str:
    """Writes delay-experiment.md and delay-experiment.png next to the results; returns the table."""
    data = json.loads(results_path.read_text())
    meta, runs = data["meta"], data["runs"]
    budget, wall_limited = common_budget(runs)
    dqn = meta["dqn"]

    def score(run: dict[str, Any]) -> float:
        returns = returns_within(run, budget)
        return float(np.mean(returns)) if returns else float("nan")

    def returns_of(policy: str, interaction: str | None = None, delay: int | None = None) -> list[float]:
        return [
            score(r)
            for r in runs
            if r["policy"] == policy
            and (interaction is None or r["interaction"] == interaction)
            and (delay is None or r["delay_frames"] == delay)
        ]

    delays = sorted({int(r["delay_frames"]) for r in runs if r["policy"] == "dqn"})
    seeds = sorted({int(r["seed"]) for r in runs})
    command = command_of(meta, seeds, delays)

    def mean_of(field: str, interaction: str, delay: int) -> float:
        values = [
            counter_at(r, field, budget)
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

    # Exploration decays early in the run: the second half shows (nearly) the greedy policy's returns.
    def halves(interaction: str, delay: int) -> str:
        first, second = [], []
        for r in runs:
            if r["policy"] == "dqn" and r["interaction"] == interaction and r["delay_frames"] == delay:
                episode_returns = returns_within(r, budget)
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
    axes.set_title(f"DQN on ALE Boxing, {budget // 1000}k frames per run, seeds {', '.join(map(str, seeds))}")
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

    epsilon_frames = int(dqn["epsilon_decay_steps"])
    half_of_frames = epsilon_frames == max(1, meta["frames"] // 2)
    epsilon_span = "the first half of the frames" if half_of_frames else f"the first {epsilon_frames:,} frames"
    buffer = f"{dqn['buffer_size'] // 1000}k" if dqn["buffer_size"] % 1000 == 0 else f"{dqn['buffer_size']:,}"
    budget_note = f" Runs: {meta['jobs']} at a time, on {meta['device_name']}."
    if wall_limited:
        fewest = min(frames_reached(r) for r in runs if r["policy"] == "dqn")
        rounded = f" rounded down to a multiple of {BUDGET_STEP_FRAMES:,}," if budget != fewest else ""
        budget_note += (
            f"\n  **The runs were limited by wall clock** ({meta['wall_s']:.0f} s each), not by frames: the"
            f" budget is the fewest\n  frames a DQN run reached ({fewest:,}),{rounded}\n  and only the episodes that"
            " ended within it count (frames reached by each run: the last table)."
        )
    baseline_frames = meta["baseline_frames"]
    baseline_note = ""
    if baseline_frames != meta["frames"]:
        baseline_note = (
            f" Each played at most {baseline_frames:,}\n  frames (neither learns: more frames only add episodes"
            " of the same policy)."
        )
    halves_intro = (
        "Mean return of the episodes in the first half of each run (epsilon still high) against the second half\n"
        "(epsilon near 0.05, the greedy policy acting), all seeds pooled:"
        if half_of_frames
        else "Mean return of the first half of each run's episodes within the budget against the second half\n"
        f"(epsilon reaches 0.05 at frame {epsilon_frames:,}), all seeds pooled:"
    )
    if epsilon_frames > budget:
        # Said outright: with most actions still random, the table measures how often the agent acts.
        start, end = dqn["epsilon_start"], dqn["epsilon_end"]
        epsilon_left = start - (start - end) * budget / epsilon_frames
        halves_intro = (
            f"**Epsilon was still {epsilon_left:.2f} at the end of the budget**: most actions were random, so the\n"
            "table shows what acting on fewer frames costs more than what the network learned.\n\n" + halves_intro
        )
    reached = ""
    if wall_limited:
        reached_lines = [
            f"Frames each run reached in its {meta['wall_s']:.0f} s, and its episodes that ended within the"
            f" budget of {budget:,} frames:",
            "",
            "| run | seed | frames reached | stopped by | episodes within budget / all | updates within budget / all |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for r in sorted(runs, key=lambda r: (r["policy"] != "dqn", r["policy"], r["delay_frames"], r["interaction"])):
            name = f"dqn {r['interaction']} d={r['delay_frames']}" if r["policy"] == "dqn" else r["policy"]
            reached_lines.append(
                f"| {name} | {r['seed']} | {frames_reached(r):,} | {r['stopped_by']} "
                f"| {len(returns_within(r, budget))} / {len(r['episode_returns'])} "
                f"| {counter_at(r, 'updates', budget):,.0f} / {r['updates']:,} |"
            )
        reached = "\n" + "\n".join(reached_lines) + "\n"
    (out_dir / "delay-experiment.md").write_text(
        f"""# Delay experiment: asynchronous vs sequential interaction on ALE Boxing

Generated by `bench/delay_experiment.py` (the command below; `--report-only` rewrites this page and the
plot from the saved results); the per-run and per-episode numbers are in
[delay-experiment.json](delay-experiment.json), the plot in [delay-experiment.png](delay-experiment.png),
and what they mean in [learning.md](learning.md).

    {command}

## Set-up

- Game: ALE Boxing (`ale:Boxing`, ale-py's ROM), frameskip 1, no sticky actions, episodes as the game
  ends them (a 2-minute round, about 7,100 frames, or a knock-out).
- Clock: the gateway's frame-accurate simulated clock (`RTRL_CLOCK=simulated`,
  rtrl/services/env_gateway/simulated_clock.py). d = frames from an observation to the frame its action is
  applied on (1: ordinary RL). **async**: an action every frame, each from a d-frame-old observation.
  **sequential**: the action is applied d frames after its observation, then d noop frames, then the
  next observation (one decision every d + 1 frames). Fallback: noop (action 0).
- Learner: DQN from rtrl/services/learner/algorithms/dqn.py (Huber loss, \
Adam {short_float(dqn["learning_rate"])}, batch \
{dqn["batch_size"]}, target copy every {dqn["target_network_frequency"]:,}
  updates, epsilon 1 -> 0.05 over {epsilon_span}, counted in frames in both modes) on the
  learner's ReplayBuffer ({buffer} transitions), Nature CNN on one {meta["obs_size"]}x{meta["obs_size"]} grey
  frame. One update every {meta["train_every"]} frames in both modes, starting once \
{dqn["learning_starts"]:,} transitions are
  trainable: the learner's time does not depend on how often the agent acts.
- Budget: **{budget:,} frames per run** (about {budget / 60 / 60:.0f} minutes of game time), seeds
  {", ".join(map(str, seeds))}. A run's score is the mean return of every episode that ended within its
  budget (performance while learning, which is where inaction costs); the table gives the mean and standard
  deviation of that score over seeds.{budget_note}
- Baselines: the uniformly random policy and the noop policy, acting every frame (no delay matters to them).\
{baseline_note}

## Results

{table}

Direction expected from the paper (Figure 6): async >= sequential at every d, the gap growing with d.
Measured:

{chr(10).join(checks)}

{halves_intro}

{halves_table}
{reached}"""
    )
    return table


def resolve_device(args: argparse.Namespace) -> None:
    """Turns --device auto into cpu or cuda, and names the hardware for the report."""
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch sees no CUDA device")
        args.device_name = f"one {torch.cuda.get_device_name(0)} shared by the runs, {os.cpu_count()} CPU cores"
    else:
        args.device_name = f"{os.cpu_count()} CPU cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frames", type=int, default=60_000, help="frames per run (frameskip 1); with --wall-s, at most"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--delays", type=int, nargs="+", default=list(DELAYS))
    parser.add_argument("--train-every", type=int, default=8, help="frames between two DQN updates")
    parser.add_argument("--obs-size", type=int, default=42, help="observation width and height in pixels")
    parser.add_argument(
        "--epsilon-frames",
        type=int,
        help=f"frames over which epsilon decays from 1 to 0.05 (default: half of --frames; {WALL_EPSILON_FRAMES:,}"
        " with --wall-s)",
    )
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE, help="Adam's")
    parser.add_argument(
        "--target-copy-every", type=int, default=TARGET_COPY_EVERY, help="updates between target-network copies"
    )
    parser.add_argument(
        "--wall-s", type=float, help="stop each run after this many seconds; the report compares a common budget"
    )
    parser.add_argument("--baseline-frames", type=int, help="frames per random or noop run (default: --frames)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
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
        if args.epsilon_frames is None and args.wall_s is not None:
            args.epsilon_frames = WALL_EPSILON_FRAMES
        if args.baseline_frames is None:
            args.baseline_frames = args.frames
        resolve_device(args)
        run_all(args, results_path)
    print(report(results_path, args.out))


if __name__ == "__main__":
    main()
