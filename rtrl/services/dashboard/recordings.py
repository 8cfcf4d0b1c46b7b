"""The newest recorded episode in RTRL_DASHBOARD_RECORDINGS_DIR, for the page's link and /recordings/latest.

Only a regular file directly in that directory is ever served, never a symbolic link, a hidden file (a
video still being written is hidden until it is renamed into place) or anything a name could reach
outside it: the newest .mp4 or .gif by modification time whose name is plain (letters, digits, _ . -).
Its checkpoint version and greedy return come from the directory's index.jsonl (rtrl/recordings.py) when
a line names the file.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rtrl.recordings import INDEX, read_index

CONTENT_TYPES = {".mp4": "video/mp4", ".gif": "image/gif"}
LATEST_URL = "/recordings/latest"
# Names that can go in a header and a URL as they are; anything else in the directory is not rtrl's.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# The page asks with every state event (5 a second per browser); the directory is listed at most this often.
REFRESH_S = 1.0


@dataclass(frozen=True)
class Recording:
    """The newest recording and what the index says about it."""

    path: Path
    size: int
    mtime_ns: int
    checkpoint_version: int | None
    episode_return: float | None
    frames: int | None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.path.suffix.lower()]

    def to_json(self) -> dict[str, Any]:
        return {
            # The name in the query makes a newer recording a new URL for the browser's cache.
            "url": f"{LATEST_URL}?name={self.path.name}",
            "name": self.path.name,
            "bytes": self.size,
            "checkpoint_version": self.checkpoint_version,
            "return": self.episode_return,
            "frames": self.frames,
            "unix_ms": self.mtime_ns // 1_000_000,
        }


class RecordingShelf:
    """Finds the newest recording in `directory` (None: no directory configured)."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory).resolve() if directory else None
        self._lock = threading.Lock()
        self._checked_s = -float("inf")
        self._latest: Recording | None = None

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def latest(self) -> Recording | None:
        """The newest recording, looked up at most every REFRESH_S."""
        with self._lock:
            now_s = time.monotonic()
            if now_s - self._checked_s >= REFRESH_S:
                self._checked_s = now_s
                self._latest = self._find()
            return self._latest

    def state_json(self) -> dict[str, Any]:
        latest = self.latest() if self.enabled else None
        return {"enabled": self.enabled, "latest": latest.to_json() if latest is not None else None}

    def _find(self) -> Recording | None:
        directory = self.directory
        if directory is None:
            return None
        newest: tuple[int, str, int] | None = None
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    name = entry.name
                    if not SAFE_NAME.match(name) or Path(name).suffix.lower() not in CONTENT_TYPES:
                        continue
                    info = entry.stat(follow_symlinks=False)
                    if not stat.S_ISREG(info.st_mode):
                        continue  # a symbolic link could lead anywhere
                    key = (info.st_mtime_ns, name, info.st_size)
                    if newest is None or key > newest:
                        newest = key
        except OSError:
            return None  # not created yet (no recording so far), or unreadable: nothing to link
        if newest is None:
            return None
        mtime_ns, name, size = newest
        described = [e for e in read_index(directory / INDEX) if Path(str(e.get("path", ""))).name == name]
        about = described[-1] if described else {}
        return Recording(
            path=directory / name,
            size=size,
            mtime_ns=mtime_ns,
            checkpoint_version=_int_or_none(about.get("checkpoint_version")),
            episode_return=_float_or_none(about.get("return")),
            frames=_int_or_none(about.get("frames")),
        )

    def open_latest(self) -> tuple[Recording, BinaryIO] | None:
        """The newest recording opened for reading, checked again as opened (no link, inside the directory)."""
        recording = self.latest()
        if recording is None or self.directory is None:
            return None
        try:
            # O_NOFOLLOW: a file replaced by a link since it was listed is refused, not followed.
            fd = os.open(recording.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        file = os.fdopen(fd, "rb")
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or recording.path.parent != self.directory:
            file.close()
            return None
        return recording, file


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
