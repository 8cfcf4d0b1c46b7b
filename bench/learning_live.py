"""Learning through the live system: CartPole-v1 from its state at its real 50 fps, every algorithm, several seeds.

    python bench/learning_live.py                                   # dqn, vtrace, ppo x seeds 0 1 2 x 10 min (~2 h)
    python bench/learning_live.py --algorithms ppo --seeds 0 --minutes 3 --no-docs   # a quick look
    python bench/learning_live.py --in-process-only --algorithms dqn --frames 20000  # tuning, minutes

Each live run is `rtrl up` as a user runs it: embedded Redis, the learner, 2 inference replicas and the
gateway as separate processes, the realtime clock stepping CartPole-v1 at 50 frames per second of wall
clock whatever the learner does, the repeat-last fallback when no action comes in time, for `--minutes`
of wall clock. Its learning curve is the gateway's episode log (runs/<time>/episodes.jsonl: each
episode's return, frames and end time); its summary gives coverage, frames and learner updates. The
final checkpoint is then evaluated greedily with `rtrl play --greedy --fast`.

Beside each live run, the in-process learner: the same algorithm file and hyperparameters driven by
the gateway's frame-accurate simulated clock in one process (each action computed from the newest
observation and applied on the next frame, which is what the live system does when every reply is in
time), for the live run's number of frames and the same number of updates, spread evenly. Their mean
returns over the last 20 training episodes, side by side, show what the live system costs learning.

Without `--no-docs` the script rewrites its section of docs/learning.md (between the markers), and
docs/learning-live.png and docs/learning-live.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rtrl.acting import epsilon_greedy, sample_softmax  # noqa: E402
from rtrl.local_redis import free_port, free_ports_in_a_row  # noqa: E402
from rtrl.models import default_model_config  # noqa: E402
from rtrl.services.env_gateway.backends import make_backend  # noqa: E402
from rtrl.services.env_gateway.clock import ClockConfig, ObservationSample, StepRecord  # noqa: E402
from rtrl.services.env_gateway.mailbox import ActionReply  # noqa: E402
from rtrl.services.env_gateway.preprocess import make_preprocessor  # noqa: E402
from rtrl.services.env_gateway.settings import GatewaySettings  # noqa: E402
from rtrl.services.env_gateway.simulated_clock import SimulatedClock, SimulatedTiming, completed  # noqa: E402
from rtrl.services.learner.algorithms import ALGORITHMS  # noqa: E402
from rtrl.services.learner.settings import LearnerSettings  # noqa: E402

ENV = "gym:CartPole-v1"
LAST_EPISODES = 20
GREEDY_EPISODES = 10
# What every run sets besides its algorithm's hyperparameters: the repeat-last fallback of a realtime
# game (the last action is held when no new one arrives), and the network (an MLP on the stacked states).
COMMON: dict[str, str] = {
    "RTRL_FALLBACK_POLICY": "repeat_last",
    "RTRL_FRAME_STACK": "1",
}
# Each algorithm's hyperparameters for CartPole (the rest are its file's defaults); chosen in-process
# with --in-process-only, then run live.
HYPERPARAMETERS: dict[str, dict[str, str]] = {
    "dqn": {
        "RTRL_DQN_LEARNING_RATE": "0.001",
        "RTRL_DQN_BATCH_SIZE": "64",
        "RTRL_DQN_LEARNING_STARTS": "1000",
        "RTRL_DQN_TARGET_NETWORK_FREQUENCY": "200",
        "RTRL_DQN_EPSILON_DECAY_STEPS": "8000",
        "RTRL_DQN_EPSILON_END": "0.02",
        "RTRL_DQN_DOUBLE_DQN": "true",
        "RTRL_DQN_N_STEP": "3",
        # Two updates of 64 per step of play, however fast the learner could go.
        "RTRL_DQN_MAX_REPLAY_RATIO": "128",
    },
    "vtrace": {
        "RTRL_VTRACE_BATCH_SIZE": "8",
        "RTRL_VTRACE_LEARNING_STARTS": "8",
        "RTRL_VTRACE_REPLAY_CAPACITY": "32",
        "RTRL_VTRACE_MAX_REPLAY_RATIO": "16",
        "RTRL_VTRACE_LEARNING_RATE": "0.0002",
        "RTRL_VTRACE_MAX_GRAD_NORM": "10",
        "RTRL_VTRACE_ENTROPY_COEF": "0.001",
    },
    "ppo": {
        "RTRL_PPO_UNROLL_LENGTH": "32",
        "RTRL_PPO_BATCH_UNROLLS": "4",
        "RTRL_PPO_EPOCHS": "10",
        "RTRL_PPO_MINIBATCHES": "2",
        "RTRL_PPO_LEARNING_RATE": "0.001",
    },
}


@dataclass
class Curve:
    """Episode returns of one run, with when each ended."""

    returns: list[float] = field(default_factory=list)
    end_frames: list[int] = field(default_factory=list)
    end_s: list[float] = field(default_factory=list)
    """Seconds since the run's first frame (live runs only)."""
    greedy_returns: list[float] = field(default_factory=list)
    """In-process runs: the final network's greedy returns, played on after training."""

    def last_mean(self, count: int = LAST_EPISODES) -> float:
        return statistics.fmean(self.returns[-count:]) if self.returns else float("nan")


