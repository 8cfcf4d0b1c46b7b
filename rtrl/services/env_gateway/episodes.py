"""The gateway's episode log: one JSON line per finished episode, the learning curve of a run as it was played.

The clock hands each `EpisodeEnd` to `EpisodeLog.record`, which only queues it: a thread of the log's
own writes and flushes the lines, so the clock never touches a file. `rtrl up` writes
`runs/<time>/episodes.jsonl`; any gateway does with RTRL_GATEWAY_EPISODE_LOG. Each line holds the
episode's return and length and when it ended, in frames and in wall-clock time, so a curve can be
drawn against either (bench/learning_live.py does).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from rtrl.config import PREFIX, SettingsError

log = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True, slots=True)
class EpisodeEnd:
    """One finished episode of one gateway."""

    gateway_id: str
    episode: int
    episode_return: float
    frames: int
    """Frames the episode lasted (its reset frame included)."""
    decisions: int
    """Decision steps of the episode."""
    decisions_fresh: int
    """Of those, the steps whose action came from an inference reply (the rest: the fallback policy)."""
    terminated: bool
    truncated: bool
    end_frame: int
    """The gateway-wide index of the episode's last frame."""
    end_unix_ms: int
    """Wall-clock time the last frame was produced."""


class EpisodeLog:
    """Appends episodes to a JSON Lines file from a thread of its own; `record` never blocks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as error:
            raise SettingsError(
                f"{PREFIX}GATEWAY_EPISODE_LOG={str(path)!r} cannot be written ({error}); set it to a file in a "
                "writable directory, or unset it"
            ) from error
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.written = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="episode-log", daemon=True)
        self._thread.start()

    def record(self, episode: EpisodeEnd) -> None:
        self._queue.put(episode)

    def close(self, timeout_s: float = 2.0) -> None:
        """Writes what is queued and closes the file."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._file.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, EpisodeEnd)
            try:
                self._file.write(json.dumps(asdict(item)) + "\n")
                # Whole lines as they come: a reader (a benchmark, `tail -f`) follows the run live.
                if self._queue.empty():
                    self._file.flush()
                self.written += 1
            except (OSError, ValueError) as error:  # a full disk, or the file closed under a late episode
                self.failed += 1
                if self.failed == 1:
                    log.warning("cannot write the episode log %s (%s); episodes go on unlogged", self.path, error)
