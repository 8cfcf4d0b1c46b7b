"""`rtrl play`: the newest checkpoint plays its game as training plays it, for its returns, a video, or both.

The game, its observation and the step structure (k, L, frame stack, fallback) come from the gateway's own
RTRL_* settings and the real RealtimeClock steps it. Only inference is replaced: each sampled observation's
action is computed on the clock's thread at once and offered to the clock's mailbox (no jitter reserve), so
every decision acts on its own observation exactly L frames later, the step structure training aims at with
replicas. Without `--fast` the clock runs at the game's frame rate; with it, back to back.

Errors: `PlayError` is bad input (the message says what to change); the CLI prints it, and the settings and
checkpoint errors it meets, as one sentence and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np

from rtrl.acting import epsilon_greedy, sample_softmax
from rtrl.config import PREFIX, SettingsError, env_int

RECORD_SUFFIXES = (".mp4", ".gif")
# `--record` may name the file after the checkpoint it plays (rtrl up --record-every does).
VERSION_PLACEHOLDER = "{version}"
# A GIF is written by Pillow from frames it holds in memory: at most this wide, at most this many frames a
# second of game time, and at most this many frames (a minute at 25 fps, about 100 MB at 320x213).
GIF_MAX_WIDTH = 320
GIF_MAX_FPS = 25.0
GIF_MAX_FRAMES = 1500
# Exit code after Ctrl-C or SIGTERM, as a shell reports a process ended by SIGINT.
INTERRUPTED_EXIT_CODE = 130


class PlayError(ValueError):
    """The command cannot play as asked; the message says what to change."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop, and leave no partial video behind."""


@dataclass(frozen=True)
class PlayOptions:
    """What `rtrl play` does; the CLI fills this from its flags."""

    env: str
    checkpoint_dir: Path
    episodes: int = 10
    greedy: bool = False
    fast: bool = False
    record: Path | None = None
    """A .mp4 or .gif to write; {version} in it becomes the version played."""
    json_output: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    """RTRL_* values from --set, over the process environment (RTRL_ENV comes from `env`)."""
    nice: int = 0
    """Niceness added to this process first (rtrl up's recordings: 19, the lowest priority)."""


@dataclass
class EpisodeResult:
    """One played episode, as the clock and the steps it published saw it."""

    episode: int
    episode_return: float
    frames: int
    decisions: int = 0
    fresh_decisions: int = 0
    actions: list[int] = field(default_factory=list)
    """Decision steps that applied each action."""

    def to_json(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "return": self.episode_return,
            "frames": self.frames,
            "decisions": self.decisions,
            "fresh_decisions": self.fresh_decisions,
            "actions": self.actions,
        }


# -- the policy ------------------------------------------------------------------------------------


class CheckpointPolicy:
    """The checkpoint's network choosing one action per observation: greedily, or as a replica would
    (epsilon-greedy with the checkpoint's epsilon for a Q-network, sampling the softmax for an actor-critic)."""

    def __init__(self, model: Any, head: str, version: int, epsilon: float, greedy: bool, seed: int) -> None:
        self.model = model
        self.head = head
        self.version = version
        self.epsilon = 0.0 if greedy or head != "q" else epsilon
        self.greedy = greedy
        self._rng = np.random.default_rng(seed)

    def act(self, observation: np.ndarray) -> tuple[int, float]:
        """(action, log-probability of it under the policy that chose it) for one observation."""
        import torch

        with torch.inference_mode():
            outputs = self.model(torch.from_numpy(observation[np.newaxis]))
        values = (outputs[0] if self.head == "actor_critic" else outputs)[0].float().numpy()
        if not np.isfinite(values).all():
            raise PlayError(
                f"checkpoint {self.version} gives non-finite outputs for an observation; it cannot be played, "
                "check the learner's loss and play an earlier checkpoint."
            )
        if self.greedy:
            return int(np.argmax(values)), 0.0
        if self.head == "actor_critic":
            return sample_softmax(values, self._rng)
        # As rtrl/services/inference/policy.py explores, so a recording shows what a replica would do.
        action, _, log_prob = epsilon_greedy(values.tolist(), self.epsilon, self._rng)
        return action, log_prob