# -- in process ---------------------------------------------------------------------------------------


def settings_for(algorithm: str, seed: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **COMMON,
        **HYPERPARAMETERS[algorithm],
        "RTRL_ALGORITHM": algorithm,
        "RTRL_SEED": str(seed),
        **(extra or {}),
    }


def in_process(
    algorithm: str,
    seed: int,
    frames: int,
    updates: int,
    extra: dict[str, str] | None = None,
    greedy_episodes: int = GREEDY_EPISODES,
) -> Curve:
    """The learner's algorithm, fed by the simulated clock (d = 1) in this process, for `frames` frames and
    `updates` updates spread evenly over them; then `greedy_episodes` of its final network acting greedily."""
    env = {"RTRL_ENV": ENV, **settings_for(algorithm, seed, extra)}
    gateway_settings = GatewaySettings.from_env(env)
    learner_settings = LearnerSettings.from_env(env)
    backend = make_backend(gateway_settings)
    preprocessor = make_preprocessor(gateway_settings, backend)
    shape = preprocessor.observation_shape(gateway_settings.frame_stack)
    algorithm_class = ALGORITHMS[algorithm]
    config = learner_settings.config
    model_config = default_model_config(shape, backend.action_count, head=algorithm_class.head)
    learner = algorithm_class(config, model_config, "cpu", seed)
    source = learner.make_source(shape, preprocessor.dtype, seed)
    network = learner.q_network if algorithm_class.head == "q" else learner.network  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed + 1000)
    env_steps = 0
    greedy = False

    def act(sample: ObservationSample) -> Future[ActionReply | None]:
        observation = torch.from_numpy(preprocessor.stack(sample.frames)).unsqueeze(0)
        with torch.no_grad():
            outputs = network(observation)
        if greedy:
            values = outputs if algorithm_class.head == "q" else outputs[0]
            return completed(ActionReply(int(values.argmax(dim=1).item()), learner.updates, 0.0))
        if algorithm_class.head == "q":
            epsilon = algorithm_class.exploration(config, env_steps)
            action, _, log_prob = epsilon_greedy(outputs[0].tolist(), epsilon, rng)
        else:
            action, log_prob = sample_softmax(outputs[0][0].numpy(), rng)
        return completed(ActionReply(action, learner.updates, log_prob))

    def publish(record: StepRecord) -> bool:
        nonlocal env_steps
        if not greedy:
            source.add(record.to_transition(preprocessor))
            env_steps += 1
        return True

    clock_config = ClockConfig.from_settings(gateway_settings, backend.native_frame_rate_hz)
    timing = SimulatedTiming(1, "async")
    clock_config = replace(clock_config, decision_interval_frames=1, lead_frames=1, max_staleness_frames=1)
    clock = SimulatedClock(backend, clock_config, timing, request_action=act, publish=publish)
    curve = Curve()
    try:
        while clock.frame < frames:
            episodes = clock.episodes
            clock.tick()
            if clock.episodes > episodes:
                curve.returns.append(clock.last_episode_return)
                curve.end_frames.append(clock.frame)
            due = round(updates * clock.frame / frames)
            while learner.updates < due and learner.ready(source):
                learner.update(learner.sample(source))
        # The episode in progress, partly played by the training policy, is not counted; whole greedy ones are.
        greedy, mixed = True, clock.episodes + 1
        while len(curve.greedy_returns) < greedy_episodes:
            before = clock.episodes
            clock.tick()
            if clock.episodes > before and clock.episodes > mixed:
                curve.greedy_returns.append(clock.last_episode_return)
    finally:
        backend.close()
    return curve


