"""Recordings during training (`rtrl up --record-every`): greedy evaluations of the checkpoints as they come.

Every interval, when the learner has published a newer checkpoint than the last one recorded, `rtrl play`
plays one greedy episode of it as fast as it can and records it to `<recordings>/v<version>.gif` (a GIF:
the dashboard's link shows it in the browser); its return and length are appended as one JSON line to
`<recordings>/index.jsonl`, which the dashboard reads. The player is a process of its own at nice 19
(with `--learner-cpus`, on the other CPUs, through RTRL_CPUS), and only one runs at a time: when the next
is due while one still plays, that turn is skipped. A recording that fails is logged with the end of its
output, its version is not tried again, and the run goes on.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rtrl.orphans import dies_with_parent

log = logging.getLogger(__name__)

INDEX = "index.jsonl"
PLAY_COMMAND = (sys.executable, "-m", "rtrl.cli", "play")
# The lowest CPU priority: a recording uses only what acting, inference and learning leave.
RECORDING_NICE = 19
# How often the scheduler looks at a running recording (it is collected this long after it ends at most).
POLL_S = 0.5
STOP_TIMEOUT_S = 10.0
STDERR_TAIL_LINES = 15


@dataclass(frozen=True)
class RecordingEntry:
    """One line of index.jsonl."""

    checkpoint_version: int
    episode_return: float
    frames: int
    path: str
    unix_ms: int

    def to_json(self) -> dict[str, object]:
        return {
            "checkpoint_version": self.checkpoint_version,
            "return": self.episode_return,
            "frames": self.frames,
            "path": self.path,
            "unix_ms": self.unix_ms,
        }


@dataclass
class _Running:
    version: int
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path


class RecordingScheduler:
    """Starts `rtrl play` for each newer checkpoint, at most every `interval_s` and one at a time."""

    def __init__(
        self,
        *,
        env: str,
        checkpoint_dir: Path,
        directory: Path,
        log_dir: Path,
        interval_s: float,
        child_env: Mapping[str, str],
        play_command: Sequence[str] = PLAY_COMMAND,
        on_recorded: Callable[[RecordingEntry], None] | None = None,
        now_s: Callable[[], float] = time.monotonic,
    ) -> None:
        # Imported here: the dashboard reads the index with this module and never needs torch.
        from rtrl.checkpoints import CheckpointStore

        self.env = env
        self.store = CheckpointStore(checkpoint_dir)
        self.checkpoint_dir = checkpoint_dir
        self.directory = directory
        self.log_dir = log_dir
        self.interval_s = interval_s
        self.child_env = dict(child_env)
        self.play_command = list(play_command)
        self.on_recorded = on_recorded
        self._now_s = now_s
        self._next_due_s = now_s() + interval_s
        self._running: _Running | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_tried_version = 0
        """Newest version a recording was started for (succeeded or not): only newer ones are recorded."""
        self.recorded = 0
        self.failures = 0
        self.skipped_busy = 0
        """Turns that came while a recording still played."""

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX

    def command(self) -> list[str]:
        """The `rtrl play` command line of one recording; {version} becomes the version it plays."""
        return [
            *self.play_command,
            "--env", self.env,
            "--checkpoint-dir", str(self.checkpoint_dir),
            "--episodes", "1",
            "--greedy",
            "--fast",
            "--json",
            "--nice", str(RECORDING_NICE),
            "--record", str(self.directory / "v{version}.gif"),
        ]  # fmt: skip

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recordings", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except Exception:
                # The recordings are a by-product of training: whatever goes wrong here must not end the run.
                log.exception("the recording scheduler failed; the run goes on without recordings")
                return

    def stop(self) -> None:
        """Ends the scheduler and a recording still playing (its partial video is removed by `rtrl play`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        running = self._running
        if running is not None and running.process.poll() is None:
            running.process.terminate()
            try:
                running.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
        self._running = None

    def poll(self) -> None:
        """Collects a recording that ended, and starts one when it is due and a newer checkpoint exists."""
        running = self._running
        if running is not None and running.process.poll() is not None:
            self._running = None
            self._collect(running)
        now_s = self._now_s()
        if now_s < self._next_due_s:
            return
        from rtrl.checkpoints import CheckpointError

        self._next_due_s = now_s + self.interval_s
        if self._running is not None:
            self.skipped_busy += 1
            return
        try:
            checkpoint = self.store.latest()
        except CheckpointError as e:
            log.warning("no recording this time: %s", e)
            return
        if checkpoint is None or checkpoint.version <= self.last_tried_version:
            return
        self.last_tried_version = checkpoint.version
        self._running = self._spawn(checkpoint.version)

    @property
    def busy(self) -> bool:
        """Whether a recording was started and not yet collected (it may have ended since the last poll)."""
        return self._running is not None

    def _spawn(self, version: int) -> _Running:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stdout_path = self.log_dir / "recording.stdout"
        stderr_path = self.log_dir / "recording.log"
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                self.command(),
                env=self.child_env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                # Its own session: Ctrl-C reaches `rtrl up`, which stops it in order. And SIGTERM when `rtrl up`
                # dies, or this scheduler's thread ends (where stop() would end it anyway).
                start_new_session=True,
                **dies_with_parent(),
            )
        return _Running(version, process, stdout_path, stderr_path)

    def _collect(self, running: _Running) -> None:
        code = running.process.returncode
        problem = f"it exited with code {code}"
        entry = None
        if code == 0:
            try:
                entry = self._entry(running)
            except ValueError as e:
                problem = str(e)
        if entry is None:
            self.failures += 1
            log.warning(
                "the recording of checkpoint %d failed (%s); the run goes on. End of its output (%s):\n%s",
                running.version,
                problem,
                running.stderr_path,
                _tail(running.stderr_path),
            )
            return
        with open(self.index_path, "a") as index:
            _append_line(index, json.dumps(entry.to_json()))
        # `rtrl play` plays the newest version when it starts, which may be newer than the one that was due.
        self.last_tried_version = max(self.last_tried_version, entry.checkpoint_version)
        self.recorded += 1
        if self.on_recorded is not None:
            self.on_recorded(entry)

    def _entry(self, running: _Running) -> RecordingEntry:
        """The index line of a recording from the JSON `rtrl play --json` printed last; ValueError if it has none."""
        lines = running.stdout_path.read_text(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
            [episode] = result["episodes"]
            return RecordingEntry(
                checkpoint_version=int(result["checkpoint_version"]),
                episode_return=float(episode["return"]),
                frames=int(episode["frames"]),
                path=str(result["record"]),
                unix_ms=int(time.time() * 1000),
            )
        except (IndexError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"its output does not end with the JSON of one episode ({e!r})") from None


def _append_line(file: IO[str], line: str) -> None:
    # One write per line, so a reader sees whole lines or a partial last one it skips.
    file.write(line + "\n")
    file.flush()


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(nothing)"
    except OSError:
        return "(no output)"


def read_index(path: Path) -> list[dict[str, object]]:
    """The entries of an index.jsonl, oldest first; lines that are not JSON objects (a line being written) are
    left out."""
    entries = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