def shape_advice(trained: tuple[int, ...], played: tuple[int, ...], observation_kind: str) -> str:
    """What makes the game's observations `played` the `trained` ones a checkpoint takes, as a clause."""
    how = "with --set NAME=VALUE, as it was trained"
    if len(trained) != len(played):
        kind = "pixels" if len(trained) == 3 else "state"
        return f"it was trained from {kind}: set {PREFIX}OBSERVATION={kind} ({how})"
    if observation_kind == "state":
        if trained[1] != played[1]:
            return "it was trained on a game with another state size: pass the --env it was trained on"
        return f"set {PREFIX}FRAME_STACK={trained[0]} ({how})"
    names = []
    if trained[1] != played[1]:
        names.append(f"{PREFIX}OBS_HEIGHT={trained[1]}")
    if trained[2] != played[2]:
        names.append(f"{PREFIX}OBS_WIDTH={trained[2]}")
    if trained[0] != played[0]:
        names.append(f"{PREFIX}FRAME_STACK and {PREFIX}OBS_GRAYSCALE to give {trained[0]} channels")
    return "set " + " and ".join(names) + f" ({how})"


def in_play_terms(message: str) -> str:
    """A settings message about RTRL_ENV in the words of `rtrl play`, whose --env sets it."""
    return message.replace(f"set {PREFIX}ENV to", "pass --env").replace(f"{PREFIX}ENV=", "--env ")


# -- recording -------------------------------------------------------------------------------------


class Recorder(Protocol):
    """A video being written to a temporary file, renamed into place by `finish` (removed by `abort`).

    The clock calls `wants_frame` once per frame and `add` only when it says yes, so a game played from its
    state renders only the frames a video keeps."""

    def wants_frame(self) -> bool: ...

    def add(self, rgb: np.ndarray) -> None: ...

    def finish(self) -> Path: ...

    def abort(self) -> None: ...


def _temporary_beside(path: Path) -> Path:
    """A hidden name next to `path`, ending in its suffix (OpenCV picks the container from it); the writer
    creates the file, so it gets the usual permissions."""
    return path.parent / f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial{path.suffix}"


