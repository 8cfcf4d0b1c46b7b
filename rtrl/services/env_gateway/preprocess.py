"""Turning raw frames into the observation the policy sees: RGB pictures grey or colour, resized, stacked
(`Preprocessor`), or state vectors stacked as float32 (`StatePreprocessor`); `make_preprocessor` picks one.

The clock only records which raw frames make up an observation (`SampledFrame`s, no pixel work);
the dispatcher thread and the publisher thread turn them into arrays. Each sampled frame is resized
once and the result kept on the frame, so the observation sent to inference and the one published
in the transition are the same array contents computed once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

if TYPE_CHECKING:
    from rtrl.services.env_gateway.backends.base import Backend
    from rtrl.services.env_gateway.settings import GatewaySettings


class ObservationPreprocessor(Protocol):
    """What the dispatcher, the publisher and GetSpec need: one frame processed, frames stacked, and the result's
    shape and dtype."""

    @property
    def dtype(self) -> np.dtype: ...

    def observation_shape(self, stack: int) -> tuple[int, ...]: ...

    def frame(self, raw: np.ndarray, /) -> np.ndarray: ...

    def stack(self, frames: Sequence[SampledFrame]) -> np.ndarray: ...


class Preprocessor:
    """Grayscale (optional) and INTER_AREA resize of one frame; stacking of several."""

    def __init__(self, width: int, height: int, grayscale: bool = True) -> None:
        self.width = width
        self.height = height
        self.grayscale = grayscale

    dtype = np.dtype(np.uint8)

    @property
    def channels_per_frame(self) -> int:
        return 1 if self.grayscale else 3

    def observation_shape(self, stack: int) -> tuple[int, int, int]:
        return (stack * self.channels_per_frame, self.height, self.width)

    def frame(self, rgb: np.ndarray) -> np.ndarray:
        """One frame as uint8 [channels, height, width]."""
        if self.grayscale:
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            return cv2.resize(grey, (self.width, self.height), interpolation=cv2.INTER_AREA)[np.newaxis]
        resized = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(resized.transpose(2, 0, 1))

    def stack(self, frames: Sequence[SampledFrame]) -> np.ndarray:
        """The observation of `frames` (oldest first) as uint8 [len(frames) * channels, height, width]."""
        return np.concatenate([sampled.processed(self) for sampled in frames], axis=0)


class StatePreprocessor:
    """State vectors (a gym env's own observation) as they are, as float32; stacking of several."""

    def __init__(self, state_size: int) -> None:
        self.state_size = state_size

    dtype = np.dtype(np.float32)

    def observation_shape(self, stack: int) -> tuple[int, int]:
        return (stack, self.state_size)

    def frame(self, state: np.ndarray) -> np.ndarray:
        """One state as float32 [1, state_size]."""
        return np.asarray(state, dtype=np.float32).reshape(1, self.state_size)

    def stack(self, frames: Sequence[SampledFrame]) -> np.ndarray:
        """The observation of `frames` (oldest first) as float32 [len(frames), state_size]."""
        return np.concatenate([sampled.processed(self) for sampled in frames], axis=0)


def make_preprocessor(settings: GatewaySettings, backend: Backend) -> ObservationPreprocessor:
    """The preprocessor for what `backend` produces: its state vectors, or pictures as RTRL_OBS_* say."""
    if backend.observation_kind == "state":
        return StatePreprocessor(backend.state_size)
    return Preprocessor(settings.obs_width, settings.obs_height, settings.obs_grayscale)


class SampledFrame:
    """A raw frame sampled for a decision (`rgb`: the backend's frame, a picture or a state vector);
    preprocessed on first use, after which the raw frame is let go (queued transitions would otherwise
    hold ~100 KB of RGB each during a Redis outage)."""

    __slots__ = ("_processed", "frame_index", "rgb")

    def __init__(self, frame_index: int, rgb: np.ndarray) -> None:
        self.frame_index = frame_index
        self.rgb: np.ndarray | None = rgb
        self._processed: np.ndarray | None = None

    def processed(self, preprocessor: ObservationPreprocessor) -> np.ndarray:
        # The dispatcher and the publisher may race here. Without a lock, either both compute the same
        # pixels, or the loser finds `rgb` gone and takes the winner's result, which is stored first.
        processed = self._processed
        if processed is None:
            rgb = self.rgb
            if rgb is None:
                assert self._processed is not None
                return self._processed
            processed = preprocessor.frame(rgb)
            self._processed = processed
            self.rgb = None
        return processed


class FrameHistory:
    """The last `stack` sampled frames of the current episode, padded at its start with the first."""

    def __init__(self, stack: int) -> None:
        self._frames: deque[SampledFrame] = deque(maxlen=stack)

    def reset(self, first: SampledFrame) -> tuple[SampledFrame, ...]:
        self._frames.clear()
        self._frames.extend([first] * (self._frames.maxlen or 1))
        return tuple(self._frames)

    def add(self, sampled: SampledFrame) -> tuple[SampledFrame, ...]:
        self._frames.append(sampled)
        return tuple(self._frames)
