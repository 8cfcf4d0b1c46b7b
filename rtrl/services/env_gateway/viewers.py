"""Fan-out of produced frames to viewers, each with its own tiny queue, so no viewer slows the clock.

The clock calls `FrameFanout.publish` once per frame. Without viewers that is one attribute read.
Each viewer keeps at most `VIEWER_QUEUE_FRAMES` frames; when it reads too slowly the oldest is
replaced by the newest and counted in its `frames_skipped`. Viewers get pictures: when the backend's
frames are state vectors, `publish` renders one (on the clock's thread, the only one that may touch
the backend) only while someone watches, so an unwatched game renders nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from rtrl.services.env_gateway.clock import ViewerFrame

VIEWER_QUEUE_FRAMES = 2


class Viewer:
    """One subscriber: a bounded queue of frames, newest wins."""

    def __init__(self, every_nth_frame: int = 1) -> None:
        self.every_nth_frame = max(every_nth_frame, 1)
        self._frames: deque[ViewerFrame] = deque()
        self._ready = threading.Condition()
        self.closed = False
        self.frames_skipped = 0

    def put(self, frame: ViewerFrame) -> None:
        if frame.frame_index % self.every_nth_frame:
            return
        with self._ready:
            if len(self._frames) >= VIEWER_QUEUE_FRAMES:
                self._frames.popleft()
                self.frames_skipped += 1
            self._frames.append(frame)
            self._ready.notify()

    def get(self, timeout_s: float) -> ViewerFrame | None:
        """The oldest queued frame; None when none came within `timeout_s` or the viewer was closed."""
        with self._ready:
            if not self._frames and not self.closed:
                self._ready.wait(timeout_s)
            if self.closed or not self._frames:
                return None
            return self._frames.popleft()

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()


class FrameFanout:
    """Delivers each frame to every subscribed viewer; `render` (a state backend's) gives the picture of the
    frame last produced when frames are not pictures themselves."""

    def __init__(self, render: Callable[[], np.ndarray] | None = None) -> None:
        self._lock = threading.Lock()
        self._render = render
        # Replaced, never mutated, so the clock can iterate it without taking the lock.
        self._viewers: tuple[Viewer, ...] = ()

    def publish(self, frame: ViewerFrame) -> None:
        viewers = self._viewers
        if not viewers:
            return
        if self._render is not None:
            if all(frame.frame_index % viewer.every_nth_frame for viewer in viewers):
                return  # no viewer takes this frame: no picture to render
            frame = dataclasses.replace(frame, rgb=self._render())
        for viewer in viewers:
            viewer.put(frame)

    def subscribe(self, every_nth_frame: int = 1) -> Viewer:
        viewer = Viewer(every_nth_frame)
        with self._lock:
            self._viewers = (*self._viewers, viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        viewer.close()
        with self._lock:
            self._viewers = tuple(v for v in self._viewers if v is not viewer)

    def close(self) -> None:
        """Ends every viewer's stream (server shutdown)."""
        with self._lock:
            viewers, self._viewers = self._viewers, ()
        for viewer in viewers:
            viewer.close()

    def __len__(self) -> int:
        return len(self._viewers)