class Mp4Recorder:
    """Every frame, at the game's frame rate, with OpenCV's mp4v encoder."""

    def __init__(self, path: Path, frame_rate_hz: float) -> None:
        self.path = path
        self.frame_rate_hz = frame_rate_hz
        self.temporary = _temporary_beside(path)
        self.frames = 0
        self._writer: Any = None
        self._size: tuple[int, int] = (0, 0)

    def wants_frame(self) -> bool:
        return True

    def add(self, rgb: np.ndarray) -> None:
        import cv2

        height, width = rgb.shape[:2]
        if self._writer is None:
            # mp4v wants even sides; a game with an odd one gets a black line.
            self._size = (width + width % 2, height + height % 2)
            self._writer = cv2.VideoWriter(
                str(self.temporary), cv2.VideoWriter.fourcc(*"mp4v"), self.frame_rate_hz, self._size
            )
            if not self._writer.isOpened():
                raise PlayError(f"OpenCV cannot write an mp4 video to {self.temporary}; record to a .gif instead.")
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if (width, height) != self._size:
            bgr = cv2.copyMakeBorder(bgr, 0, self._size[1] - height, 0, self._size[0] - width, cv2.BORDER_CONSTANT)
        self._writer.write(bgr)
        self.frames += 1

    def finish(self) -> Path:
        if self._writer is not None:
            self._writer.release()
        os.replace(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
        self.temporary.unlink(missing_ok=True)


class GifRecorder:
    """Every n-th frame (at most GIF_MAX_FPS a second of game time), at most GIF_MAX_WIDTH wide, kept as
    palette images until Pillow writes them at the end; past GIF_MAX_FRAMES the rest is left out."""

    def __init__(self, path: Path, frame_rate_hz: float) -> None:
        self.path = path
        self.temporary = _temporary_beside(path)
        self.every = max(1, math.ceil(frame_rate_hz / GIF_MAX_FPS))
        self.frame_ms = round(1000.0 * self.every / frame_rate_hz)
        self.seen = 0
        self.images: list[Any] = []

    @property
    def truncated(self) -> bool:
        return len(self.images) >= GIF_MAX_FRAMES

    def wants_frame(self) -> bool:
        index = self.seen
        self.seen += 1
        return index % self.every == 0 and not self.truncated

    def add(self, rgb: np.ndarray) -> None:
        from PIL import Image

        image = Image.fromarray(rgb)
        if image.width > GIF_MAX_WIDTH:
            image = image.resize(
                (GIF_MAX_WIDTH, round(image.height * GIF_MAX_WIDTH / image.width)), Image.Resampling.BILINEAR
            )
        self.images.append(image.quantize(colors=256))

    def finish(self) -> Path:
        if self.truncated:
            seconds = GIF_MAX_FRAMES * self.frame_ms / 1000.0
            print(
                f"rtrl play: the GIF holds the first {seconds:.0f} s of play only; record to .mp4 for all of it.",
                file=sys.stderr,
            )
        first, *rest = self.images
        first.save(self.temporary, format="GIF", save_all=True, append_images=rest, duration=self.frame_ms, loop=0)
        os.replace(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        self.images.clear()
        self.temporary.unlink(missing_ok=True)


def check_record_path(path: Path) -> None:
    """Refuses a video file type that cannot be written, before anything is loaded."""
    if path.suffix.lower() not in RECORD_SUFFIXES:
        raise PlayError(
            f"--record {path}: cannot write a {path.suffix or 'suffix-less'} file; name a .mp4 (every frame) or "
            "a .gif (downscaled, at most 25 frames a second) file."
        )


def open_recorder(path: Path, frame_rate_hz: float) -> Recorder:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".gif":
            return GifRecorder(path, frame_rate_hz)
        return Mp4Recorder(path, frame_rate_hz)
    except OSError as e:
        raise PlayError(
            f"--record {path}: cannot write there ({e.strerror}); name a file in a writable directory."
        ) from None


# -- playing ---------------------------------------------------------------------------------------


@dataclass
class PlayResult:
    """What was played, as `--json` prints it."""

    env: str
    checkpoint_dir: str
    checkpoint_version: int
    algorithm: str
    head: str
    greedy: bool
    epsilon: float
    observation_shape: list[int]
    decision_interval_frames: int
    lead_frames: int
    frame_rate_hz: float
    fast: bool
    episodes: list[EpisodeResult]
    staleness_frames: list[int]
    """Every distinct staleness of a fresh decision (L alone when each action came L frames after its
    observation)."""
    seconds: float
    record: str | None

    @property
    def mean_return(self) -> float:
        return float(np.mean([e.episode_return for e in self.episodes]))

    @property
    def frames(self) -> int:
        return sum(e.frames for e in self.episodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "episodes": [e.to_json() for e in self.episodes],
            "mean_return": self.mean_return,
            "checkpoint_version": self.checkpoint_version,
            "checkpoint_dir": self.checkpoint_dir,
            "algorithm": self.algorithm,
            "head": self.head,
            "env": self.env,
            "greedy": self.greedy,
            "epsilon": self.epsilon,
            "observation_shape": self.observation_shape,
            "decision_interval_frames": self.decision_interval_frames,
            "lead_frames": self.lead_frames,
            "frame_rate_hz": self.frame_rate_hz,
            "fast": self.fast,
            "frames": self.frames,
            "staleness_frames": self.staleness_frames,
            "seconds": round(self.seconds, 3),
            "frames_per_second": round(self.frames / self.seconds, 1) if self.seconds > 0 else None,
            "record": self.record,
        }


def play(options: PlayOptions, on_episode: Callable[[EpisodeResult], None] | None = None) -> PlayResult:
    """Plays `options.episodes` episodes of the newest checkpoint; raises PlayError, SettingsError or
    CheckpointError for bad input, BackendError when the game fails, Interrupted when stopped."""
    # Imported here: `rtrl --help` and the other commands should not pay for torch and the emulators.
    import torch

    from rtrl.checkpoints import CheckpointStore
    from rtrl.models import ModelConfig, build_model
    from rtrl.services.env_gateway.backends import make_backend
    from rtrl.services.env_gateway.clock import ClockConfig, ObservationSample, RealtimeClock, StepRecord, ViewerFrame
    from rtrl.services.env_gateway.mailbox import ActionMailbox, ActionReply
    from rtrl.services.env_gateway.preprocess import make_preprocessor
    from rtrl.services.env_gateway.settings import EnvSpec, GatewaySettings
    from rtrl.services.inference.policy import DEFAULT_CHECKPOINT_EPSILON

    if options.episodes < 1:
        raise PlayError("--episodes must be at least 1.")
    if options.record is not None:
        check_record_path(options.record)
    if options.fast and EnvSpec.parse(options.env).kind == "desktop":
        raise PlayError(
            f"--fast cannot play {options.env}: a desktop game runs in its own window at its own speed; "
            "leave --fast out to play it in realtime."
        )
    environment = {**os.environ, **options.settings, f"{PREFIX}ENV": options.env}
    settings = GatewaySettings.from_env(environment)
    torch.set_num_threads(env_int(environment, "TORCH_THREADS", 1, minimum=1))

    store = CheckpointStore(options.checkpoint_dir)
    checkpoint = store.latest()
    if checkpoint is None:
        from rtrl.launcher import default_checkpoint_dir

        raise PlayError(
            f"no checkpoint in {options.checkpoint_dir}: the learner publishes its checkpoints there as it trains; "
            f"pass the --checkpoint-dir of a run (rtrl up uses checkpoints/<env>, for {options.env} "
            f"{default_checkpoint_dir(options.env)}) once it has published one."
        )
    try:
        config = ModelConfig.from_json(checkpoint.model_config)
    except (KeyError, TypeError, ValueError) as e:
        raise PlayError(
            f"checkpoint {checkpoint.version} in {options.checkpoint_dir} has no usable model config ({e}); "
            "it is not a checkpoint rtrl's learner wrote."
        ) from None

    backend = make_backend(settings)
    recorder: Recorder | None = None
    try:
        preprocessor = make_preprocessor(settings, backend)
        played_shape = tuple(preprocessor.observation_shape(settings.frame_stack))
        if config.observation_shape != played_shape:
            raise PlayError(
                f"checkpoint {checkpoint.version} takes observations shaped {list(config.observation_shape)}, but "
                f"{options.env} as configured gives {list(played_shape)}; "
                f"{shape_advice(config.observation_shape, played_shape, backend.observation_kind)}."
            )
        if config.action_count != backend.action_count:
            raise PlayError(
                f"checkpoint {checkpoint.version} has {config.action_count} actions, but {options.env} has "
                f"{backend.action_count}; it was trained on another game: pass the --env it was trained on."
            )
        if settings.fallback_action >= backend.action_count:
            raise PlayError(
                f"{PREFIX}FALLBACK_ACTION={settings.fallback_action} is out of range for {options.env}, which has "
                f"{backend.action_count} actions; set it between 0 and {backend.action_count - 1}."
            )
        model = build_model(config)
        try:
            model.load_state_dict(store.load_weights(checkpoint), strict=True)
        except RuntimeError as e:
            raise PlayError(
                f"checkpoint {checkpoint.version}'s weights do not fit its model config ({e}); it is not a "
                "checkpoint rtrl's learner wrote."
            ) from None
        model.eval()
        epsilon = float(checkpoint.metadata.get("epsilon", DEFAULT_CHECKPOINT_EPSILON))
        policy = CheckpointPolicy(model, config.head, checkpoint.version, epsilon, options.greedy, settings.seed)

        clock_config = ClockConfig.from_settings(settings, backend.native_frame_rate_hz)
        if options.record is not None:
            path = Path(str(options.record).replace(VERSION_PLACEHOLDER, str(checkpoint.version)))
            recorder = open_recorder(path, clock_config.frame_rate_hz)
        # No jitter reserve: every reply is in the mailbox a tick after its observation, so none is held back.
        mailbox = ActionMailbox(settings.max_staleness_frames, jitter_reserve_frames=0)
        wanted = options.episodes
        results: list[EpisodeResult] = []
        steps: dict[int, EpisodeResult] = {}
        staleness: set[int] = set()
        done = threading.Event()
        render = backend.render if backend.observation_kind == "state" else None

        def dispatch(sample: ObservationSample) -> None:
            action, log_prob = policy.act(preprocessor.stack(sample.frames))
            mailbox.offer(
                sample.episode, sample.frame_index, sample.produced_s, ActionReply(action, policy.version, log_prob)
            )

        def tally_of(episode: int) -> EpisodeResult:
            if episode not in steps:
                steps[episode] = EpisodeResult(episode + 1, 0.0, 0, actions=[0] * backend.action_count)
            return steps[episode]

        def publish(record: StepRecord) -> bool:
            if record.episode < wanted:
                tally = tally_of(record.episode)
                tally.decisions += 1
                tally.actions[record.action] += 1
                if record.fresh:
                    tally.fresh_decisions += 1
                    staleness.add(record.staleness_frames)
            return True

        def after_frame(frame: ViewerFrame) -> None:
            # Called on the clock's thread after every tick, once the episode's bookkeeping is done.
            if frame.episode >= wanted:
                return
            if recorder is not None and recorder.wants_frame():
                recorder.add(render() if render is not None else frame.rgb)
            if clock.episodes > len(results):
                result = tally_of(frame.episode)
                del steps[frame.episode]
                result.episode_return = clock.last_episode_return
                result.frames = clock.episode_frames
                results.append(result)
                if on_episode is not None:
                    on_episode(result)
                if len(results) >= wanted:
                    done.set()

        clock = RealtimeClock(
            backend, clock_config, dispatch=dispatch, publish=publish, show_frame=after_frame, mailbox=mailbox
        )
        started_s = time.monotonic()
        if options.fast:
            while not done.is_set():
                clock.run_frames(1)
        else:
            clock.start()
            try:
                while not done.wait(0.05):
                    if clock.failure is not None:
                        break
            finally:
                clock.stop()
            if clock.failure is not None and not done.is_set():
                raise clock.failure
        seconds = time.monotonic() - started_s
        written = recorder.finish() if recorder is not None else None
        recorder = None
        return PlayResult(
            env=options.env,
            checkpoint_dir=str(options.checkpoint_dir),
            checkpoint_version=checkpoint.version,
            algorithm=str(checkpoint.metadata.get("algorithm", "")),
            head=config.head,
            greedy=options.greedy,
            epsilon=policy.epsilon,
            observation_shape=list(played_shape),
            decision_interval_frames=clock_config.decision_interval_frames,
            lead_frames=clock_config.lead_frames,
            frame_rate_hz=clock_config.frame_rate_hz,
            fast=options.fast,
            episodes=results,
            staleness_frames=sorted(staleness),
            seconds=seconds,
            record=str(written) if written is not None else None,
        )
    finally:
        if recorder is not None:
            recorder.abort()
        backend.close()


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted()


def options_from(args: argparse.Namespace) -> PlayOptions:
    """The options `rtrl play` parsed (cli.py)."""
    return PlayOptions(
        env=args.env,
        checkpoint_dir=args.checkpoint_dir,
        episodes=args.episodes,
        greedy=args.greedy,
        fast=args.fast,
        record=args.record,
        json_output=args.json,
        settings=dict(args.settings),
        nice=args.nice,
    )


def main(options: PlayOptions) -> int:
    """`rtrl play`: plays, prints the returns (or one JSON object), and returns the exit code."""
    from rtrl.checkpoints import CheckpointError
    from rtrl.cpus import apply_cpus_from_env
    from rtrl.services.env_gateway.backends.base import BackendError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM (rtrl up stopping a recording) ends play as Ctrl-C does: the partial video is removed.
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        if options.nice:
            os.nice(options.nice)
        apply_cpus_from_env({**os.environ, **options.settings})

        def say_episode(result: EpisodeResult) -> None:
            if not options.json_output:
                fresh = "all fresh" if result.fresh_decisions == result.decisions else f"{result.fresh_decisions} fresh"
                print(
                    f"episode {result.episode}: return {result.episode_return:g}, {result.frames} frames, "
                    f"{result.decisions} decisions ({fresh})",
                    flush=True,
                )

        result = play(options, on_episode=say_episode)
    except SettingsError as e:
        print(f"rtrl play: {in_play_terms(str(e))}", file=sys.stderr)
        return 2
    except (PlayError, CheckpointError) as e:
        print(f"rtrl play: {e}", file=sys.stderr)
        return 2
    except BackendError as e:
        print(f"rtrl play: the game failed: {e}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt):
        written = "; no video was written" if options.record is not None else ""
        print(f"rtrl play: stopped before the last episode ended{written}.", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    if options.json_output:
        print(json.dumps(result.to_json()), flush=True)
        return 0
    mode = "greedy" if result.greedy else (f"epsilon {result.epsilon:.3g}" if result.head == "q" else "sampled")
    count = len(result.episodes)
    print(
        f"mean return over {count} episode{'' if count == 1 else 's'}: {result.mean_return:g} (checkpoint "
        f"v{result.checkpoint_version}, {mode}, {result.frames} frames in {result.seconds:.2f} s)"
    )
    if result.record is not None:
        print(f"recorded: {result.record}")
    return 0
