"""TensorBoard event files from the learner: losses, episode returns, policy lag, throughput, hyperparameters.

`TensorBoardLog` samples `Learner.status()` and takes the finished episodes every
RTRL_LEARNER_TENSORBOARD_INTERVAL_S on a thread of its own, so the training thread never writes or
flushes a file: tensorboardX queues the events and its own writer thread flushes them every
`FLUSH_S` seconds. Scalars are stepped by the learner's update count (returns by environment steps,
as CleanRL does); the hyperparameters go in as text at start and as an hparams session (with the final
metrics) at stop, under `<dir>/hparams`. `tensorboard --logdir runs/` shows every run of `rtrl up`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tensorboardX import SummaryWriter

if TYPE_CHECKING:
    from rtrl.services.learner.loop import Learner, LearnerStatus

log = logging.getLogger(__name__)

FLUSH_S = 2
RETURNS_FOR_MEAN = 100


class TensorBoardLog:
    """Writes one learner's event files into `directory`; `start()`, then `stop()` (which writes hparams)."""

    def __init__(self, learner: Learner, directory: str | Path, interval_s: float = 1.0) -> None:
        self.learner = learner
        self.directory = Path(directory)
        self.interval_s = interval_s
        self.writer = SummaryWriter(logdir=str(self.directory), flush_secs=FLUSH_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tensorboard", daemon=True)
        self._last_consumed: int | None = None
        self._last_sample_s = 0.0
        self._recent_returns: list[float] = []
        self.episodes_written = 0
        self.samples_written = 0

    def hyperparameters(self) -> dict[str, bool | str | float | int]:
        """The algorithm's hyperparameters and the learner settings that shape training, as scalars."""
        settings = self.learner.settings
        values: dict[str, Any] = {
            "algorithm": settings.algorithm,
            "mode": settings.mode,
            "checkpoint_every_updates": settings.checkpoint_every_updates,
            "max_policy_lag_versions": settings.max_policy_lag_versions,
            "seed": settings.seed,
            **asdict(self.learner.config),
        }
        return {k: v if isinstance(v, bool | str | float | int) else str(v) for k, v in values.items()}

    def start(self) -> None:
        table = "\n".join(f"|{name}|{value}|" for name, value in self.hyperparameters().items())
        self.writer.add_text("hyperparameters", f"|name|value|\n|-|-|\n{table}", 0)
        self._thread.start()
        log.info("TensorBoard event files in %s (every %.1f s)", self.directory, self.interval_s)

    def stop(self) -> None:
        """Writes a last sample and the hparams session, then closes the files."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)
        status = self.write_sample()
        recent = self._recent_returns[-RETURNS_FOR_MEAN:]
        self.writer.add_hparams(
            self.hyperparameters(),
            {
                "hparam/mean_episode_return": float(np.mean(recent)) if recent else 0.0,
                "hparam/updates": float(status.updates),
                "hparam/updates_per_s": status.updates_per_s,
            },
            name="hparams",
        )
        self.writer.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.write_sample()
            except Exception:  # a full disk must not end the learner; say so and keep trying
                log.exception("could not write TensorBoard events to %s", self.directory)

    def write_sample(self) -> LearnerStatus:
        """One sample of the learner's status and the episodes finished since the last one."""
        status = self.learner.status()
        now_s = time.monotonic()
        step = status.updates
        w = self.writer
        w.add_scalar("losses/loss", status.loss, step)
        for name, value in status.metrics.items():
            if name != "loss":
                w.add_scalar(f"losses/{name}", value, step)
        w.add_scalar("throughput/updates_per_s", status.updates_per_s, step)
        if self._last_consumed is not None and now_s > self._last_sample_s:
            consumed = status.transitions_consumed - self._last_consumed
            w.add_scalar("throughput/transitions_per_s", consumed / (now_s - self._last_sample_s), step)
        self._last_consumed, self._last_sample_s = status.transitions_consumed, now_s
        w.add_scalar("checkpoints/version", status.checkpoint_version, step)
        w.add_scalar("exploration/epsilon", status.epsilon, step)
        w.add_scalar("replay/size", status.replay_size, step)
        w.add_scalar("stream/length", status.stream_length, step)
        w.add_scalar("stream/lag_entries", status.stream_lag, step)
        lag = status.lag
        if lag is not None:
            w.add_scalar("policy_lag/versions_mean", lag.version_lag_mean, step)
            w.add_scalar("policy_lag/versions_max", lag.version_lag_max, step)
            w.add_scalar("policy_lag/ms_mean", lag.lag_ms_mean, step)
            w.add_scalar("policy_lag/ms_p99", lag.lag_ms_p99, step)
            w.add_scalar("policy_lag/staleness_frames_mean", lag.staleness_frames_mean, step)
            w.add_scalar("policy_lag/fallback_fraction", lag.fallback_fraction, step)
        for episode in self.learner.episodes.take():
            w.add_scalar("charts/episode_return", episode.episode_return, status.env_steps)
            w.add_scalar("charts/episode_length", episode.steps, status.env_steps)
            self._recent_returns = [*self._recent_returns[-RETURNS_FOR_MEAN + 1 :], episode.episode_return]
            self.episodes_written += 1
        self.samples_written += 1
        return status


def start_tensorboard(learner: Learner) -> TensorBoardLog | None:
    """A started TensorBoardLog when RTRL_LEARNER_TENSORBOARD_DIR is set, else None."""
    settings = learner.settings
    if not settings.tensorboard_dir:
        return None
    tensorboard = TensorBoardLog(learner, settings.tensorboard_dir, settings.tensorboard_interval_s)
    tensorboard.start()
    return tensorboard