# -- live --------------------------------------------------------------------------------------------


@dataclass
class LiveRun:
    """One `rtrl up` run and what it measured."""

    algorithm: str
    seed: int
    minutes: float
    curve: Curve
    frames: int
    decisions: int
    coverage: float
    frame_rate_hz: float
    updates: int
    greedy_returns: list[float]
    in_process: Curve | None = None


def live(algorithm: str, seed: int, minutes: float, workdir: Path, extra: dict[str, str], learner_cpus: str) -> LiveRun:
    """`rtrl up` on CartPole for `minutes`, then `rtrl play --greedy` of its final checkpoint."""
    directory = workdir / f"{algorithm}-{seed}"
    checkpoints, runs, summary_path = directory / "checkpoints", directory / "runs", directory / "summary.json"
    # A run cut short before leaves its checkpoints behind, which rtrl up would resume from: start afresh.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    settings = settings_for(algorithm, seed, extra)
    command = [
        sys.executable, "-m", "rtrl.cli", "up", "--env", ENV,
        "--duration", str(minutes * 60), "--inference-replicas", "2",
        "--checkpoint-dir", str(checkpoints), "--run-dir", str(runs), "--summary-json", str(summary_path),
        "--no-dashboard", "--metrics-base-port", "-1",
        "--gateway-port", str(free_port()), "--learner-port", str(free_port()),
        "--inference-base-port", str(free_ports_in_a_row(2)),
    ]  # fmt: skip
    if learner_cpus:
        command += ["--learner-cpus", learner_cpus]
    for name, value in settings.items():
        command += ["--set", f"{name}={value}"]
    with (directory / "rtrl-up.log").open("w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=minutes * 60 + 300, check=True)
    summary = json.loads(summary_path.read_text())
    [run_dir] = [path for path in runs.iterdir() if not path.is_symlink()]
    curve = read_episode_log(run_dir / "episodes.jsonl")
    # latest.json is the final checkpoint's metadata: every update the learner made, the last ones included.
    final_checkpoint = json.loads((checkpoints / "latest.json").read_text())
    gateway = summary["gateway"]
    return LiveRun(
        algorithm=algorithm,
        seed=seed,
        minutes=minutes,
        curve=curve,
        frames=int(gateway["frames"]),
        decisions=int(gateway["decisions"]),
        coverage=float(gateway["coverage"]),
        frame_rate_hz=float(gateway["measured_frame_rate_hz"]),
        updates=int(final_checkpoint["updates"]),
        greedy_returns=greedy_returns(checkpoints, settings, seed),
    )


def read_episode_log(path: Path) -> Curve:
    """The gateway's episodes as a curve; wall time from the first frame, which the first episode's end dates."""
    episodes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    curve = Curve()
    if not episodes:
        return curve
    first = episodes[0]
    start_ms = first["end_unix_ms"] - first["end_frame"] * 1000.0 / 50.0
    for episode in episodes:
        curve.returns.append(float(episode["episode_return"]))
        curve.end_frames.append(int(episode["end_frame"]) + 1)
        curve.end_s.append((episode["end_unix_ms"] - start_ms) / 1000.0)
    return curve


def greedy_returns(
    checkpoints: Path, settings: dict[str, str], seed: int, episodes: int = GREEDY_EPISODES
) -> list[float]:
    """`rtrl play --greedy --fast` of the newest checkpoint: the returns of `episodes` episodes."""
    command = [
        sys.executable, "-m", "rtrl.cli", "play", "--env", ENV, "--checkpoint-dir", str(checkpoints),
        "--episodes", str(episodes), "--greedy", "--fast", "--json",
    ]  # fmt: skip
    for name, value in {**settings, "RTRL_SEED": str(1000 + seed)}.items():
        command += ["--set", f"{name}={value}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    played = json.loads(result.stdout.strip().splitlines()[-1])
    return [float(episode["return"]) for episode in played["episodes"]]


def from_json(data: dict[str, Any]) -> LiveRun:
    """A LiveRun as `asdict` wrote it."""
    curves = {name: Curve(**data[name]) if data.get(name) else None for name in ("curve", "in_process")}
    return LiveRun(**{**data, **curves})  # type: ignore[arg-type]


# -- report --------------------------------------------------------------------------------------------

DOCS = REPO_ROOT / "docs"
SECTION_BEGIN = "<!-- bench/learning_live.py: begin -->"
SECTION_END = "<!-- bench/learning_live.py: end -->"
# RLlib 2.60's PPO with its defaults on the same realtime CartPole, 10 minutes (issue 17): its mean over
# the last 20 episodes; drawn as a reference line.
RLLIB_PPO_LAST_20 = 315.0


def table(runs: list[LiveRun]) -> str:
    lines = [
        f"| algorithm | seed | frames | updates | coverage | live: last {LAST_EPISODES} episodes "
        f"| greedy ({GREEDY_EPISODES} episodes) | in-process: last {LAST_EPISODES} | in-process: greedy "
        "| live / in-process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        live_mean = run.curve.last_mean()
        in_process_mean = run.in_process.last_mean() if run.in_process else float("nan")
        in_process_greedy = run.in_process.greedy_returns if run.in_process else []
        lines.append(
            f"| {run.algorithm} | {run.seed} | {run.frames:,} | {run.updates:,} | {run.coverage:.2%} "
            f"| {live_mean:.1f} | {statistics.fmean(run.greedy_returns):.1f} | {in_process_mean:.1f} "
            f"| {statistics.fmean(in_process_greedy) if in_process_greedy else float('nan'):.1f} "
            f"| {live_mean / in_process_mean:.2f} |"
        )
    return "\n".join(lines)


def summary_table(runs: list[LiveRun]) -> str:
    lines = [
        f"| algorithm | seeds | live: last {LAST_EPISODES}, each seed | seeds >= 350 | greedy, each seed "
        "| seeds >= 195 greedy | live / in-process (mean returns) | coverage (lowest) |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for algorithm in dict.fromkeys(run.algorithm for run in runs):
        mine = [run for run in runs if run.algorithm == algorithm]
        live_means = [run.curve.last_mean() for run in mine]
        greedy = [statistics.fmean(run.greedy_returns) for run in mine]
        in_process = [run.in_process.last_mean() for run in mine if run.in_process]
        ratio = statistics.fmean(live_means) / statistics.fmean(in_process) if in_process else float("nan")
        lines.append(
            f"| {algorithm} | {len(mine)} | {', '.join(f'{m:.0f}' for m in live_means)} "
            f"| {sum(m >= 350 for m in live_means)} | {', '.join(f'{g:.0f}' for g in greedy)} "
            f"| {sum(g >= 195 for g in greedy)} | {ratio:.2f} | {min(run.coverage for run in mine):.2%} |"
        )
    return "\n".join(lines)


def rolling(values: list[float], window: int = LAST_EPISODES) -> list[float]:
    return [statistics.fmean(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))]


def plot(runs: list[LiveRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"dqn": "tab:blue", "vtrace": "tab:orange", "ppo": "tab:green"}
    figure, (by_time, by_frames) = plt.subplots(1, 2, figsize=(13, 4.8))
    for run in runs:
        colour = colours.get(run.algorithm, "tab:gray")
        label = f"{run.algorithm}" if run.seed == min(r.seed for r in runs if r.algorithm == run.algorithm) else None
        minutes = [s / 60.0 for s in run.curve.end_s]
        by_time.plot(minutes, rolling(run.curve.returns), color=colour, alpha=0.8, label=label)
        by_frames.plot(run.curve.end_frames, rolling(run.curve.returns), color=colour, alpha=0.8, label=label)
        if run.in_process:
            by_frames.plot(
                run.in_process.end_frames, rolling(run.in_process.returns), color=colour, alpha=0.5, linestyle=":"
            )
    by_time.axhline(RLLIB_PPO_LAST_20, color="black", linestyle="--", linewidth=1, label="RLlib PPO at 10 min")
    by_time.set(xlabel="wall clock (minutes)", ylabel=f"episode return, mean of the last {LAST_EPISODES}")
    by_time.set_title("live: rtrl up, CartPole-v1 at 50 fps, repeat-last fallback")
    by_frames.set(xlabel="frames", ylabel=f"episode return, mean of the last {LAST_EPISODES}")
    by_frames.set_title("live (solid) and in-process (dotted) at the same frames and updates")
    for axes in (by_time, by_frames):
        axes.set_ylim(0, 510)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_docs(runs: list[LiveRun], command: str) -> None:
    (DOCS / "learning-live.json").write_text(json.dumps([asdict(run) for run in runs], separators=(",", ":")) + "\n")
    plot(runs, DOCS / "learning-live.png")
    section = f"""{SECTION_BEGIN}
Measured on {time.strftime("%Y-%m-%d")} on this project's 2-core machine: {len(runs)} live runs of \
{statistics.fmean(run.minutes for run in runs):g} minutes, each followed by its greedy evaluation and its \
in-process twin:

    {command}

{summary_table(runs)}

Every run:

{table(runs)}

![episode return against wall-clock minutes and against frames, each algorithm and seed](learning-live.png)

The curves are the gateways' episode logs ([learning-live.json](learning-live.json) has every episode).
{SECTION_END}"""
    path = DOCS / "learning.md"
    text = path.read_text()
    if SECTION_BEGIN in text:
        before, rest = text.split(SECTION_BEGIN, 1)
        after = rest.split(SECTION_END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall clock of each live run")
    parser.add_argument(
        "--learner-cpus", default="", help="rtrl up --learner-cpus for the live runs (default: no pinning)"
    )
    parser.add_argument("--in-process-only", action="store_true", help="only the in-process learner (tuning)")
    parser.add_argument("--frames", type=int, default=30_000, help="frames of an in-process-only run")
    parser.add_argument("--updates-per-frame", type=float, default=4.0, help="updates per frame, in-process only")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="RTRL_NAME=VALUE")
    parser.add_argument("--no-docs", action="store_true", help="print the tables only; leave docs/ as they are")
    parser.add_argument(
        "--workdir", help="keep runs, logs and checkpoints here; runs already measured in it are not run again"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    extra = dict(item.split("=", 1) for item in args.extra)
    if args.in_process_only:
        for algorithm in args.algorithms:
            for seed in args.seeds:
                started = time.monotonic()
                curve = in_process(algorithm, seed, args.frames, round(args.frames * args.updates_per_frame), extra)
                print(
                    f"{algorithm} seed {seed}: {len(curve.returns)} episodes, last {LAST_EPISODES} mean "
                    f"{curve.last_mean():.1f}, best {max(curve.returns, default=0):.0f}, greedy "
                    f"{statistics.fmean(curve.greedy_returns):.1f}, {time.monotonic() - started:.0f} s",
                    flush=True,
                )
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="learning-live-"))
    finished = workdir / "runs.jsonl"
    runs = [from_json(json.loads(line)) for line in finished.read_text().splitlines()] if finished.exists() else []
    done = {(run.algorithm, run.seed) for run in runs}
    print(f"runs, their logs and checkpoints in {workdir}", flush=True)
    for algorithm in args.algorithms:
        for seed in args.seeds:
            if (algorithm, seed) in done:
                continue  # measured by an earlier invocation with this --workdir
            try:
                run = live(algorithm, seed, args.minutes, workdir, extra, args.learner_cpus)
            except subprocess.SubprocessError as e:
                print(f"{algorithm} seed {seed}: the live run failed ({e}); see {workdir}", flush=True)
                continue
            run.in_process = in_process(algorithm, seed, run.frames, run.updates, extra)
            runs.append(run)
            with finished.open("a") as out:
                out.write(json.dumps(asdict(run)) + "\n")
            print(
                f"{algorithm} seed {seed}: live {len(run.curve.returns)} episodes, last {LAST_EPISODES} "
                f"{run.curve.last_mean():.1f}, greedy {statistics.fmean(run.greedy_returns):.1f}, coverage "
                f"{run.coverage:.2%}, {run.frames} frames, {run.updates} updates; in-process last "
                f"{LAST_EPISODES} {run.in_process.last_mean():.1f}",
                flush=True,
            )
    runs = [run for run in runs if run.algorithm in args.algorithms and run.seed in args.seeds]
    print()
    print(summary_table(runs))
    print()
    print(table(runs))
    if not args.no_docs:
        command = "python bench/learning_live.py " + " ".join(sys.argv[1:])
        write_docs(runs, command.strip())
        print(f"\nwrote {DOCS / 'learning.md'}, learning-live.png and learning-live.json")


if __name__ == "__main__":
    main()
