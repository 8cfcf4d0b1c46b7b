"""Sends each sampled observation to inference, off the clock thread.

The clock hands samples over through a one-slot handoff: if the dispatcher has not picked up the
previous sample yet, the newer one replaces it (the older is counted in `samples_skipped`), so the
clock never waits and inference always gets the freshest observation. The dispatcher preprocesses
the sample and calls the injected `request_action`, which sends Act asynchronously and calls
`on_reply` later from another thread; replies go into the clock's mailbox.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from services.env_gateway.clock import ActionMailbox, ActionReply, ObservationSample
from services.env_gateway.preprocess import Preprocessor

log = logging.getLogger(__name__)

OnReply = Callable[[ActionReply | None], None]
"""Called once per sent request: the reply, or None when the call failed."""
RequestAction = Callable[[np.ndarray, int, float, OnReply], bool]
"""(observation, frame_index, deadline_s, on_reply) -> whether a request was sent."""


class Dispatcher:
    """Preprocesses the newest sample and asks `request_action` for its action."""

    def __init__(self, preprocessor: Preprocessor, mailbox: ActionMailbox, request_action: RequestAction) -> None:
        self._preprocessor = preprocessor
        self._mailbox = mailbox
        self._request_action = request_action
        self._ready = threading.Condition()
        self._next: ObservationSample | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failures_lock = threading.Lock()
        self.samples_skipped = 0
        """Samples replaced in the handoff before the dispatcher got to them (written by the clock)."""
        self.requests_sent = 0
        self.requests_unsent = 0
        """Samples for which `request_action` sent nothing (no idle replica, or already too late)."""
        self.requests_failed = 0

    @property
    def requests_not_sent(self) -> int:
        return self.requests_unsent + self.samples_skipped

    def submit(self, sample: ObservationSample) -> None:
        """Called by the clock; never blocks beyond a short lock."""
        with self._ready:
            if self._next is not None:
                self.samples_skipped += 1
            self._next = sample
            self._ready.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rtrl-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._next is None and not self._stopping:
                    self._ready.wait()
                sample = self._next
                if self._stopping or sample is None:
                    return
                self._next = None
            try:
                self.dispatch(sample)
            except Exception:
                # A bug here must not silence inference for the rest of the run; the clock keeps
                # going on fallback actions either way.
                log.exception("could not send the observation of frame %d", sample.frame_index)

    def dispatch(self, sample: ObservationSample) -> None:
        """Preprocesses `sample` and sends it (runs on the dispatcher thread, or inline in tests)."""
        observation = self._preprocessor.stack(sample.frames)

        def on_reply(reply: ActionReply | None) -> None:
            if reply is None:
                with self._failures_lock:
                    self.requests_failed += 1
                return
            self._mailbox.offer(sample.episode, sample.frame_index, sample.produced_s, reply)

        if self._request_action(observation, sample.frame_index, sample.deadline_s, on_reply):
            self.requests_sent += 1
        else:
            self.requests_unsent += 1
